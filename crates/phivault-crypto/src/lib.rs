//! Key hierarchy, authenticated encryption and blind-index tokens for phivault.
//!
//! The hierarchy is: a [`MasterKey`] (held outside the database, see [`KeyProvider`]) wraps
//! key-encryption keys ([`KeyEncryptionKey`]); a key-encryption key wraps data keys
//! ([`DataKey`], one per patient compartment plus one directory key per tenant) and the
//! tenant's [`IndexKey`]. Every seal is AES-256-GCM (aws-lc-rs) with a fresh random 96-bit
//! nonce and caller-supplied associated data, so a ciphertext moved to another row, another
//! resource or another version fails to open.
//!
//! Guarantees:
//! - secret key material lives in types without `Debug`/`Display`/`Serialize` output of the
//!   key, zeroized on drop;
//! - [`SecretKey::open`] either returns the exact plaintext sealed under the same key and
//!   associated data, or [`CryptoError::Integrity`];
//! - blind-index tokens are HMAC-SHA256 over length-prefixed parts, so `("ab","c")` and
//!   `("a","bc")` never collide.
//!
//! The `bench-noop-cipher` feature replaces sealing by a copy, to measure the cost of
//! encryption in benchmarks. It must never be enabled in a shipped build; the binary refuses
//! to serve with it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

mod archive_mac;
pub use archive_mac::{ARCHIVE_MAC_LEN, ArchiveMac, ArchiveMacKey};

/// Length in bytes of every symmetric key.
pub const KEY_LEN: usize = 32;

/// True when this build replaces encryption by a copy (bench-only).
pub const NOOP_CIPHER: bool = cfg!(feature = "bench-noop-cipher");

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext did not open: wrong key, wrong associated data, or altered bytes.
    #[error("integrity check failed: the ciphertext was altered or does not belong here")]
    Integrity,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Key material had the wrong shape.
    #[error("malformed key material: {0}")]
    Malformed(&'static str),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file concerned (a path, never key material).
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// Fills `buf` from the system's secure random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

/// A 256-bit secret key, zeroized on drop, never printed.
pub struct SecretKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(bytes.as_mut())?;
        Ok(Self { bytes })
    }

    /// A key from exactly [`KEY_LEN`] bytes.
    pub fn from_slice(raw: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = raw
            .try_into()
            .map_err(|_| CryptoError::Malformed("a key is 32 bytes"))?;
        Ok(Self {
            bytes: Zeroizing::new(arr),
        })
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.bytes.as_ref())
            .map_err(|_| CryptoError::Malformed("AES-256-GCM key"))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Seals `plaintext` bound to `aad`; the result is `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Sealer::new(self)?.seal(aad, plaintext)
    }

    /// Opens what [`SecretKey::seal`] produced with the same key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Sealer::new(self)?.open(aad, sealed)
    }

    /// Wraps another key under this one, bound to `aad`.
    pub fn wrap(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
        // Key wrapping always uses AES-GCM, even in the no-op benchmark build.
        seal_aes(&self.aead()?, aad, key.bytes.as_ref())
    }

    /// Unwraps a key wrapped by [`SecretKey::wrap`].
    pub fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
        let plain = Zeroizing::new(open_aes(&self.aead()?, aad, wrapped)?);
        SecretKey::from_slice(&plain)
    }

    /// Hex form, for writing a key file. The result is zeroized on drop.
    fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes.as_ref()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").finish_non_exhaustive()
    }
}

/// A key prepared for repeated sealing (the AES key schedule is computed once).
pub struct Sealer {
    key: LessSafeKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// Prepares `key` for sealing and opening.
    pub fn new(key: &SecretKey) -> Result<Self, CryptoError> {
        Ok(Self { key: key.aead()? })
    }

    /// Seals `plaintext` bound to `aad`; the result is `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if NOOP_CIPHER {
            let mut out = vec![0u8; NONCE_LEN];
            out.extend_from_slice(plaintext);
            return Ok(out);
        }
        seal_aes(&self.key, aad, plaintext)
    }

    /// Opens what [`Sealer::seal`] produced under the same key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if NOOP_CIPHER {
            return sealed
                .get(NONCE_LEN..)
                .map(<[u8]>::to_vec)
                .ok_or(CryptoError::Integrity);
        }
        open_aes(&self.key, aad, sealed)
    }
}

