//! Audit entries and the hash chain.

use phivault_crypto::MacKey;
use serde::{Deserialize, Serialize};

/// Domain separation of the unkeyed chain hash (`"phivault-audit/v1"`), the chain of entries
/// written before the keyed chain.
pub const CHAIN_DOMAIN: &[u8] = b"phivault-audit/v1";

/// Domain separation of the keyed chain (`"phivault-audit/v2"`): of an entry's tag and of its
/// hash.
pub const KEYED_CHAIN_DOMAIN: &[u8] = b"phivault-audit/v2";

/// Domain separation of the tag recording where the keyed chain starts.
const KEYED_FROM_DOMAIN: &[u8] = b"phivault-audit/keyed-from/v2";

/// The `prev_hash` of the first entry: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A user account.
    User,
    /// An OAuth2 client (backend app).
    Client,
    /// An unauthenticated caller (failed login, refused request).
    Anonymous,
    /// The server itself.
    System,
}

/// How the access ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Permitted and done.
    Allowed,
    /// Refused by authentication or policy.
    Denied,
    /// Failed on our side.
    Error,
}

/// One audit entry. Ids only, never PHI values: no names, no resource content, no search
/// values, no break-the-glass reasons.
///
/// The canonical bytes are the compact `serde_json` serialization of this struct, fields in
/// this order: `seq, time, actor_id, actor_kind, role, purpose, break_glass, action,
/// resource_type, resource_id, patient_id, outcome, source_address, request_id, actor_ref,
/// patients, refusals, configuration, labels, alert`; absent optional values are `null`,
/// enums are lower-case strings, except that `actor_ref`, `refusals`, `configuration` and
/// `alert` are left out when absent and `patients` and `labels` when empty (so entries
/// written before they existed keep their bytes). Unknown fields are refused, and so is a
/// `patients` or `labels` list that is not strictly ascending, or a `patients` list that
/// repeats `patient_id` (one content, one spelling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the trail, from 1 (assigned by the log on append).
    pub seq: u64,
    /// Unix milliseconds.
    pub time: i64,
    /// User id, client id, or `-` when unknown.
    pub actor_id: String,
    /// What kind of actor.
    pub actor_kind: ActorKind,
    /// Role name of a user.
    pub role: Option<String>,
    /// Purpose of use (e.g. `TREAT`).
    pub purpose: Option<String>,
    /// Whether break-the-glass was in force.
    pub break_glass: bool,
    /// `read`, `search`, `create`, `update`, `delete`, `export`, `login`, ...
    pub action: String,
    /// FHIR resource type.
    pub resource_type: Option<String>,
    /// FHIR resource id.
    pub resource_id: Option<String>,
    /// Patient compartment concerned.
    pub patient_id: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// Client address.
    pub source_address: Option<String>,
    /// Request correlation id.
    pub request_id: String,
    /// Who the actor was at the time, as an identifier that later edits cannot change: the
    /// exact version of the Practitioner their account was linked to
    /// (`Practitioner/{id}/_history/{version}`; versions are immutable, an edit makes a new
    /// one). The access log names the actor from that version. Absent for actors without a
    /// linked Practitioner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_ref: Option<String>,
    /// Every other patient the request concerned: whose data its response returned (a search,
    /// a Bundle, `$everything`) or who was decided on, besides `patient_id`. Ids only, strictly
    /// ascending. With `patient_id`, these are the patients whose access log shows the entry
    /// ([`AuditEntry::patients_concerned`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// Present only on a summary of refused unauthenticated requests
    /// ([`AuditEntry::refusal_summary`]): how many, when, and on which routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<RefusalSummary>,
    /// Present only on a de-identified (research) export: the SHA-256 (hex) of the
    /// de-identification configuration it ran with, as its report states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<String>,
    /// The sensitivity labels (security-label codes such as `PSY`, `HIV`, `ETH`) of the
    /// resources the request decided on or returned, strictly ascending: the data classes a
    /// breach report counts and the labelled-access alert looks at. Codes only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Present only on an alert raised by a detection rule ([`AlertRecord`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertRecord>,
    /// The OAuth2 client (app) a person acted through, when the request came with an access
    /// token a person authorized for that app: the actor is the person, this names the app.
    /// Absent for a person's own session and for an app acting on its own (then the app is
    /// the actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_client: Option<String>,
}

/// The action of an alert entry (actor `phivault`, kind system).
pub const ALERT_ACTION: &str = "alert";

