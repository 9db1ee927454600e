//! Unique marker strings and scanners that look for them in bytes at rest.
//!
//! A marker is an accented capital followed by a 16-letter random lower-case core
//! (`Ézqkvmw...`). Whatever form the server might store (as written, lower-cased, accents
//! stripped, NFKD), the core is a substring of it; the scanners look for the core, ASCII
//! case-insensitively, as UTF-8, UTF-16LE and UTF-16BE, and as lower-case hex of each of those
//! (PostgreSQL dumps `bytea` as hex, so plaintext in a binary column shows up that way).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random 64-bit value (not for cryptography: names and markers in tests).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Random lower-case ASCII letters.
fn letters(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut r = random_u64();
        for _ in 0..13 {
            if out.len() == n {
                break;
            }
            out.push(char::from(b'a' + (r % 26) as u8));
            r /= 26;
        }
    }
    out
}

const ACCENTED: &[&str] = &["É", "Ö", "Å", "Ñ", "Ü", "Ç"];

/// A unique string to plant in resources and look for at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    text: String,
    core: String,
    /// For [`Marker::bytes`]: the raw bytes looked for (instead of text encodings).
    raw: Option<Vec<u8>>,
}

impl Marker {
    /// A name-like marker: an accented capital and 16 random lower-case letters.
    pub fn name() -> Marker {
        let core = letters(16);
        let accent = ACCENTED[(random_u64() % ACCENTED.len() as u64) as usize];
        Marker {
            text: format!("{accent}{core}"),
            core,
            raw: None,
        }
    }

    /// A name-like marker starting with `prefix` (e.g. `"Ézo"`) then the 16-letter core, for
    /// tests that need to know how the name begins.
    pub fn name_starting(prefix: &str) -> Marker {
        let core = letters(16);
        Marker {
            text: format!("{prefix}{core}"),
            core,
            raw: None,
        }
    }

    /// A code-like marker (ASCII only, valid as a FHIR code or identifier): `prefix` and the
    /// 16-letter core.
    pub fn code(prefix: &str) -> Marker {
        let core = letters(16);
        Marker {
            text: format!("{prefix}{core}"),
            core,
            raw: None,
        }
    }

    /// A given secret (a password, token, TOTP secret, recovery code, username) looked for
    /// as it is, ASCII case-insensitively, in every text encoding and as hex.
    pub fn literal(text: &str) -> Marker {
        assert!(!text.is_empty(), "an empty marker finds everything");
        Marker {
            text: text.to_owned(),
            core: text.to_ascii_lowercase(),
            raw: None,
        }
    }

    /// Raw bytes (e.g. a decoded TOTP secret) looked for as they are and as hex; `label`
    /// names them in findings.
    pub fn bytes(label: &str, bytes: &[u8]) -> Marker {
        assert!(
            bytes.len() >= 8,
            "a short byte marker would match by chance"
        );
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Marker {
            text: label.to_owned(),
            core: hex,
            raw: Some(bytes.to_vec()),
        }
    }

    /// The text to put in a resource.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The random lower-case core (a substring of every normal form of the text).
    pub fn core(&self) -> &str {
        &self.core
    }