fn seal_aes(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(NONCE_LEN);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| CryptoError::Integrity)?;
    out.extend_from_slice(&body);
    body.zeroize();
    Ok(out)
}

fn open_aes(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(CryptoError::Integrity);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Integrity)?;
    let mut buf = body.to_vec();
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Integrity)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The root of the key hierarchy. It never enters the database.
pub struct MasterKey(SecretKey);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(SecretKey::generate()?))
    }

    /// Parses the key file format: 64 hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| CryptoError::Malformed("a master key is 64 hex digits"))?,
        );
        Ok(Self(SecretKey::from_slice(&raw)?))
    }

    /// The key used to wrap key-encryption keys.
    pub fn key(&self) -> &SecretKey {
        &self.0
    }

    /// A second copy of this key (zeroized on drop like the first), for a store that keeps
    /// the master key it rotated to.
    pub fn duplicate(&self) -> MasterKey {
        MasterKey(SecretKey {
            bytes: self.0.bytes.clone(),
        })
    }

    /// The key file form (64 hex digits), zeroized on drop: for writing a new master key
    /// file (`phivault keys rotate-master`).
    pub fn to_hex(&self) -> Zeroizing<String> {
        self.0.to_hex()
    }
}

/// Where the master key comes from. The local file provider is the one shipped; a cloud KMS
/// or an HSM can implement the same trait.
pub trait KeyProvider: Send + Sync {
    /// Returns the master key.
    fn master_key(&self) -> Result<MasterKey, CryptoError>;
    /// A short description for logs (a path or a key name, never key material).
    fn describe(&self) -> String;
    /// A handle on this provider that a store keeps, to read the master key again when
    /// another process has rotated it (`phivault keys rotate-master`). `None` (the default):
    /// the key is read once, at open.
    fn shared(&self) -> Option<std::sync::Arc<dyn KeyProvider>> {
        None
    }
}

/// A master key in a local file (64 hex digits), created with mode 0600 when missing.
///
/// A regular file that its group or others may read or write is refused (the key would be as
/// exposed as the file). The path may also name an inherited file descriptor
/// (`/dev/fd/N`, `/proc/self/fd/N`, `/dev/stdin`) or a named pipe, as secrets managers
/// provide keys: such a stream is read once, on first use, and kept (zeroized on drop) for
/// later reads, since it cannot be read twice.
#[derive(Clone)]
pub struct FileKeyProvider {
    path: PathBuf,
    /// The text read from a stream (not a regular file), shared by the clones.
    streamed: std::sync::Arc<std::sync::OnceLock<Zeroizing<String>>>,
}

impl fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyProvider")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileKeyProvider {
    /// A provider reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            streamed: std::sync::Arc::default(),
        }
    }

    fn io_error(&self, source: std::io::Error) -> CryptoError {
        CryptoError::KeyFile {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the key file's text: a regular file each time (after checking its mode), a
    /// stream once.
    fn read_text(&self) -> Result<Zeroizing<String>, CryptoError> {
        if let Some(text) = self.streamed.get() {
            return Ok(text.clone());
        }
        let meta = fs::metadata(&self.path).map_err(|e| self.io_error(e))?;
        if !meta.is_file() {
            let text =
                Zeroizing::new(fs::read_to_string(&self.path).map_err(|e| self.io_error(e))?);
            return Ok(self.streamed.get_or_init(|| text).clone());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(self.io_error(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "mode {mode:04o} lets other users read or change the master key; \
                         run `chmod 600` on it (and check who could have copied it)"
                    ),
                )));
            }
        }
        Ok(Zeroizing::new(
            fs::read_to_string(&self.path).map_err(|e| self.io_error(e))?,
        ))
    }

    /// Whether the key comes from a stream (an inherited descriptor or a pipe) rather than a
    /// regular file: it is then read once and cannot be rotated in place.
    pub fn is_stream(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| !m.is_file())
    }

    /// Creates the key file with a fresh key unless it exists. Returns true when created.
    pub fn create_if_missing(&self) -> Result<bool, CryptoError> {
        if self.path.exists() {
            return Ok(false);
        }
        let io = |source| CryptoError::KeyFile {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let key = MasterKey::generate()?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&self.path).map_err(io)?;
        let hex = key.0.to_hex();
        file.write_all(hex.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(true)
    }

    /// The path of the key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyProvider for FileKeyProvider {
    fn master_key(&self) -> Result<MasterKey, CryptoError> {
        MasterKey::from_hex(&self.read_text()?)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn shared(&self) -> Option<std::sync::Arc<dyn KeyProvider>> {
        Some(std::sync::Arc::new(self.clone()))
    }
}

/// A master key given directly (tests, or a key read from the environment).
pub struct StaticKeyProvider(Zeroizing<String>);

impl StaticKeyProvider {
    /// A provider from the hex form of a key.
    pub fn from_hex(hex: impl Into<String>) -> Self {
        Self(Zeroizing::new(hex.into()))
    }
}

impl fmt::Debug for StaticKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeyProvider").finish_non_exhaustive()
    }
}

