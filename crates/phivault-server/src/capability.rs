//! The CapabilityStatement (`GET /fhir/metadata`): what this server really does, and nothing
//! it does not (no `_sort`, no type- or system-level history, JSON only). Conditional
//! read, create, update and delete (single) are listed, each condition decided with the
//! caller's own search; search prefixes, result parameters, includes and chains are stated in
//! `rest`.

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
        SearchParamKind::Uri => "uri",
        SearchParamKind::Number => "number",
        SearchParamKind::Quantity => "quantity",
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
            "Matched over a blind index (HMAC tokens, no plaintext): the prefixes eq \
             (default), ne, gt, lt, ge, le, sa and eb with a value at day (YYYY-MM-DD), month \
             (YYYY-MM) or year (YYYY) precision, years 1800 to 2200; the target (a date, \
             dateTime or instant by its date as written, a Period from its start to its end) \
             is a range of days, and eq means within the search range. A range is served as \
             the fewest year, month and day tokens covering it, so the index reveals no order. \
             With several values of one parameter in a resource, eq and ne may match a \
             resource whose values start and end in the range separately. No ap, no times."
        }
        SearchParamKind::Uri => {
            "Matched over a blind index (HMAC tokens, no plaintext): the exact URI. No :below \
             or :above."
        }
        SearchParamKind::Number | SearchParamKind::Quantity => {
            "Matched over a blind index (HMAC tokens, no plaintext): the prefixes eq \
             (default: within the implicit range of the value's written precision, 5.4 is \
             [5.35, 5.45)), ne, gt, lt, ge, le (against the exact value), sa, eb and ap (the eq \
             range or within 10%). Quantities as number, number|system|code or number||code \
             (code or unit text), no unit conversion. A value is indexed under sign, decimal \
             exponent and leading-digit buckets; a range is served exactly as the fewest \
             buckets covering it, so the index reveals no order. Search values: at most 6 \
             significant digits (5 for eq, ne, sa, eb, ap), magnitudes 1e-12 to 1e16 or 0."
        }
        _ => "Matched over a blind index (HMAC tokens, no plaintext), equality only.",
    }
}

/// How conditional interactions are decided, on every type.
const CONDITIONAL_DOCUMENTATION: &str = "Conditional interactions (If-None-Exist and \
    Bundle ifNoneExist; PUT and DELETE [base]/Type?search; conditional references \
    Type?search in transactions, batches and, for the patient, in creates and updates) are \
    resolved by a search with the caller's own access: a match the caller may not read counts \
    as none, so a conditional create or update whose only match is out of reach creates a new \
    resource (201) exactly as if nothing matched. One match: the create answers it (200, \
    nothing written), the update updates it, the delete deletes it, the reference names it. \
    Several: 412. A conditional reference that finds nothing: 422. In a transaction, a \
    conditional reference also finds resources created by the same transaction.";

/// What `_sort` does, for the CapabilityStatement.
const SORT_DOCUMENTATION: &str = "_sort on every type but AuditEvent: comma-separated keys, - for \
    descending, over _id, _lastUpdated and the type's date and string parameters (token, \
    reference and unknown keys answer 400). Dates compare the earliest instant ascending, the \
    latest descending; strings compare case- and accent-insensitively; missing values sort \
    last; ties by id. The index holds no order, so a sorted search decrypts every match the \
    caller may read (each decided and audited like a read, its patient named in the audit \
    entry) and is refused (400 too-costly) above 10,000 matches.";
/// `_summary` and `_elements`, on search, read, vread and history of every type.
const SUMMARY_DOCUMENTATION: &str = "_summary=true (R4's summary elements), text (text and \
    the mandatory elements), data (all but text), count (search: the total only), false (the \
    default); _elements=a,b (those top-level elements and the mandatory ones; an unknown name \
    is 400, ignored under Prefer: handling=lenient). Not both: 400. On search (included \
    resources too), read, vread and history. Every subset keeps resourceType, id, meta and \
    the modifier elements, carries the meta.tag SUBSETTED (v3-ObservationValue) and the ETag \
    W/\"n-subsetted\", which If-Match refuses; a body tagged SUBSETTED is never written (400).";

