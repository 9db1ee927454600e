//! Resolving how a written body names its patient, before it is decided and stored.
//!
//! Rules kept here (the store refuses whatever is left unresolved, see
//! [`phivault_fhir::check_patient_links`]):
//! - **This server's absolute URLs become relative, in every reference.**
//!   `https://<base>/Patient/X` (scheme and host compared without case, the default port
//!   implied) is rewritten to `Patient/X`, so the resource lands in X's compartment like one
//!   written with `Patient/X`; likewise `https://<base>/Organization/O` becomes
//!   `Organization/O` (and `.../_history/N` keeps its version) wherever a `reference` names
//!   it. Only a known type and a valid id under the base are rewritten; anything else under
//!   the base (and a transaction's own `fullUrl`s, which the transaction resolves) is left
//!   as written.
//! - **A conditional reference `Patient?<search>` is resolved once, at write time**, by a
//!   search with the writer's own access: exactly one Patient the writer can see, and the
//!   reference is rewritten to it; none is 422 and several are 412 (as FHIR answers
//!   conditional references). A patient out of the writer's reach counts as none, so the
//!   answer tells nothing a search would not.
//! - **Everything else naming a patient is refused with 422**: absolute URLs of other servers
//!   (their patient is not one of ours: stored here it would fall in no compartment), a
//!   reference by identifier alone (no `reference`; a logical identifier may name several
//!   patients or none, and the record's key, readers and erasure must not depend on a guess),
//!   contained patients, placeholders that no entry of the transaction defines, and malformed
//!   references.
//! - **Then the compartment rules** ([`phivault_fhir::check_compartment`], 422): a resource of
//!   a compartment type names exactly one patient, a directory resource none.

use std::collections::HashMap;

use phivault_fhir::{
    FhirError, Id, Issue, IssueCode, LinkKind, PatientLink, ResourceType, SearchQuery,
    ValidResource, check_compartment, patient_links,
};
use serde_json::Value;

use super::{Access, parse_pairs};
use crate::{ApiError, AppState};

/// Rewrites the patient links of `resource` that name one of this server's patients to
/// `Patient/{id}`, refusing the others (see the module's rules). `placeholders`: the
/// references a transaction resolves itself (its entries' `fullUrl`s), left as they are.
pub(crate) async fn resolve_patient_links(
    state: &AppState,
    access: &mut Access,
    resource: &mut ValidResource,
    placeholders: &HashMap<String, String>,
) -> Result<(), ApiError> {
    relativize_own_references(super::base(state), resource, placeholders);
    let links = patient_links(resource);
    let mut map = HashMap::new();
    // A placeholder the transaction resolves leaves the compartment to the store's check.
    let mut deferred = false;
    for link in links {
        if placeholders.contains_key(&link.reference) {
            deferred = true;
            continue;
        }
        if map.contains_key(&link.reference) {
            continue;
        }
        let target = match &link.kind {
            LinkKind::Absolute => match own_relative(super::base(state), &link.reference) {
                Some(relative) => relative,
                None => {
                    return Err(refuse(
                        &link,
                        "an absolute reference to another server names no patient of this one",
                    ));
                }
            },
            LinkKind::Conditional { target, query } if target == "Patient" => {
                resolve_conditional(access, &link, query).await?
            }
            LinkKind::Conditional { .. } => {
                return Err(refuse(
                    &link,
                    "a conditional reference must search Patients",
                ));
            }
            LinkKind::IdentifierOnly => {
                return Err(refuse(
                    &link,
                    "a reference by identifier alone is not accepted (it is not resolved to \
                     a patient); use `Patient/{id}` or a conditional reference \
                     `Patient?identifier=system|value`",
                ));
            }
            LinkKind::Placeholder => {
                return Err(refuse(
                    &link,
                    "a placeholder is resolved only by an entry of the same transaction",
                ));
            }
            LinkKind::Contained => {
                return Err(refuse(
                    &link,
                    "a contained resource cannot be the compartment's patient",
                ));
            }
            _ => return Err(refuse(&link, "not a valid reference")),
        };
        map.insert(link.reference.clone(), target);
    }
    if !map.is_empty() {
        resource.rewrite_references(&map);
    }
    // The compartment rules (exactly one patient; none in a directory resource) are checked
    // here, before the write is decided, so the refusal is the same 422 for every writer.
    if !deferred {
        check_compartment(resource)?;
    }
    Ok(())
}

fn refuse(link: &PatientLink, why: &str) -> ApiError {
    ApiError::Fhir(link.refusal(why))
}

