//! Access and portability of a patient's record (GDPR art. 15 and 20; issue 6).
//!
//! - [`compartment`]: every current resource of a patient's compartment, held by the store
//!   until a decision releases it (`$everything` decides every resource like a read, `$export`
//!   decides `export_own` on the patient; the CLI reads as the operator).
//! - [`package`]: the portable package, one NDJSON stream (`application/fhir+ndjson`), one
//!   JSON resource per line, in this order:
//!   1. a manifest: a FHIR `Parameters` resource tagged `urn:phivault:export|manifest`, with
//!      `format` (`phivault-patient-export/1`), `patient`, `exportedAt` and the counts
//!      `resources`, `consents` and `auditEvents`;
//!   2. the `Patient`, then every other resource of the compartment (current versions, types
//!      in [`ResourceType::ALL`] order, each type by id), the patient's `Consent`s last;
//!   3. the patient's access log, oldest first, as FHIR `AuditEvent`s in the patient's view
//!      (no network addresses, no other patient account named).
//!
//!   `phivault import` of the package writes the resources of part 2 under their own ids
//!   (update by id) and skips the manifest and the `AuditEvent`s (the access log belongs to
//!   the exporting server's audit trail; a new server keeps its own).
//! - [`encrypt`]: the package encrypted to one or more age X25519 recipients (`age1...`), in
//!   the binary age format, for transfer to another provider.

use std::io::Write;

use phivault_auth::Accounts;
use phivault_fhir::{Id, ResourceType};
use phivault_store::{Store, StoredResource, Unreleased};
use serde_json::{Value, json};

use crate::ApiError;
use crate::audit_event::{View, instant, patient_log};
use crate::fhir_routes::is_directory;

/// The media type of the package.
pub const NDJSON: &str = "application/fhir+ndjson";
/// The tag system marking the manifest line of a package.
pub const EXPORT_SYSTEM: &str = "urn:phivault:export";
/// The tag code of the manifest line.
pub const MANIFEST_CODE: &str = "manifest";
/// The package format named in the manifest.
pub const FORMAT: &str = "phivault-patient-export/1";

/// True when `resource` (one line of a package) is its manifest.
pub fn is_manifest(resource: &Value) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && resource
            .pointer("/meta/tag")
            .and_then(Value::as_array)
            .is_some_and(|tags| {
                tags.iter().any(|t| {
                    t.get("system").and_then(Value::as_str) == Some(EXPORT_SYSTEM)
                        && t.get("code").and_then(Value::as_str) == Some(MANIFEST_CODE)
                })
            })
}

/// The compartment's types in package order: Patient, the others, Consent last.
pub fn compartment_types() -> Vec<ResourceType> {
    let mut types: Vec<ResourceType> = ResourceType::all()
        .filter(|t| !is_directory(*t) && *t != ResourceType::PATIENT)
        .collect();
    types.sort_by_key(|t| t.as_str() == "Consent");
    types.insert(0, ResourceType::PATIENT);
    types
}

/// Every current resource of `patient`'s compartment (the Patient first, see the module
/// docs), each held until a decision releases it. `limit`: refuse (400) a compartment with
/// more resources.
///
/// An erased patient answers `StoreError::Erased` (410), a deleted one
/// `StoreError::Gone` (410), an unknown one `StoreError::NotFound` (404).
pub async fn compartment(
    store: &Store,
    patient: &Id,
    limit: Option<usize>,
) -> Result<Vec<Unreleased<StoredResource>>, ApiError> {
    // The Patient itself, so that erased, deleted and unknown patients answer as such.
    let _exists = store
        .read_unreleased(ResourceType::PATIENT, patient)
        .await?;
    let types = compartment_types();
    let rank = |t: ResourceType| types.iter().position(|x| *x == t);
    // One more than the limit, to tell a compartment past it.
    let held = store
        .compartment_unreleased(patient, limit.map(|n| n.saturating_add(1)))
        .await?;
    let mut out: Vec<(usize, Unreleased<StoredResource>)> = held
        .into_iter()
        .filter_map(|r| rank(r.facts().rtype()).map(|i| (i, r)))
        .collect();
    if let Some(limit) = limit
        && out.len() > limit
    {
        return Err(ApiError::BadRequest(format!(
            "the patient's compartment holds more than {limit} resources, more than one answer \
             carries; use Patient/[id]/$export (NDJSON) or `phivault export-patient`"
        )));
    }
    // The compartment's order: by type as `compartment_types` lists them, then by id (the
    // store's order within a type; the sort is stable).
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// What a package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackageCounts {
    /// Resources of the compartment, Consents included.
    pub resources: usize,
    /// Of which Consents.
    pub consents: usize,
    /// AuditEvents of the access log.
    pub audit_events: usize,
}

