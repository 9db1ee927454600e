//! The CapabilityStatement (`GET /fhir/metadata`): what this server really does, and nothing
//! it does not (no `_include`, no `_sort`, no type- or system-level history, no conditional
//! interactions, JSON only).

use phivault_fhir::{ResourceType, SearchParamKind, search_params};
use serde_json::{Value, json};

/// The server's version, as built.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn kind_code(kind: SearchParamKind) -> &'static str {
    match kind {
        SearchParamKind::String => "string",
        SearchParamKind::Token => "token",
        SearchParamKind::Reference => "reference",
        SearchParamKind::Date => "date",
        _ => "special",
    }
}

fn kind_documentation(kind: SearchParamKind) -> &'static str {
    match kind {
        SearchParamKind::String => {
            "Matched over a blind index (HMAC tokens, no plaintext): case- and \
             accent-insensitive equality with the whole value, a whole word, or a prefix of at \
             least 3 characters; :exact matches the exact value. No :contains."
        }
        SearchParamKind::Token => {
            "Matched over a blind index (HMAC tokens, no plaintext): code, system|code or \
             |code, codes case-sensitive. No modifiers (:text, :not, :above, :below, :in)."
        }
        SearchParamKind::Reference => {
            "Matched over a blind index (HMAC tokens, no plaintext): Type/id, or a bare id \
             with the :Type modifier or meaning Patient/id; equality only. No chaining."
        }
        SearchParamKind::Date => {
            "Matched over a blind index (HMAC tokens, no plaintext): equality only (no prefix \
             or the eq prefix) at day (YYYY-MM-DD), month (YYYY-MM) or year (YYYY) \
             precision. No ranges (lt, gt, le, ge, ne, sa, eb, ap) and no times."
        }
        _ => "Matched over a blind index (HMAC tokens, no plaintext), equality only.",
    }
}

fn resource_entry(rtype: ResourceType) -> Value {
    let mut params = vec![json!({
        "name": "_id",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
        "type": "token",
        "documentation": "Logical id; comma-separated values are ORed.",
    })];
    for def in search_params(rtype) {
        params.push(json!({
            "name": def.name,
            "type": kind_code(def.kind),
            "documentation": format!("{} ({})", kind_documentation(def.kind), def.expression),
        }));
    }
    let interactions: Vec<Value> = [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "create",
        "search-type",
    ]
    .iter()
    .map(|code| json!({ "code": code }))
    .collect();
    json!({
        "type": rtype.as_str(),
        "profile": format!("http://hl7.org/fhir/StructureDefinition/{rtype}"),
        "interaction": interactions,
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    })
}

/// The CapabilityStatement of this server at `base_url`.
pub(crate) fn capability_statement(base_url: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    let resources: Vec<Value> = ResourceType::all().map(resource_entry).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "phivault",
        "kind": "instance",
        "software": { "name": "phivault", "version": VERSION },
        "implementation": {
            "description": "phivault FHIR R4 server",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search runs over blind indexes (HMAC tokens of normalized \
                values), so every parameter matches by equality: no ranges, no :contains, \
                no _include, no _sort. Paging uses _count (default 50, at most 1000) and \
                _offset.",
            "security": {
                "cors": false,
                "description": "HTTPS only (TLS via rustls; plain HTTP only on loopback when \
                    explicitly enabled). Every request needs an Authorization: Bearer token. \
                    Resources, search indexes and keys are encrypted at rest (AES-256-GCM, \
                    per-patient data keys; search values stored as HMAC tokens).",
            },
            "resource": resources,
            "interaction": [
                { "code": "transaction" },
                { "code": "batch" },
            ],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_unimplemented_claims() {
        // search_params may not be available in every build of the fhir crate yet; the
        // top-level shape does not depend on it.
        let kinds = [
            SearchParamKind::String,
            SearchParamKind::Token,
            SearchParamKind::Reference,
            SearchParamKind::Date,
        ];
        for k in kinds {
            assert_ne!(kind_code(k), "special");
            assert!(kind_documentation(k).contains("blind index"));
        }
    }
}