impl KeyProvider for StaticKeyProvider {
    fn master_key(&self) -> Result<MasterKey, CryptoError> {
        MasterKey::from_hex(&self.0)
    }
    fn describe(&self) -> String {
        "static key".to_owned()
    }
    fn shared(&self) -> Option<std::sync::Arc<dyn KeyProvider>> {
        Some(std::sync::Arc::new(StaticKeyProvider(self.0.clone())))
    }
}

/// Key for blind-index tokens: HMAC-SHA256 over length-prefixed parts.
pub struct IndexKey {
    key: hmac::Key,
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexKey").finish_non_exhaustive()
    }
}

impl IndexKey {
    /// An index key from secret key material.
    pub fn new(key: &SecretKey) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.bytes.as_ref()),
        }
    }

    /// The blind token of `parts`: equal parts give equal tokens, nothing else does.
    pub fn token(&self, parts: &[&str]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// An HMAC-SHA256 key derived from another key with HKDF-SHA256 (RFC 5869) under a label of
/// its own, so keys of different labels are independent and none reveals the key it came
/// from. Used to authenticate records a database administrator must not be able to forge
/// (the audit chain). Tags are over length-prefixed parts, as blind-index tokens.
pub struct MacKey {
    key: hmac::Key,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacKey").finish_non_exhaustive()
    }
}

/// The HKDF salt of [`MacKey::derive`] (fixed: the input is already a uniform random key).
const MAC_KEY_SALT: &[u8] = b"phivault/hkdf-salt/v1";

impl MacKey {
    /// The key of `label` derived from `from`: HKDF-SHA256 with salt
    /// `"phivault/hkdf-salt/v1"`, input key material `from`, info `label`, 32 bytes.
    pub fn derive(from: &SecretKey, label: &[u8]) -> Result<MacKey, CryptoError> {
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, MAC_KEY_SALT);
        let prk = salt.extract(from.bytes.as_ref());
        let info = [label];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::Malformed("HKDF output length"))?;
        Ok(MacKey {
            key: hmac::Key::from(okm),
        })
    }

    /// The tag of `parts` (each length-prefixed, so part boundaries are bound).
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `tag` is the tag of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        ct_eq(&self.tag(parts), tag)
    }
}