fn resource_entry(rtype: ResourceType) -> Value {
    let mut params = vec![
        json!({
            "name": "_id",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
            "type": "token",
            "documentation": "Logical id; comma-separated values are ORed.",
        }),
        json!({
            "name": "_lastUpdated",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
            "type": "date",
            "documentation": "Time of the last write (meta.lastUpdated, kept to the second): the \
                prefixes eq (default), ne, gt, lt, ge, le, sa and eb with YYYY, YYYY-MM, \
                YYYY-MM-DD (UTC) or YYYY-MM-DDThh:mm[:ss] with Z or an offset; no fractional \
                seconds. Compared with the write time the server keeps in the clear (not PHI).",
        }),
        json!({
            "name": "_summary",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-summary",
            "type": "token",
            "documentation": SUMMARY_DOCUMENTATION,
        }),
        json!({
            "name": "_elements",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-elements",
            "type": "string",
            "documentation": SUMMARY_DOCUMENTATION,
        }),
    ];
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
        "conditionalCreate": true,
        "conditionalRead": "full-support",
        "conditionalUpdate": true,
        "conditionalDelete": "single",
        "documentation": CONDITIONAL_DOCUMENTATION,
        "searchParam": params,
        // One level (no :iterate); each included resource decided like a search hit.
        "searchInclude": phivault_fhir::include_values(rtype),
        "searchRevInclude": phivault_fhir::revinclude_values(rtype),
    })
}

/// The audit trail as `AuditEvent`s (read and search, auditors only by default).
fn audit_event_entry() -> Value {
    let param = |name: &str, kind: &str, definition: &str, documentation: &str| {
        json!({
            "name": name,
            "definition": definition,
            "type": kind,
            "documentation": documentation,
        })
    };
    json!({
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The audit trail (one event per request, and per resource written in \
            a Bundle), in the spirit of IHE BALP: read-only, for the auditor role. Results are \
            newest first, paged with _count (default 50, at most 500) and the next link's \
            opaque cursor. Break-the-glass events carry meta.security BTG and purposeOfEvent \
            ETREAT. A patient reads their own access log with Patient/{id}/$access-log.",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": [
            param(
                "patient",
                "reference",
                "http://hl7.org/fhir/SearchParameter/AuditEvent-patient",
                "The patient the event is about: an id or Patient/id. One value.",
            ),
            param(
                "agent",
                "reference",
                "http://hl7.org/fhir/SearchParameter/AuditEvent-agent",
                "Who acted: the id of a user or client (agent.who.identifier.value). One value.",
            ),
            param(
                "date",
                "date",
                "http://hl7.org/fhir/SearchParameter/AuditEvent-date",
                "When recorded: a date (YYYY, YYYY-MM, YYYY-MM-DD, in UTC) or an instant, \
                 with the prefixes eq (default), ge, gt, le, lt; repeat for a range.",
            ),
            param(
                "action",
                "token",
                "http://hl7.org/fhir/SearchParameter/AuditEvent-action",
                "C, R, U, D or E. One value.",
            ),
            param(
                "outcome",
                "token",
                "http://hl7.org/fhir/SearchParameter/AuditEvent-outcome",
                "0 (allowed), 4 (denied) or 8 (error). One value.",
            ),
        ],
    })
}

