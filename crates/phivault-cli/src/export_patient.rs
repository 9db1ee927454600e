//! `phivault export-patient PATIENT_ID --out FILE [--recipient AGE_PUBLIC_KEY ...]`: a
//! patient's portable package (right of access and portability), written to a file.
//!
//! The package is `phivault_server::portability::package` (the same as the patient's own
//! `GET /fhir/Patient/{id}/$export`): NDJSON with a manifest line, the compartment's current
//! resources, the Consents, and the patient's access log as AuditEvents (in the patient's
//! view: no network addresses, patient accounts shown as "a patient account"). With
//! `--recipient`, it is encrypted to those age X25519 recipients (binary age format).
//!
//! Fail-closed audit: the package is written to a temporary file beside `--out`, the run's
//! `cli export-patient` entry (patient id, outcome) is appended, and only then is the file
//! renamed into place; if the entry cannot be written, the temporary file is removed. The
//! file is created owner-only (0600 on Unix): it holds PHI unless encrypted.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use phivault_auth::Accounts;
use phivault_fhir::{Id, ResourceType, SearchQuery};
use phivault_server::portability::{self, PackageCounts};
use phivault_store::{SearchScope, Store, StoredResource};

use crate::cli_audit::CliAudit;

/// Runs the export (see the module docs); reports the counts on stderr.
pub(crate) async fn run(
    accounts: &Accounts,
    store: &Store,
    patient: &Id,
    out: &Path,
    recipients: &[String],
) -> Result<PackageCounts> {
    let audit = CliAudit::open(store, "export-patient").await?;
    let tmp = temporary_path(out);
    let written = write_package(accounts, store, patient, &tmp, recipients).await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let counts = match audit
        .finish(written, Some(("Patient", patient)), Some(patient))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("moving the package to {}: {e}", out.display()));
    }
    eprintln!(
        "phivault: Patient/{patient} exported to {}: {} resources ({} consents), {} audit \
         events{}",
        out.display(),
        counts.resources,
        counts.consents,
        counts.audit_events,
        if recipients.is_empty() {
            "; the file is not encrypted (PHI): protect it, or use --recipient"
        } else {
            ", encrypted with age"
        }
    );
    Ok(counts)
}

/// `FILE.partial-<uuid>` beside `out`.
fn temporary_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", uuid::Uuid::new_v4()));
    out.with_file_name(name)
}

/// Every current resource of `patient`'s compartment in package order, read as the operator:
/// the holder of the master key runs this command, and no decision of the policies binds them
/// (the export is audited as theirs).
async fn operator_compartment(
    store: &Store,
    patient: &Id,
) -> Result<Vec<StoredResource>, phivault_store::StoreError> {
    // The Patient itself, so that erased, deleted and unknown patients answer as such.
    store.read(ResourceType::PATIENT, patient).await?;
    let scope = SearchScope {
        patients: Some(vec![patient.clone()]),
        directory: false,
        ..SearchScope::default()
    };
    let mut out = Vec::new();
    for rtype in portability::compartment_types() {
        let mut query = SearchQuery::parse(rtype, &[], false)?;
        query.count = OPERATOR_PAGE;
        query.offset = 0;
        loop {
            let page = store.search_scoped(rtype, &query, &scope).await?;
            let read = page.resources.len();
            out.extend(page.resources);
            query.offset = query.offset.saturating_add(read);
            if read == 0 || u64::try_from(query.offset).unwrap_or(u64::MAX) >= page.total {
                break;
            }
        }
    }
    Ok(out)
}

/// Resources read per store page by [`operator_compartment`].
const OPERATOR_PAGE: usize = 500;

async fn write_package(
    accounts: &Accounts,
    store: &Store,
    patient: &Id,
    path: &Path,
    recipients: &[String],
) -> Result<PackageCounts> {
    // Recipients first: a typo costs nothing.
    if !recipients.is_empty() {
        portability::encrypt(b"", recipients).map_err(|e| anyhow!("--recipient: {e}"))?;
    }
    let resources = operator_compartment(store, patient)
        .await
        .map_err(|e| anyhow!("exporting Patient/{patient}: {e}"))?;
    let (bytes, counts) = portability::package(store, accounts, patient, resources, None)
        .await
        .map_err(|e| anyhow!("exporting Patient/{patient}: {e}"))?;
    let bytes = if recipients.is_empty() {
        bytes
    } else {
        portability::encrypt(&bytes, recipients).map_err(|e| anyhow!("--recipient: {e}"))?
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(counts)
}