    /// The byte strings searched for (in an ASCII-lower-cased haystack), with their names.
    fn needles(&self) -> Vec<(&'static str, Vec<u8>)> {
        if let Some(raw) = &self.raw {
            // The haystack is ASCII-lower-cased: so is the needle.
            return vec![
                ("raw bytes", raw.to_ascii_lowercase()),
                ("hex of raw bytes", self.core.as_bytes().to_vec()),
            ];
        }
        let utf8 = self.core.as_bytes().to_vec();
        let le: Vec<u8> = self
            .core
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        let be: Vec<u8> = self
            .core
            .encode_utf16()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        let hex = |b: &[u8]| -> Vec<u8> {
            b.iter()
                .flat_map(|x| format!("{x:02x}").into_bytes())
                .collect()
        };
        vec![
            ("hex UTF-8", hex(&utf8)),
            ("hex UTF-16LE", hex(&le)),
            ("hex UTF-16BE", hex(&be)),
            ("UTF-8", utf8),
            ("UTF-16LE", le),
            ("UTF-16BE", be),
        ]
    }
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A marker found somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where (a file path, or the label given to [`scan_bytes`]).
    pub place: String,
    /// The marker's text.
    pub marker: String,
    /// In which encoding.
    pub encoding: &'static str,
    /// Byte offset of the first occurrence.
    pub offset: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|b| *b == first) {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &haystack[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// Every marker found in `bytes` (ASCII case-insensitively, in every encoding listed above).
pub fn scan_bytes(place: &str, bytes: &[u8], markers: &[Marker]) -> Vec<Finding> {
    let hay = bytes.to_ascii_lowercase();
    let mut out = Vec::new();
    for m in markers {
        for (encoding, needle) in m.needles() {
            if let Some(offset) = find(&hay, &needle) {
                out.push(Finding {
                    place: place.to_owned(),
                    marker: m.text.clone(),
                    encoding,
                    offset,
                });
            }
        }
    }
    out
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        if kind.is_dir() {
            files_under(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// Scans every file under `dir` (recursively). Returns the files scanned (with their sizes)
/// and the findings.
pub fn scan_dir(dir: &Path, markers: &[Marker]) -> (Vec<(PathBuf, u64)>, Vec<Finding>) {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.sort();
    let mut scanned = Vec::new();
    let mut findings = Vec::new();
    for f in files {
        // A file can vanish between listing and reading (SQLite's -shm, -journal).
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        findings.extend(scan_bytes(&f.display().to_string(), &bytes, markers));
        scanned.push((f, bytes.len() as u64));
    }
    (scanned, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_form() {
        let m = Marker::name();
        let upper = m.text().to_uppercase();
        let le: Vec<u8> = m
            .text()
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        let be: Vec<u8> = upper.encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let hex: String = m.core().bytes().map(|b| format!("{b:02x}")).collect();
        for (bytes, enc) in [
            (format!("xx{}yy", m.text()).into_bytes(), "UTF-8"),
            (format!("xx{upper}yy").into_bytes(), "UTF-8"),
            (format!("x{}", m.core()).into_bytes(), "UTF-8"),
            (le, "UTF-16LE"),
            (be, "UTF-16BE"),
            (
                format!("\\x00{}00", hex.to_uppercase()).into_bytes(),
                "hex UTF-8",
            ),
        ] {
            let f = scan_bytes("t", &bytes, std::slice::from_ref(&m));
            assert!(
                f.iter().any(|f| f.encoding == enc),
                "{enc} not found: {f:?}"
            );
        }
        assert!(scan_bytes("t", b"nothing here", &[m]).is_empty());
    }

    #[test]
    fn literal_and_byte_markers() {
        let token = Marker::literal("pva_AbC-dEf_0123456789xyzXYZ");
        let found = scan_bytes(
            "t",
            b"..PVA_abc-DEF_0123456789XYZxyz..",
            std::slice::from_ref(&token),
        );
        assert!(found.iter().any(|f| f.encoding == "UTF-8"), "{found:?}");
        let raw = [0x41u8, 0x00, 0xff, 0x10, 0x5a, 0x7f, 0x80, 0x01, 0x02];
        let m = Marker::bytes("totp secret", &raw);
        let mut hay = b"xx".to_vec();
        hay.extend_from_slice(&raw);
        let found = scan_bytes("t", &hay, std::slice::from_ref(&m));
        assert!(found.iter().any(|f| f.encoding == "raw bytes"), "{found:?}");
        let found = scan_bytes("t", b"\\x4100FF105A7F800102", std::slice::from_ref(&m));
        assert!(
            found.iter().any(|f| f.encoding == "hex of raw bytes"),
            "{found:?}"
        );
        assert!(scan_bytes("t", b"nothing", &[m, token]).is_empty());
    }

    #[test]
    fn markers_differ() {
        assert_ne!(Marker::name(), Marker::name());
        let c = Marker::code("zc-");
        assert!(c.text().starts_with("zc-") && c.text().len() == 19);
    }
}
