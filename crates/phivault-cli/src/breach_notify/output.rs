//! Where the notification goes: a new owner-only directory, each file owner-only, plaintext
//! or age-encrypted.
//!
//! Invariants:
//! - **Never over data.** `--out` must not exist or be an empty directory; the files are
//!   written into a new temporary sibling (`OUT.partial-<uuid>`) that the caller renames
//!   into place once the audit entry is written, or removes.
//! - **Owner-only.** Directories are created 0700 and files 0600 (with `create_new`, so an
//!   existing file is never written through).
//! - **Nothing in plaintext when encrypting.** With recipients, every file (letters, summary
//!   and manifest) is encrypted to all of them and written as `<name>.age`; the plaintext
//!   is never written to disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use phivault_server::portability;

/// Checks the age recipients (X25519 public keys, `age1...`) before anything is read.
pub(super) fn check_recipients(recipients: &[String]) -> Result<()> {
    if recipients.is_empty() {
        return Ok(());
    }
    portability::encrypt(b"", recipients)
        .map(|_| ())
        .map_err(|e| anyhow!("--encrypt-to: {e}"))
}

/// The files of one notification, written as they are made.
#[derive(Debug)]
pub(super) struct Sink {
    dir: PathBuf,
    recipients: Vec<String>,
    /// Paths written, relative to `dir`, in order.
    written: Vec<String>,
}

impl Sink {
    /// Creates `dir` (which must not exist) and its `letters/` folder.
    pub(super) fn create(dir: &Path, recipients: &[String]) -> Result<Sink> {
        crate::commands::create_new_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let letters = dir.join("letters");
        crate::commands::create_new_private_dir(&letters)
            .with_context(|| format!("creating {}", letters.display()))?;
        Ok(Sink {
            dir: dir.to_path_buf(),
            recipients: recipients.to_vec(),
            written: Vec::new(),
        })
    }

    /// Writes `bytes` as `name` (a path relative to the directory), encrypted as `name.age`
    /// when there are recipients; returns the name written.
    pub(super) fn write(&mut self, name: &str, bytes: &[u8]) -> Result<String> {
        let (name, sealed) = if self.recipients.is_empty() {
            (name.to_owned(), None)
        } else {
            let sealed = portability::encrypt(bytes, &self.recipients)
                .map_err(|e| anyhow!("encrypting {name}: {e}"))?;
            (format!("{name}.age"), Some(sealed))
        };
        let bytes = sealed.as_deref().unwrap_or(bytes);
        let path = self.dir.join(&name);
        let mut file = crate::backup_cmd::create_private_file(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        self.written.push(name.clone());
        Ok(name)
    }

    /// Whether the files are encrypted.
    pub(super) fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// Flushes the directories' entries, before the directory is renamed into place.
    pub(super) fn finish(self) -> Vec<String> {
        for d in [self.dir.join("letters"), self.dir.clone()] {
            if let Ok(f) = std::fs::File::open(&d) {
                let _ = f.sync_all();
            }
        }
        self.written
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_sealed_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        let mut sink = Sink::create(&plain, &[]).unwrap();
        assert_eq!(
            sink.write("letters/a.html", b"hello").unwrap(),
            "letters/a.html"
        );
        assert_eq!(
            std::fs::read(plain.join("letters/a.html")).unwrap(),
            b"hello"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&plain), 0o700);
            assert_eq!(mode(&plain.join("letters")), 0o700);
            assert_eq!(mode(&plain.join("letters/a.html")), 0o600);
        }
        assert!(
            sink.write("letters/a.html", b"again").is_err(),
            "never overwritten"
        );

        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let sealed_dir = dir.path().join("sealed");
        let mut sink = Sink::create(&sealed_dir, std::slice::from_ref(&recipient)).unwrap();
        assert_eq!(
            sink.write("manifest.json", b"{}").unwrap(),
            "manifest.json.age"
        );
        assert!(!sealed_dir.join("manifest.json").exists());
        let bytes = std::fs::read(sealed_dir.join("manifest.json.age")).unwrap();
        let plain = age::decrypt(&identity, &bytes).unwrap();
        assert_eq!(plain, b"{}");
        assert_eq!(sink.finish(), ["manifest.json.age"]);

        assert!(check_recipients(&[recipient]).is_ok());
        let e = check_recipients(&["age1nope".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--encrypt-to"), "{e}");
    }
}