/// The action of the entry recording that an alert reached the webhook; its `request_id` is
/// the alert's.
pub const ALERT_DELIVERED_ACTION: &str = "alert delivered";

/// What a detection rule saw: ids and counts only, never a value from a record.
///
/// Canonical form: fields in this order; `subject_kind` is `user`, `client`, `anonymous`,
/// `system` or `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRecord {
    /// The configured rule's name.
    pub rule: String,
    /// The rule's kind (`distinct_patients`, `off_hours`, ...).
    pub kind: String,
    /// Whom the alert is about: an actor id, or a client address.
    pub subject: String,
    /// What `subject` is.
    pub subject_kind: String,
    /// What was counted in the window (distinct patients, denials, ...).
    pub count: u64,
    /// The rule's threshold the count passed (0 for rules without one).
    pub threshold: u64,
    /// The window the count covers (unix ms, inclusive start).
    pub from: i64,
    /// End of the window (unix ms, the time of the entry that raised the alert).
    pub to: i64,
    /// The first and the last entry (seq) the rule counted: the evidence.
    pub first_seq: u64,
    /// The entry that raised the alert.
    pub last_seq: u64,
}

/// The action of a summary entry of refused unauthenticated requests.
pub const REFUSALS_ACTION: &str = "unauthenticated refusals";

/// The most routes (and, for the overflow summary, addresses) a summary names; beyond them it
/// still counts every request.
pub const SUMMARY_SAMPLE: usize = 16;

/// Refused unauthenticated requests (no, malformed, unknown, expired or revoked bearer token)
/// from one client address, or from the addresses past the tracked ones, in one window: the
/// evidence of a flood without an entry per request. The first such request of an address in
/// a window has its own full entry; the summary's `count` includes it.
///
/// Canonical form: fields in this order, `routes` and `addresses` strictly ascending, at most
/// [`SUMMARY_SAMPLE`] each; `addresses` left out when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalSummary {
    /// How many requests were refused in the window (at least 2).
    pub count: u64,
    /// Unix milliseconds of the first and the last of them.
    pub first: i64,
    /// Unix milliseconds of the last.
    pub last: i64,
    /// The routes they asked for (`METHOD /route/template`, never a raw path), ascending;
    /// the first [`SUMMARY_SAMPLE`] distinct ones.
    pub routes: Vec<String>,
    /// For the overflow summary (addresses past the tracked number): a sample of the client
    /// addresses, ascending, the first [`SUMMARY_SAMPLE`] distinct ones. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Whether more distinct routes or addresses were seen than the lists name.
    pub truncated: bool,
}

impl RefusalSummary {
    fn is_canonical(&self) -> bool {
        let ascending = |v: &[String]| v.windows(2).all(|w| w[0] < w[1]);
        ascending(&self.routes)
            && ascending(&self.addresses)
            && self.routes.len() <= SUMMARY_SAMPLE
            && self.addresses.len() <= SUMMARY_SAMPLE
    }
}

impl AuditEntry {
    /// The canonical bytes (see the type's documentation).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses canonical bytes, refusing anything that does not re-serialize to the same bytes
    /// or whose `patients` list is not in its one canonical form.
    pub fn from_canonical(bytes: &[u8]) -> Option<AuditEntry> {
        let entry: AuditEntry = serde_json::from_slice(bytes).ok()?;
        let ascending = entry.patients.windows(2).all(|w| w[0] < w[1]);
        let repeats = entry
            .patient_id
            .as_ref()
            .is_some_and(|p| entry.patients.contains(p));
        if !ascending || repeats {
            return None;
        }
        if entry.refusals.as_ref().is_some_and(|r| !r.is_canonical()) {
            return None;
        }
        if !entry.labels.windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        match entry.canonical_bytes() {
            Ok(again) if again == bytes => Some(entry),
            _ => None,
        }
    }

    /// Sets `patients` to the patients of `concerned` other than `patient_id`, in canonical
    /// form (ascending, without repeats).
    pub fn set_patients<I, S>(&mut self, concerned: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut all: Vec<String> = concerned
            .into_iter()
            .map(Into::into)
            .filter(|p| self.patient_id.as_ref() != Some(p))
            .collect();
        all.sort_unstable();
        all.dedup();
        self.patients = all;
    }