/// `rest.security`: what protects the API, truthfully.
fn security(base_url: &str) -> Value {
    let root = crate::routes::oauth::server_root(base_url);
    json!({
        "cors": false,
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                { "url": "authorize", "valueUri": format!("{root}/oauth/authorize") },
                { "url": "token", "valueUri": format!("{root}/oauth/token") },
                { "url": "revoke", "valueUri": format!("{root}/oauth/revoke") },
                { "url": "introspect", "valueUri": format!("{root}/oauth/introspect") },
                { "url": "manage", "valueUri": format!("{root}/auth/apps") },
            ],
        }],
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR",
            }],
            "text": "SMART App Launch 2.x: authorization code with PKCE (S256) for standalone \
                and EHR launches, OpenID Connect id_tokens, rotating refresh tokens; SMART \
                Backend Services (client credentials with private_key_jwt, RS384 or ES384) and \
                client secrets; SMART v2 scopes. See /.well-known/smart-configuration",
        }],
        "description": "HTTPS only (TLS via rustls; plain HTTP only on loopback when \
            explicitly enabled). Every request except this CapabilityStatement needs an \
            Authorization: Bearer token: a user session (password, and TOTP for staff, at \
            POST /auth/login; 8 hours) or an OAuth2 access token (15 minutes, bound to its \
            client, limited to its SMART v2 scopes and, for an app acting for a person, to \
            what that person may do and approved on the consent screen; revocable at \
            /oauth/revoke, and by the person at /auth/apps). Tokens are random and stored only as hashes. \
            Authorization: Cedar policies, default deny, decided for every interaction on the \
            resource's patient compartment, with the purpose of use (X-Purpose-Of-Use, an HL7 \
            PurposeOfUse code; the role's default otherwise; each role may assert only its \
            configured purposes, a purpose covering its v3-ActReason specializations) and the \
            patient's consent. Sensitivity labels in meta.security (restricted, mental health, substance use, \
            HIV) need an explicit per-patient grant. Break-the-glass: a clinician refused may \
            send X-Purpose-Of-Use: ETREAT with X-Break-Glass-Reason for one hour of read \
            access to that patient, recorded and listed for review; ETREAT without a claim \
            in force is refused. Searches return and count \
            only what the principal may read; _include, _revinclude, chained parameters and \
            _has (one level each) look the other resources up as the principal, so they add, \
            count and reveal nothing out of reach. A \
            refusal never tells whether a resource exists. Resources, search indexes and keys \
            are encrypted at rest (AES-256-GCM, per-patient data keys; search values stored \
            as HMAC tokens).",
    })
}

/// The Bulk Data export operations (FHIR Bulk Data Access IG v2), at system level.
fn bulk_operations() -> Value {
    let rules = "Asynchronous: Prefer: respond-async is required (400 otherwise); the kick-off \
        answers 202 with Content-Location [base]/$export-status/{job}; the status answers the \
        completion manifest (requiresAccessToken true, one application/fhir+ndjson file per \
        type at [base]/$export-file/{job}/{Type}.ndjson) to the principal that started the job \
        only (404 to others); DELETE on the status URL cancels and deletes. Parameters: \
        _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), _type, _since (an \
        instant; meta.lastUpdated strictly after it), _typeFilter (Type?search, ORed per \
        type, run as the caller's search); no _elements or includeAssociatedData. For backend services (system/ scopes) and researchers under \
        the policies; every resource is decided like a search hit of the caller (scopes, \
        labels, consent), every patient exported is named in the kick-off's audit entry. The \
        export runs during the kick-off; its output is held in memory only (never on disk), \
        bounded per export, each file deleted once downloaded and the job after one hour. \
        De-identified research exports: deidentification=<project> (a research project the \
        operator configured) with X-Purpose-Of-Use: HRESCH, for researchers and apps with \
        system/ search scopes; only the patients whose research consent permits it, never \
        labelled resources, Patient compartment types only, _type accepted (not _since or \
        _typeFilter); every resource goes through the project's de-identification rules, \
        and the manifest's extension.deidentification is the report (counts, rules applied, \
        configuration hash, k-anonymity and l-diversity).";
    json!([{
        "name": "export",
        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        "documentation": format!("GET [base]/$export: every type. {rules}"),
    }, {
        "name": "patient-export",
        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        "documentation": format!(
            "GET [base]/Patient/$export: the Patient compartment types of every patient. {rules}"
        ),
    }, {
        "name": "group-export",
        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        "documentation": format!(
            "GET [base]/Group/{{id}}/$export: the Patient compartment types of the Group's \
             member.entity Patients (the Group decided like a read). {rules}"
        ),
    }])
}