/// `Patient/{id}` of the one Patient a conditional reference's search finds with the
/// writer's access; 422 when none, 412 when several.
async fn resolve_conditional(
    access: &mut Access,
    link: &PatientLink,
    query: &str,
) -> Result<String, ApiError> {
    let unusable = || {
        refuse(
            link,
            "the conditional reference is not a valid Patient search",
        )
    };
    let pairs = parse_pairs(query).map_err(|_| unusable())?;
    let mut search =
        SearchQuery::parse(ResourceType::PATIENT, &pairs, false).map_err(|_| unusable())?;
    if search.params.is_empty() && search.ids.is_none() {
        return Err(unusable());
    }
    search.count = 2;
    search.offset = 0;
    let (total, found) = access.search(ResourceType::PATIENT, &search).await?;
    match (total, found.as_slice()) {
        (1, [patient]) => Ok(format!("Patient/{}", patient.id)),
        (0, _) => Err(ApiError::Fhir(FhirError::Invalid(vec![Issue {
            code: IssueCode::NotFound,
            path: link.path.clone(),
            message: "the conditional reference matches no Patient".to_owned(),
        }]))),
        _ => Err(ApiError::Fhir(FhirError::AmbiguousReference {
            path: link.path.clone(),
            target: "Patient".to_owned(),
        })),
    }
}

/// Rewrites every `reference` that is an absolute URL of a resource on this server (`base`
/// without a trailing slash) to its relative form, except the `placeholders` a transaction
/// resolves itself.
fn relativize_own_references(
    base: &str,
    resource: &mut ValidResource,
    placeholders: &HashMap<String, String>,
) {
    let mut map = HashMap::new();
    // An explicit stack: no recursion depth to exhaust, however deep the body.
    let mut stack = vec![resource.body()];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    match child {
                        Value::String(reference)
                            if key == "reference"
                                && reference.contains("://")
                                && !placeholders.contains_key(reference) =>
                        {
                            if let Some(relative) = own_resource_url(base, reference) {
                                map.insert(reference.clone(), relative);
                            }
                        }
                        _ => stack.push(child),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    if !map.is_empty() {
        resource.rewrite_references(&map);
    }
}

/// `Type/id` or `Type/id/_history/vid` of an absolute URL of a resource under `base`.
fn own_resource_url(base: &str, url: &str) -> Option<String> {
    let relative = own_relative(base, url)?;
    let segments: Vec<&str> = relative.split('/').collect();
    let (rtype, id) = match segments.as_slice() {
        [rtype, id] | [rtype, id, "_history", _] => (*rtype, *id),
        _ => return None,
    };
    if let [.., vid] = segments.as_slice()
        && segments.len() == 4
        && (vid.is_empty() || !vid.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    ResourceType::parse(rtype).ok()?;
    Id::parse(id).ok()?;
    Some(relative)
}

/// The relative reference of an absolute URL under this server's base URL (`base` without a
/// trailing slash), if it is one. Scheme and host compare without case; a default port
/// (443 for https, 80 for http) is the same as none.
fn own_relative(base: &str, url: &str) -> Option<String> {
    let (base_origin, base_path) = split_url(base)?;
    let (origin, path) = split_url(url)?;
    if base_origin != origin {
        return None;
    }
    let rest = path.strip_prefix(base_path.trim_end_matches('/'))?;
    let rest = rest.strip_prefix('/')?;
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// `(scheme://host[:port] lower-cased without a default port, path)`.
fn split_url(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.ends_with(default_port) {
        authority.truncate(authority.len() - default_port.len());
    }
    Some((format!("{scheme}://{authority}"), path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_urls_become_relative() {
        let base = "https://ehr.example:8443/fhir";
        assert_eq!(
            own_relative(base, "https://ehr.example:8443/fhir/Patient/p1").as_deref(),
            Some("Patient/p1")
        );
        assert_eq!(
            own_relative(base, "HTTPS://EHR.example:8443/fhir/Patient/p1/_history/2").as_deref(),
            Some("Patient/p1/_history/2")
        );
        assert_eq!(
            own_relative(
                "https://ehr.example/fhir",
                "https://ehr.example:443/fhir/Patient/p1"
            )
            .as_deref(),
            Some("Patient/p1")
        );
        // Another host, port, scheme or path is another server.
        assert!(own_relative(base, "https://other.example:8443/fhir/Patient/p1").is_none());
        assert!(own_relative(base, "https://ehr.example:9443/fhir/Patient/p1").is_none());
        assert!(own_relative(base, "http://ehr.example:8443/fhir/Patient/p1").is_none());
        assert!(own_relative(base, "https://ehr.example:8443/fhirx/Patient/p1").is_none());
        assert!(own_relative(base, "https://ehr.example:8443/fhir/").is_none());
        assert!(own_relative(base, "https://ehr.example:8443.evil/fhir/Patient/p1").is_none());
    }

    #[test]
    fn only_resource_urls_are_rewritten() {
        let base = "https://ehr.example/fhir";
        for (url, expected) in [
            (
                "https://ehr.example/fhir/Organization/o-1",
                Some("Organization/o-1"),
            ),
            (
                "https://ehr.example/fhir/Practitioner/d/_history/3",
                Some("Practitioner/d/_history/3"),
            ),
            ("https://ehr.example/fhir/metadata", None),
            ("https://ehr.example/fhir/Nonsense/x", None),
            ("https://ehr.example/fhir/Organization/bad id", None),
            ("https://ehr.example/fhir/Organization/o/_history/x", None),
            ("https://ehr.example/fhir/Organization/o/_history/", None),
            ("https://ehr.example/fhir/Organization/o/extra", None),
            ("https://other.example/fhir/Organization/o", None),
        ] {
            assert_eq!(own_resource_url(base, url).as_deref(), expected, "{url}");
        }
    }
}
