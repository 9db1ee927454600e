//! Authentication of requests. For now: the bootstrap admin token, printed once on first
//! start and stored only as a SHA-256 hash (`<data_dir>/bootstrap-token.sha256`).
//!
//! The token is `pvb_` followed by 64 hex digits (32 random bytes). It exists in clear only
//! in the value returned to the caller, to print once; it is never logged and no type here
//! prints it. Verification hashes the presented token and compares the hashes in constant
//! time.

use std::fs;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::ServerError;

/// The file, under the data directory, that holds the hex SHA-256 of the bootstrap token.
pub const TOKEN_HASH_FILE: &str = "bootstrap-token.sha256";

/// Prefix of bootstrap tokens (lets secret scanners recognize a leaked one).
const TOKEN_PREFIX: &str = "pvb_";

/// Longest bearer token considered (longer ones are refused without hashing).
const MAX_TOKEN_LEN: usize = 512;

/// The principal a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id for logs and audit (never the token).
    pub id: String,
    /// Role.
    pub role: String,
}

/// Verifies the bootstrap token against its stored hash, in constant time.
pub struct BootstrapAuth {
    hash: [u8; 32],
}

impl std::fmt::Debug for BootstrapAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAuth").finish_non_exhaustive()
    }
}

fn hash_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_HASH_FILE)
}

/// A fresh token and its hash.
fn new_token() -> Result<(String, [u8; 32]), ServerError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    phivault_crypto::random_bytes(raw.as_mut())
        .map_err(|e| ServerError::Config(format!("cannot make a bootstrap token: {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw.as_ref()));
    let hash = phivault_crypto::sha256(token.as_bytes());
    Ok((token, hash))
}

/// Writes the hex hash (mode 0600), creating the data directory if needed.
fn store_hash(data_dir: &Path, hash: &[u8; 32]) -> Result<(), ServerError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(data_dir)
        .map_err(|e| ServerError::io(format!("creating {}", data_dir.display()), e))?;
    let text = format!("{}\n", hex::encode(hash));
    crate::tls::write_file(&hash_path(data_dir), text.as_bytes(), true)
}

impl BootstrapAuth {
    /// Loads the stored hash, creating a token when there is none. Returns the auth and,
    /// only when just created, the token to print once.
    pub fn load_or_create(data_dir: &Path) -> Result<(BootstrapAuth, Option<String>), ServerError> {
        let path = hash_path(data_dir);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| {
                    ServerError::Config(format!(
                        "{} is not a hex SHA-256 (reset the bootstrap token)",
                        path.display()
                    ))
                })?;
                let hash: [u8; 32] = bytes.try_into().map_err(|_| {
                    ServerError::Config(format!(
                        "{} is not a hex SHA-256 (reset the bootstrap token)",
                        path.display()
                    ))
                })?;
                Ok((BootstrapAuth { hash }, None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (token, hash) = new_token()?;
                store_hash(data_dir, &hash)?;
                tracing::info!(path = %path.display(), "created the bootstrap admin token");
                Ok((BootstrapAuth { hash }, Some(token)))
            }
            Err(e) => Err(ServerError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Replaces the token; returns the new one (to print once).
    pub fn reset(data_dir: &Path) -> Result<String, ServerError> {
        let (token, hash) = new_token()?;
        store_hash(data_dir, &hash)?;
        tracing::info!(path = %hash_path(data_dir).display(), "replaced the bootstrap admin token");
        Ok(token)
    }

    /// The principal of a bearer token, if valid.
    pub fn verify(&self, token: &str) -> Option<Principal> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let presented = phivault_crypto::sha256(token.as_bytes());
        phivault_crypto::ct_eq(&presented, &self.hash).then(|| Principal {
            id: "bootstrap-admin".to_owned(),
            role: "admin".to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_reload_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, token) = BootstrapAuth::load_or_create(dir.path()).unwrap();
        let token = token.unwrap();
        assert!(token.starts_with("pvb_"));
        assert_eq!(token.len(), 4 + 64);

        let p = auth.verify(&token).unwrap();
        assert_eq!(p.id, "bootstrap-admin");
        assert_eq!(p.role, "admin");
        assert!(auth.verify("pvb_wrong").is_none());
        assert!(auth.verify("").is_none());
        assert!(auth.verify(&token[..token.len() - 1]).is_none());

        // The file holds the hash, never the token; mode 0600.
        let path = dir.path().join(TOKEN_HASH_FILE);
        let stored = fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&token));
        assert!(!stored.contains(&token[4..]));
        assert_eq!(stored.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Debug output shows nothing secret.
        let debug = format!("{auth:?}");
        assert!(!debug.contains(&token[4..]));
        assert!(!debug.contains(stored.trim()));

        // A second start loads the hash and prints nothing.
        let (again, none) = BootstrapAuth::load_or_create(dir.path()).unwrap();
        assert!(none.is_none());
        assert!(again.verify(&token).is_some());

        // Reset replaces it.
        let fresh = BootstrapAuth::reset(dir.path()).unwrap();
        assert_ne!(fresh, token);
        let (after, _) = BootstrapAuth::load_or_create(dir.path()).unwrap();
        assert!(after.verify(&fresh).is_some());
        assert!(after.verify(&token).is_none());
    }

    #[test]
    fn malformed_hash_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TOKEN_HASH_FILE), "not hex").unwrap();
        assert!(matches!(
            BootstrapAuth::load_or_create(dir.path()),
            Err(ServerError::Config(_))
        ));
    }
}
