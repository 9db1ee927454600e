//! Certificates: a self-signed CA and a certificate for localhost signed by it, made on
//! first start under `<data_dir>/tls/` (private keys mode 0600). Clients trust `ca.pem`.
//!
//! The CA's private key is used once, to sign the server certificate, and never written to
//! disk: nobody can mint further certificates under this CA. To renew, delete the directory's
//! files and start again (clients then trust the new `ca.pem`).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::ServerError;

/// Paths of the generated PEM files.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The CA certificate clients should trust.
    pub ca: PathBuf,
    /// The server certificate chain (leaf then CA).
    pub cert: PathBuf,
    /// The server private key.
    pub key: PathBuf,
}

/// Validity of the local CA.
const CA_DAYS: i64 = 3650;
/// Validity of the server certificate.
const LEAF_DAYS: i64 = 1825;

/// Creates the CA and the localhost certificate in `dir` unless they exist.
///
/// When all three files exist they are reused as they are (a key file readable by others is
/// tightened to 0600). When any is missing, all three are made anew.
pub fn ensure_certificates(dir: &Path) -> Result<CertPaths, ServerError> {
    let paths = CertPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    if paths.ca.is_file() && paths.cert.is_file() && paths.key.is_file() {
        tighten_key_mode(&paths.key)?;
        return Ok(paths);
    }
    create_private_dir(dir)?;
    let generated = generate()?;
    // Key first, CA last: a crash in between leaves a set that is regenerated next time.
    write_file(&paths.key, generated.key_pem.as_bytes(), true)?;
    write_file(&paths.cert, generated.chain_pem.as_bytes(), false)?;
    write_file(&paths.ca, generated.ca_pem.as_bytes(), false)?;
    tracing::info!(dir = %dir.display(), "created a local CA and a localhost certificate");
    Ok(paths)
}

struct Generated {
    ca_pem: String,
    chain_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated").finish_non_exhaustive()
    }
}

fn cert_error(e: rcgen::Error) -> ServerError {
    ServerError::Certificate(e.to_string())
}

fn generate() -> Result<Generated, ServerError> {
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "phivault local CA");
    ca_dn.push(DnType::OrganizationName, "phivault");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Duration::days(1);
    ca_params.not_after = now + Duration::days(CA_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(cert_error)?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned()]).map_err(cert_error)?;
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let mut leaf_dn = DistinguishedName::new();
    leaf_dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = leaf_dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = now - Duration::days(1);
    leaf_params.not_after = now + Duration::days(LEAF_DAYS);
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(cert_error)?;

    Ok(Generated {
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_pem),
        ca_pem,
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Creates `dir` (and parents) with mode 0700 for the last component when new.
fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))
}

/// Writes `bytes` to `path` through a fresh temporary file (mode 0600 when `private`, set at
/// creation), synced, then renamed over `path`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), ServerError> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().as_simple()));
    let what = |verb: &str| format!("{verb} {}", path.display());
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ServerError::io(what("writing"), e));
    }
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        // Makes the rename durable; failure here loses nothing already readable.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Sets a private key file readable by others back to 0600.
fn tighten_key_mode(path: &Path) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path)
            .map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key was readable by others; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(|e| ServerError::io(format!("chmod {}", path.display()), e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let paths = ensure_certificates(&tls).unwrap();
        let ca = fs::read_to_string(&paths.ca).unwrap();
        let chain = fs::read_to_string(&paths.cert).unwrap();
        let key = fs::read_to_string(&paths.key).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(chain.ends_with(&ca));
        assert!(key.contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let again = ensure_certificates(&tls).unwrap();
        assert_eq!(fs::read_to_string(&again.ca).unwrap(), ca);
        assert_eq!(fs::read_to_string(&again.cert).unwrap(), chain);
        assert_eq!(fs::read_to_string(&again.key).unwrap(), key);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&tls).unwrap().count(), 3);
    }

    #[test]
    fn rustls_accepts_the_chain() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let paths = ensure_certificates(dir.path()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_file_iter(&paths.cert)
            .unwrap()
            .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
            .unwrap();
        let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_file(&paths.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key);
        assert!(config.is_ok());

        // A client trusting only ca.pem verifies the leaf for localhost and 127.0.0.1.
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls::pki_types::pem::PemObject::pem_file_iter(&paths.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&certs[0], &certs[1..], &server_name, &[], now)
                .unwrap();
        }
    }
}