    /// Every patient the entry concerns (`patient_id` and `patients`), ascending, without
    /// repeats: the patients whose access log shows it, as the store indexes it.
    pub fn patients_concerned(&self) -> Vec<String> {
        let mut all = self.patients.clone();
        if let Some(p) = &self.patient_id {
            all.push(p.clone());
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The summary entry of refused unauthenticated requests from `source_address` (`None`:
    /// the overflow summary, whose addresses are in `summary`), written at `time` (unix ms)
    /// under `request_id`: actor `anonymous`, action [`REFUSALS_ACTION`], outcome denied.
    pub fn refusal_summary(
        summary: RefusalSummary,
        source_address: Option<String>,
        request_id: String,
        time: i64,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time,
            actor_id: "anonymous".to_owned(),
            actor_kind: ActorKind::Anonymous,
            role: None,
            purpose: None,
            break_glass: false,
            action: REFUSALS_ACTION.to_owned(),
            resource_type: None,
            resource_id: None,
            patient_id: None,
            outcome: Outcome::Denied,
            source_address,
            request_id,
            actor_ref: None,
            patients: Vec::new(),
            refusals: Some(summary),
            configuration: None,
            labels: Vec::new(),
            alert: None,
            via_client: None,
        }
    }

    /// Whether the entry concerns `patient` ([`AuditEntry::patients_concerned`]).
    pub fn concerns(&self, patient: &str) -> bool {
        self.patient_id.as_deref() == Some(patient) || self.patients.iter().any(|p| p == patient)
    }
}

impl Outcome {
    /// `allowed`, `denied` or `error` (as in the canonical bytes).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// The FHIR `AuditEvent.action` code of an action: `C` create, `R` read (reads, searches,
/// history), `U` update, `D` delete, `E` execute (everything else: logins, operations, bundles,
/// administration).
///
/// Actions are either a request's `METHOD /route/template` (the server), a write recorded in a
/// transaction by its kind (`create`, `update`, `delete`), or a command of the CLI (`cli ...`).
pub fn action_code(action: &str) -> &'static str {
    let (verb, route) = action.split_once(' ').unwrap_or((action, ""));
    let fhir = route.starts_with("/fhir/");
    match verb {
        "create" => "C",
        "read" | "search" => "R",
        "update" => "U",
        "delete" => "D",
        "GET" | "HEAD" if fhir => "R",
        "POST" if fhir && route.ends_with("/_search") => "R",
        "POST" if route == "/fhir/{type}" => "C",
        "PUT" | "PATCH" if fhir => "U",
        "DELETE" if fhir => "D",
        _ => "E",
    }
}

impl AuditEntry {
    /// The FHIR action code of this entry ([`action_code`]).
    pub fn action_code(&self) -> &'static str {
        action_code(&self.action)
    }
}

/// The hash of an unkeyed entry: `SHA-256("phivault-audit/v1" || prev_hash || canonical)`.
pub fn entry_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    crate::sha256(&[CHAIN_DOMAIN, prev_hash, canonical])
}

/// The tag of a keyed entry under the audit chain key: HMAC-SHA256 over the length-prefixed
/// parts `"phivault-audit/v2"`, `prev_hash`, `canonical` ([`MacKey::tag`]).
pub fn chain_tag(key: &MacKey, prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    key.tag(&[KEYED_CHAIN_DOMAIN, prev_hash, canonical])
}

/// The hash of a keyed entry: `SHA-256("phivault-audit/v2" || prev_hash || tag ||
/// canonical)`, `tag` its [`chain_tag`]. Anyone can recompute it from the stored tag (backup
/// inspection, inclusion proofs); only the holder of the master key can make a tag for
/// another body or another place in the chain.
pub fn keyed_entry_hash(prev_hash: &[u8; 32], tag: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    crate::sha256(&[KEYED_CHAIN_DOMAIN, prev_hash, tag, canonical])
}

