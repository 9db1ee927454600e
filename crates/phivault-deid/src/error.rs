//! The crate's one error type.

/// What can go wrong configuring or running a de-identification. Messages name the offending
/// setting or path, never a value of a resource.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeidError {
    /// The configuration is not valid (the message says where and why).
    #[error("de-identification configuration: {0}")]
    Config(String),
    /// The project key is missing, unreadable or malformed.
    #[error("de-identification key: {0}")]
    Key(String),
    /// A value could not be decrypted with the project key (wrong key, or changed).
    #[error("the value does not decrypt with this project key (another key, or altered)")]
    Decrypt,
}