/// The CapabilityStatement of this server at `base_url`.
pub(crate) fn capability_statement(base_url: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    let mut resources: Vec<Value> = ResourceType::all().map(resource_entry).collect();
    if let Some(patient) = resources
        .iter_mut()
        .find(|r| r["type"] == "Patient")
        .and_then(Value::as_object_mut)
    {
        patient.insert(
            "operation".to_owned(),
            json!([{
                "name": "access-log",
                "definition": "urn:phivault:OperationDefinition/Patient-access-log",
                "documentation": "GET Patient/{id}/$access-log: the patient's access log \
                    (AuditEvents about them, newest first, paged like AuditEvent search; \
                    parameters date, action, outcome, _count): who (name and role), when, \
                    what and why, break-the-glass flagged. For that patient's own session \
                    and for auditors; everyone else is refused.",
            }, {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "GET Patient/{id}/$everything: the patient's whole \
                    compartment (current versions) in one searchset Bundle, each resource \
                    decided like a read; no parameters, no paging, at most 10000 resources.",
            }, {
                "name": "export",
                "definition": "urn:phivault:OperationDefinition/Patient-export",
                "documentation": "GET Patient/{id}/$export[?recipient=age1...]: the patient's \
                    own portable package (application/fhir+ndjson: a manifest, the \
                    compartment, their Consents, their access log as AuditEvents), optionally \
                    encrypted to age recipients. For that patient's own session only.",
            }, {
                "name": "request-correction",
                "definition": "urn:phivault:OperationDefinition/Patient-request-correction",
                "documentation": "POST Patient/{id}/$request-correction with a Parameters \
                    body (target: valueReference into the patient's record; description: \
                    valueString): records a Task (status requested, code task-code#change) \
                    for staff; the target is not changed. For that patient's own session only.",
            }, {
                "name": "request-erasure",
                "definition": "urn:phivault:OperationDefinition/Patient-request-erasure",
                "documentation": "POST Patient/{id}/$request-erasure: records a Task (status \
                    requested, code urn:phivault:task#erasure) for staff; an admin then \
                    erases with $erase. For that patient's own session only.",
            }, {
                "name": "erase",
                "definition": "urn:phivault:OperationDefinition/Patient-erase",
                "documentation": "POST Patient/{id}/$erase: erases the patient by \
                    crypto-shredding (their data key destroyed, recorded in the erasure \
                    ledger and the audit trail) and answers a signed erasure certificate as a \
                    Parameters resource; afterwards every interaction on the patient answers \
                    410 or nothing. Admins, in their own session, only.",
            }]),
        );
    }
    resources.push(audit_event_entry());
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
                values): parameters match by equality, and date ranges (prefixes eq, ne, gt, \
                lt, ge, le, sa, eb) by the fewest year/month/day tokens covering the range, so \
                the index reveals no order; _lastUpdated compares the write time. No \
                :contains, no _include. Paging uses _count (default 50, at most \
                1000: a larger value is reduced to 1000 with a warning entry; 0 gives the \
                total only) and _offset; _summary=count gives the total only; _total=none \
                leaves the total out (estimate and accurate give it exactly). Every FHIR R4 resource type is stored but Parameters, Bundle \
                (transactions and batches are processed at the base URL), Binary, \
                OperationOutcome, and AuditEvent (the audit trail, read-only). A resource of \
                a Patient-compartment type must name exactly one patient as Patient/{id} \
                (422 otherwise); directory types must not reference a Patient. Each type \
                lists the standard search parameters it serves (number and quantity \
                parameters with prefixes over bucket tokens, like dates); composite and \
                special parameters, and those whose expression is not evaluated, are \
                refused with 400. HTTP: JSON only (an Accept admitting no JSON type, or a \
                _format other than json, answers 406); transactions and batches at [base] and \
                [base]/; conditional read with If-None-Match (the version ETag, W/\"n\") or \
                If-Modified-Since answers 304 after the read is decided and audited like any \
                read; Prefer: return=minimal|representation|OperationOutcome on create, \
                update, transaction and batch (per written entry), echoed in \
                Preference-Applied; Prefer: handling=lenient on search; an update whose body \
                id is absent or differs from the URL's answers 400; references to this \
                server's own absolute URLs are stored relative; references to resources that \
                do not exist are stored as written (no referential integrity). \
                _summary=true|text|data and _elements return subsets tagged SUBSETTED (see \
                each type's searchParam).",
            "security": security(base_url),
            "resource": resources,
            // A result parameter for every type: the order of the searchset.
            "searchParam": [{
                "name": "_sort",
                "type": "special",
                "documentation": SORT_DOCUMENTATION,
            }],
            "interaction": [
                { "code": "transaction" },
                { "code": "batch" },
            ],
            "operation": bulk_operations(),
        }],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn security_is_described() {
        let s = security("https://h:1/fhir");
        assert_eq!(s["cors"], false);
        assert_eq!(s["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let uris: Vec<(&str, &str)> = s["extension"][0]["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["url"].as_str().unwrap(), e["valueUri"].as_str().unwrap()))
            .collect();
        for (name, uri) in [
            ("authorize", "https://h:1/oauth/authorize"),
            ("token", "https://h:1/oauth/token"),
            ("revoke", "https://h:1/oauth/revoke"),
            ("introspect", "https://h:1/oauth/introspect"),
        ] {
            assert!(uris.contains(&(name, uri)), "{name}");
        }
        let d = s["description"].as_str().unwrap_or_default();
        for word in [
            "TLS",
            "Bearer",
            "Cedar",
            "default deny",
            "X-Purpose-Of-Use",
            "labels",
            "Break-the-glass",
        ] {
            assert!(d.contains(word), "{word}");
        }
    }

    #[test]
    fn every_patient_operation_route_is_declared() {
        let statement = capability_statement("https://h:1/fhir");
        let patient = statement["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Patient")
            .unwrap();
        let declared: Vec<&str> = patient["operation"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["name"].as_str())
            .collect();
        let routes: Vec<&str> = crate::ROUTES
            .iter()
            .filter_map(|(_, path)| path.strip_prefix("/fhir/Patient/{id}/$"))
            .collect();
        assert!(routes.contains(&"erase"), "{routes:?}");
        for op in routes {
            assert!(
                declared.contains(&op),
                "{op} is not in the CapabilityStatement"
            );
        }
    }

    #[test]
    fn declares_the_bulk_export_routes() {
        let statement = capability_statement("https://h:1/fhir");
        let ops = statement["rest"][0]["operation"].as_array().unwrap();
        for (name, route) in [
            ("export", "/fhir/$export"),
            ("patient-export", "/fhir/Patient/$export"),
            ("group-export", "/fhir/Group/{id}/$export"),
        ] {
            let op = ops.iter().find(|o| o["name"] == name).unwrap();
            assert!(
                op["definition"]
                    .as_str()
                    .unwrap()
                    .starts_with("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/")
            );
            assert!(crate::ROUTES.contains(&("GET", route)), "{route}");
        }
    }

    #[test]
    fn states_the_http_details_served() {
        let statement = capability_statement("https://h:1/fhir");
        assert_eq!(statement["format"], json!(["json"]));
        let rest = &statement["rest"][0];
        assert_eq!(rest["searchParam"][0]["name"], "_sort");
        let sort = rest["searchParam"][0]["documentation"].as_str().unwrap();
        assert!(sort.contains("10,000") && sort.contains("audit"), "{sort}");
        assert_eq!(
            phivault_fhir::MAX_SORTED,
            10_000,
            "the documentation states the cap"
        );
        for r in rest["resource"].as_array().unwrap() {
            let expected = if r["type"] == "AuditEvent" {
                "not-supported"
            } else {
                "full-support"
            };
            assert_eq!(r["conditionalRead"], expected, "{}", r["type"]);
        }
        let doc = rest["documentation"].as_str().unwrap();
        for phrase in ["406", "[base]/", "If-None-Match", "return=minimal", "304"] {
            assert!(doc.contains(phrase), "{phrase}");
        }
    }

    #[test]
    fn no_unimplemented_claims() {
        // search_params may not be available in every build of the fhir crate yet; the
        // top-level shape does not depend on it.
        let kinds = [
            SearchParamKind::String,
            SearchParamKind::Token,
            SearchParamKind::Reference,
            SearchParamKind::Date,
            SearchParamKind::Uri,
            SearchParamKind::Number,
            SearchParamKind::Quantity,
        ];
        for k in kinds {
            assert_ne!(kind_code(k), "special");
            assert!(kind_documentation(k).contains("blind index"));
        }
    }

    #[test]
    fn lists_exactly_the_stored_types_and_served_parameters() {
        let statement = capability_statement("https://h:1/fhir");
        let resources = statement["rest"][0]["resource"].as_array().unwrap();
        let types: Vec<&str> = resources
            .iter()
            .filter_map(|r| r["type"].as_str())
            .collect();
        assert_eq!(types.len(), ResourceType::ALL.len() + 1);
        for t in ResourceType::ALL {
            assert!(types.contains(t), "{t}");
        }
        for t in ["Bundle", "Parameters", "Binary", "OperationOutcome"] {
            assert!(!types.contains(&t), "{t}");
        }
        for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
            let rtype = ResourceType::parse(r["type"].as_str().unwrap()).unwrap();
            let served: Vec<&str> = search_params(rtype).iter().map(|d| d.name).collect();
            let unsupported = phivault_fhir::unsupported_params(rtype);
            for p in r["searchParam"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                assert!(
                    ["_id", "_lastUpdated", "_summary", "_elements"].contains(&name)
                        || served.contains(&name),
                    "{rtype}.{name}"
                );
                assert!(
                    !unsupported.iter().any(|u| u.name == name),
                    "{rtype}.{name}"
                );
                assert_ne!(p["type"], "special");
            }
        }
        let names = |t: &str| -> Vec<String> {
            resources.iter().find(|r| r["type"] == t).unwrap()["searchParam"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(names("Claim").contains(&"patient".to_owned()));
        assert!(names("ExplanationOfBenefit").contains(&"patient".to_owned()));
        assert!(names("Observation").contains(&"code".to_owned()));
        for (t, p) in [
            ("Observation", "value-quantity"),
            ("Observation", "component-value-quantity"),
            ("RiskAssessment", "probability"),
        ] {
            assert!(names(t).contains(&p.to_owned()), "{t}.{p}");
        }
        assert!(!names("Observation").contains(&"code-value-quantity".to_owned()));
        assert!(!names("Location").contains(&"near".to_owned()));

        // Every listed include is one a search accepts, and the common ones are listed.
        let list = |t: &str, field: &str| -> Vec<String> {
            resources.iter().find(|r| r["type"] == t).unwrap()[field]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert!(list("Observation", "searchInclude").contains(&"Observation:subject".to_owned()));
        let patient_rev = list("Patient", "searchRevInclude");
        for rev in [
            "Observation:subject",
            "Provenance:target",
            "Encounter:patient",
        ] {
            assert!(patient_rev.contains(&rev.to_owned()), "{rev}");
        }
        assert!(!patient_rev.contains(&"Observation:code".to_owned()));
        for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
            let rtype = ResourceType::parse(r["type"].as_str().unwrap()).unwrap();
            for (field, name) in [
                ("searchInclude", "_include"),
                ("searchRevInclude", "_revinclude"),
            ] {
                for v in r[field].as_array().unwrap() {
                    let pairs = [(name.to_owned(), v.as_str().unwrap().to_owned())];
                    assert!(
                        phivault_fhir::split_includes(rtype, &pairs).is_ok(),
                        "{rtype} {name}={v}"
                    );
                }
            }
        }
    }
}