/// Compares two byte strings in constant time.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// SHA-256 of `data` (for storing hashes of tokens, never the tokens).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 over data given in pieces (backup digests of whole tables).
pub struct Sha256(aws_lc_rs::digest::Context);

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash of everything added.
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_keys_depend_on_key_and_label() {
        let k = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let a = MacKey::derive(&k, b"label-a").unwrap();
        let parts: &[&[u8]] = &[b"ab", b"c"];
        let tag = a.tag(parts);
        assert!(a.verify(parts, &tag));
        assert!(!a.verify(&[b"a", b"bc"], &tag));
        assert!(!MacKey::derive(&k, b"label-b").unwrap().verify(parts, &tag));
        let other = SecretKey::from_slice(&[8u8; 32]).unwrap();
        assert!(
            !MacKey::derive(&other, b"label-a")
                .unwrap()
                .verify(parts, &tag)
        );
        assert_eq!(MacKey::derive(&k, b"label-a").unwrap().tag(parts), tag);
    }

    #[test]
    fn sha256_in_pieces_equals_sha256_of_the_whole() {
        let mut h = Sha256::new();
        h.update(b"phi");
        h.update(b"vault");
        assert_eq!(h.finish(), sha256(b"phivault"));
        assert_ne!(Sha256::new().finish(), sha256(b"phivault"));
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = SecretKey::generate().unwrap();
        let sealed = k.seal(b"t|Patient|1|1", b"hello").unwrap();
        assert_eq!(k.open(b"t|Patient|1|1", &sealed).unwrap(), b"hello");
        if NOOP_CIPHER {
            return;
        }
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        // wrong aad (another version, another id)
        assert!(matches!(
            k.open(b"t|Patient|1|2", &sealed),
            Err(CryptoError::Integrity)
        ));
        // flipped byte anywhere
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open(b"t|Patient|1|1", &bad).is_err(), "byte {i}");
        }
        // wrong key
        let other = SecretKey::generate().unwrap();
        assert!(other.open(b"t|Patient|1|1", &sealed).is_err());
        // truncated
        assert!(k.open(b"t|Patient|1|1", &sealed[..10]).is_err());
    }

    #[test]
    fn nonces_differ() {
        let k = SecretKey::generate().unwrap();
        let a = k.seal(b"", b"same").unwrap();
        let b = k.seal(b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrap_unwrap() {
        let kek = SecretKey::generate().unwrap();
        let dek = SecretKey::generate().unwrap();
        let w = kek.wrap(b"dek-1", &dek).unwrap();
        let back = kek.unwrap_key(b"dek-1", &w).unwrap();
        assert_eq!(back.bytes.as_ref(), dek.bytes.as_ref());
        assert!(kek.unwrap_key(b"dek-2", &w).is_err());
    }

    #[test]
    fn tokens_are_length_prefixed() {
        let k = IndexKey::new(&SecretKey::generate().unwrap());
        assert_eq!(k.token(&["a", "bc"]), k.token(&["a", "bc"]));
        assert_ne!(k.token(&["ab", "c"]), k.token(&["a", "bc"]));
        let k2 = IndexKey::new(&SecretKey::generate().unwrap());
        assert_ne!(k.token(&["a"]), k2.token(&["a"]));
    }

    #[test]
    fn key_file_created_0600_and_readable() {
        let dir = std::env::temp_dir().join(format!("pvk-{}", std::process::id()));
        let p = FileKeyProvider::new(dir.join("master.key"));
        assert!(p.create_if_missing().unwrap());
        assert!(!p.create_if_missing().unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(p.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let a = p.master_key().unwrap();
        let b = p.master_key().unwrap();
        assert_eq!(a.0.bytes.as_ref(), b.0.bytes.as_ref());
        assert!(MasterKey::from_hex("zz").is_err());
        assert_eq!(format!("{a:?}"), "MasterKey { .. }");
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pvk-mode-{}", std::process::id()));
        let p = FileKeyProvider::new(dir.join("master.key"));
        assert!(p.create_if_missing().unwrap());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(p.path(), fs::Permissions::from_mode(mode)).unwrap();
            let e = p.master_key().unwrap_err().to_string();
            assert!(e.contains(&format!("mode {mode:04o}")), "{mode:o}: {e}");
            assert!(e.contains("chmod 600"), "{e}");
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(p.path(), fs::Permissions::from_mode(mode)).unwrap();
            p.master_key().unwrap();
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_from_a_stream_is_read_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("pvk-fifo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let key = MasterKey::generate().unwrap();
        let hex = key.to_hex().to_string();
        let writer = {
            let fifo = fifo.clone();
            let hex = hex.clone();
            std::thread::spawn(move || fs::write(fifo, format!("{hex}\n")).unwrap())
        };
        let p = FileKeyProvider::new(&fifo);
        assert!(p.is_stream());
        let a = p.master_key().unwrap();
        writer.join().unwrap();
        // The stream is empty now: the second read (a clone too) is served from memory.
        let copy = p.clone();
        let b = copy.master_key().unwrap();
        drop(p);
        assert_eq!(a.0.bytes.as_ref(), key.0.bytes.as_ref());
        assert_eq!(b.0.bytes.as_ref(), key.0.bytes.as_ref());
        assert!(!format!("{copy:?}").contains(&hex));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