/// The tag recording that the keyed chain of `tenant` starts at entry `seq`: HMAC-SHA256 over
/// `"phivault-audit/keyed-from/v2"`, `tenant`, `seq` (u64 big-endian).
pub fn keyed_from_tag(key: &MacKey, tenant: &str, seq: u64) -> [u8; 32] {
    key.tag(&[KEYED_FROM_DOMAIN, tenant.as_bytes(), &seq.to_be_bytes()])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn sample(seq: u64) -> AuditEntry {
        AuditEntry {
            seq,
            time: 1_700_000_000_000,
            actor_id: "u1".to_owned(),
            actor_kind: ActorKind::User,
            role: Some("clinician".to_owned()),
            purpose: None,
            break_glass: false,
            action: "read".to_owned(),
            resource_type: Some("Patient".to_owned()),
            resource_id: Some("p1".to_owned()),
            patient_id: Some("p1".to_owned()),
            outcome: Outcome::Allowed,
            source_address: None,
            request_id: "r1".to_owned(),
            actor_ref: None,
            patients: Vec::new(),
            refusals: None,
            configuration: None,
            labels: Vec::new(),
            alert: None,
            via_client: None,
        }
    }

    #[test]
    fn refusal_summaries_are_canonical_and_round_trip() {
        let summary = RefusalSummary {
            count: 3,
            first: 1,
            last: 2,
            routes: vec!["GET /a".to_owned(), "GET /b".to_owned()],
            addresses: Vec::new(),
            truncated: false,
        };
        let e = AuditEntry::refusal_summary(summary, Some("192.0.2.1".to_owned()), "r".into(), 5);
        let bytes = e.canonical_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.ends_with(
                "\"refusals\":{\"count\":3,\"first\":1,\"last\":2,\
                 \"routes\":[\"GET /a\",\"GET /b\"],\"truncated\":false}}"
            ),
            "{text}"
        );
        assert_eq!(AuditEntry::from_canonical(&bytes), Some(e));
        assert_eq!(action_code(REFUSALS_ACTION), "E");
        // Routes out of order: not the one canonical form.
        let unordered = text.replace("\"GET /a\",\"GET /b\"", "\"GET /b\",\"GET /a\"");
        assert_eq!(AuditEntry::from_canonical(unordered.as_bytes()), None);
        // An entry without a summary keeps the bytes it had before summaries existed.
        assert!(
            !String::from_utf8(sample(1).canonical_bytes().unwrap())
                .unwrap()
                .contains("refusals")
        );
    }

    #[test]
    fn canonical_form_is_fixed() {
        let bytes = sample(3).canonical_bytes().unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "{\"seq\":3,\"time\":1700000000000,\"actor_id\":\"u1\",\"actor_kind\":\"user\",\
             \"role\":\"clinician\",\"purpose\":null,\"break_glass\":false,\"action\":\"read\",\
             \"resource_type\":\"Patient\",\"resource_id\":\"p1\",\"patient_id\":\"p1\",\
             \"outcome\":\"allowed\",\"source_address\":null,\"request_id\":\"r1\"}"
        );
        assert_eq!(AuditEntry::from_canonical(&bytes), Some(sample(3)));
        // Same content, other spelling: refused.
        let spaced = String::from_utf8(bytes).unwrap().replace(',', ", ");
        assert_eq!(AuditEntry::from_canonical(spaced.as_bytes()), None);
    }

    #[test]
    fn patients_list_is_canonical_and_optional() {
        let mut e = sample(4);
        e.set_patients(["p3", "p1", "p2", "p3"]);
        assert_eq!(e.patients, vec!["p2".to_owned(), "p3".to_owned()]);
        assert_eq!(e.patients_concerned(), vec!["p1", "p2", "p3"]);
        assert!(e.concerns("p3") && e.concerns("p1") && !e.concerns("p4"));
        let bytes = e.canonical_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with(",\"request_id\":\"r1\",\"patients\":[\"p2\",\"p3\"]}"));
        assert_eq!(AuditEntry::from_canonical(&bytes), Some(e.clone()));
        // Out of order, repeated, or repeating patient_id: not canonical.
        for bad in [r#"["p3","p2"]"#, r#"["p2","p2"]"#, r#"["p1","p2"]"#, "[]"] {
            let other = text.replace(r#"["p2","p3"]"#, bad);
            assert_eq!(AuditEntry::from_canonical(other.as_bytes()), None, "{bad}");
        }
        // The actor's Practitioner version goes before the list.
        let mut with_ref = e.clone();
        with_ref.actor_ref = Some("Practitioner/pr1/_history/2".to_owned());
        let text = String::from_utf8(with_ref.canonical_bytes().unwrap()).unwrap();
        assert!(text.ends_with(
            ",\"actor_ref\":\"Practitioner/pr1/_history/2\",\"patients\":[\"p2\",\"p3\"]}"
        ));
        assert_eq!(AuditEntry::from_canonical(text.as_bytes()), Some(with_ref));
        // A research export's configuration hash goes last, and only when present.
        let mut research = e.clone();
        research.configuration = Some("ab12".to_owned());
        let text = String::from_utf8(research.canonical_bytes().unwrap()).unwrap();
        assert!(text.ends_with(",\"patients\":[\"p2\",\"p3\"],\"configuration\":\"ab12\"}"));
        assert_eq!(AuditEntry::from_canonical(text.as_bytes()), Some(research));
        // Without other patients, the bytes are those of an entry from before the list.
        assert!(
            !String::from_utf8(sample(4).canonical_bytes().unwrap())
                .unwrap()
                .contains("patients")
        );
    }

    #[test]
    fn labels_are_canonical_and_optional() {
        let mut e = sample(5);
        e.labels = vec!["HIV".to_owned(), "PSY".to_owned()];
        let bytes = e.canonical_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.ends_with(",\"request_id\":\"r1\",\"labels\":[\"HIV\",\"PSY\"]}"),
            "{text}"
        );
        assert_eq!(AuditEntry::from_canonical(&bytes), Some(e.clone()));
        // After the other patients and the configuration.
        let mut more = e;
        more.set_patients(["p2"]);
        more.configuration = Some("ab12".to_owned());
        let text = String::from_utf8(more.canonical_bytes().unwrap()).unwrap();
        assert!(
            text.ends_with(
                ",\"patients\":[\"p2\"],\"configuration\":\"ab12\",\"labels\":[\"HIV\",\"PSY\"]}"
            ),
            "{text}"
        );
        assert_eq!(AuditEntry::from_canonical(text.as_bytes()), Some(more));
        // Out of order, repeated, or an empty list spelled out: not the one canonical form.
        let text = String::from_utf8(bytes).unwrap();
        for bad in [r#"["PSY","HIV"]"#, r#"["HIV","HIV"]"#, "[]"] {
            let other = text.replace(r#"["HIV","PSY"]"#, bad);
            assert_ne!(other, text);
            assert_eq!(AuditEntry::from_canonical(other.as_bytes()), None, "{bad}");
        }
        // Without labels: exactly the bytes of an entry from before the field existed.
        let plain = String::from_utf8(sample(5).canonical_bytes().unwrap()).unwrap();
        assert_eq!(
            plain,
            "{\"seq\":5,\"time\":1700000000000,\"actor_id\":\"u1\",\"actor_kind\":\"user\",\
             \"role\":\"clinician\",\"purpose\":null,\"break_glass\":false,\"action\":\"read\",\
             \"resource_type\":\"Patient\",\"resource_id\":\"p1\",\"patient_id\":\"p1\",\
             \"outcome\":\"allowed\",\"source_address\":null,\"request_id\":\"r1\"}"
        );
        assert!(!plain.contains("labels"));
        assert_eq!(
            AuditEntry::from_canonical(plain.as_bytes()),
            Some(sample(5))
        );
    }

    #[test]
    fn action_codes() {
        assert_eq!(action_code("GET /fhir/{type}/{id}"), "R");
        assert_eq!(action_code("GET /fhir/{type}"), "R");
        assert_eq!(action_code("POST /fhir/{type}/_search"), "R");
        assert_eq!(action_code("POST /fhir/{type}"), "C");
        assert_eq!(action_code("PUT /fhir/{type}/{id}"), "U");
        assert_eq!(action_code("DELETE /fhir/{type}/{id}"), "D");
        assert_eq!(action_code("POST /fhir"), "E");
        assert_eq!(action_code("POST /auth/login"), "E");
        assert_eq!(action_code("GET /audit/checkpoint"), "E");
        assert_eq!(action_code("create"), "C");
        assert_eq!(action_code("delete"), "D");
        assert_eq!(action_code("cli import"), "E");
    }

    #[test]
    fn chain_hash_binds_prev_and_body() {
        let body = sample(1).canonical_bytes().unwrap();
        let h = entry_hash(&GENESIS_HASH, &body);
        assert_ne!(h, entry_hash(&[1u8; 32], &body));
        let mut other = body.clone();
        other[5] ^= 1;
        assert_ne!(h, entry_hash(&GENESIS_HASH, &other));
        let mut expect = CHAIN_DOMAIN.to_vec();
        expect.extend_from_slice(&GENESIS_HASH);
        expect.extend_from_slice(&body);
        assert_eq!(h, crate::sha256(&[&expect]));
    }
}