/// The package of `patient` (see the module docs) holding `resources`, the compartment
/// ([`compartment`], released): the NDJSON bytes and their counts. `viewer`: the user id of
/// the patient's own account, when known (their own accesses then name them; otherwise every
/// patient account is shown as "a patient account").
pub async fn package(
    store: &Store,
    accounts: &Accounts,
    patient: &Id,
    resources: Vec<StoredResource>,
    viewer: Option<&str>,
) -> Result<(Vec<u8>, PackageCounts), ApiError> {
    let view = View::Patient {
        user_id: viewer.unwrap_or_default().to_owned(),
        patient: patient.to_string(),
    };
    let (events, left_out) = patient_log(store, accounts, patient, &view).await?;
    if left_out > 0 {
        tracing::error!(
            left_out,
            "export: audit entries failing the integrity check were left out of the package"
        );
    }
    let counts = PackageCounts {
        resources: resources.len(),
        consents: resources
            .iter()
            .filter(|r| r.rtype.as_str() == "Consent")
            .count(),
        audit_events: events.len(),
    };
    let now = time::OffsetDateTime::now_utc();
    let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let manifest = json!({
        "resourceType": "Parameters",
        "meta": { "tag": [{ "system": EXPORT_SYSTEM, "code": MANIFEST_CODE }] },
        "parameter": [
            { "name": "format", "valueString": FORMAT },
            { "name": "patient", "valueReference": { "reference": format!("Patient/{patient}") } },
            { "name": "exportedAt", "valueInstant": instant(millis) },
            { "name": "resources", "valueUnsignedInt": counts.resources },
            { "name": "consents", "valueUnsignedInt": counts.consents },
            { "name": "auditEvents", "valueUnsignedInt": counts.audit_events },
        ]
    });
    let mut out = Vec::new();
    let mut line = |v: &Value| -> Result<(), ApiError> {
        serde_json::to_writer(&mut out, v)
            .map_err(|e| ApiError::internal(&format!("writing the export package: {e}")))?;
        out.push(b'\n');
        Ok(())
    };
    line(&manifest)?;
    for r in &resources {
        line(&r.body)?;
    }
    for e in &events {
        line(e)?;
    }
    Ok((out, counts))
}

/// `plaintext` encrypted to every one of `recipients` (age X25519 public keys, `age1...`), in
/// the binary age format. A malformed recipient is a 400 naming its position (keys are
/// public, but long: not repeated).
pub fn encrypt(plaintext: &[u8], recipients: &[String]) -> Result<Vec<u8>, ApiError> {
    let mut parsed = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter().enumerate() {
        let key = r.trim().parse::<age::x25519::Recipient>().map_err(|_| {
            ApiError::BadRequest(format!(
                "recipient {}: not an age X25519 public key (age1...)",
                i + 1
            ))
        })?;
        parsed.push(key);
    }
    if parsed.is_empty() {
        return Err(ApiError::BadRequest(
            "at least one age recipient is needed to encrypt".to_owned(),
        ));
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| ApiError::internal(&format!("age: {e}")))?;
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| ApiError::internal(&format!("age: {e}")))?;
    writer
        .write_all(plaintext)
        .map_err(|e| ApiError::internal(&format!("age: {e}")))?;
    writer
        .finish()
        .map_err(|e| ApiError::internal(&format!("age: {e}")))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn types_in_package_order() {
        let types = compartment_types();
        assert_eq!(types.first(), Some(&ResourceType::PATIENT));
        assert_eq!(types.last().map(ResourceType::as_str), Some("Consent"));
        assert!(types.iter().all(|t| !is_directory(*t)));
        assert_eq!(
            types
                .iter()
                .filter(|t| **t == ResourceType::PATIENT)
                .count(),
            1
        );
    }

    #[test]
    fn manifests_are_recognised() {
        let m = json!({
            "resourceType": "Parameters",
            "meta": { "tag": [{ "system": EXPORT_SYSTEM, "code": MANIFEST_CODE }] },
        });
        assert!(is_manifest(&m));
        assert!(!is_manifest(&json!({ "resourceType": "Parameters" })));
        assert!(!is_manifest(&json!({
            "resourceType": "Observation",
            "meta": { "tag": [{ "system": EXPORT_SYSTEM, "code": MANIFEST_CODE }] },
        })));
    }

    #[test]
    fn encryption_round_trip_and_bad_recipients() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let text = b"{\"resourceType\":\"Patient\",\"id\":\"p\"}\n";
        let sealed = encrypt(text, &[recipient]).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"Patient"));
        let decryptor = age::Decryptor::new(&sealed[..]).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back, text);
        let e = encrypt(text, &["age1notakey".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("recipient 1"), "{e}");
        assert!(encrypt(text, &[]).is_err());
    }
}
