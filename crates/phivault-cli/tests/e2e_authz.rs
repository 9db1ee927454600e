//! Authorization over HTTPS (DESIGN.md invariant 5, default deny), on every backend: the
//! matrix of principals x purposes of use x interactions x resources, each cell's expected
//! answer written out in [`MATRIX`] and asserted; the OWASP access-control cases (another
//! patient's id in the URL, in a transaction, in a history, search totals, `_include`);
//! break-the-glass and its review list; TOTP (wrong, old, replayed codes; recovery codes;
//! enrolment-only sessions); account lockout; OAuth2 client credentials and revocation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use phivault_testkit::fixtures::{self, ACT_CODE, BundleBuilder, LOINC, coding};
use phivault_testkit::{
    Account, Api, Marker, Resp, Server, backends, query, random_username, totp_code, totp_step,
    unix_now,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// The matrix again through SMART App Launch tokens.
#[path = "e2e_authz/smart.rs"]
mod smart;

// ---------------------------------------------------------------------------------------
// The matrix

/// The principals of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// Clinician with a grant on P1 (no label grants): P1 is on their care team.
    Care,
    /// Clinician with a grant on P1 including the PSY label (also writes the PSY fixtures).
    CarePsy,
    /// Clinician without any relationship.
    Other,
    /// Patient user linked to P1.
    PatientP1,
    /// Patient user linked to P2.
    PatientP2,
    Admin,
    Auditor,
    Researcher,
    /// OAuth2 client `patient/Observation.rs`, launch patient P1.
    AppP1,
    /// OAuth2 client `system/*.cruds` (the kit's system app).
    System,
}

impl Who {
    fn parse(s: &str) -> Who {
        match s {
            "care" => Who::Care,
            "care+psy" => Who::CarePsy,
            "other" => Who::Other,
            "pat-p1" => Who::PatientP1,
            "pat-p2" => Who::PatientP2,
            "admin" => Who::Admin,
            "auditor" => Who::Auditor,
            "research" => Who::Researcher,
            "app-p1" => Who::AppP1,
            "system" => Who::System,
            _ => panic!("unknown principal {s} in the table"),
        }
    }

    fn is_clinician(self) -> bool {
        matches!(self, Who::Care | Who::CarePsy | Who::Other)
    }
}

/// Purposes of use, in the order the rows run (break-the-glass last: a recorded claim lasts an
/// hour and applies to later ETREAT requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Purpose {
    Treat,
    PatientRequest,
    Research,
    Emergency,
    BreakGlass,
}

impl Purpose {
    const ALL: [Purpose; 5] = [
        Purpose::Treat,
        Purpose::PatientRequest,
        Purpose::Research,
        Purpose::Emergency,
        Purpose::BreakGlass,
    ];

    fn parse(s: &str) -> Purpose {
        match s {
            "TREAT" => Purpose::Treat,
            "PATRQT" => Purpose::PatientRequest,
            "HRESCH" => Purpose::Research,
            "ETREAT" => Purpose::Emergency,
            "ETREAT+BTG" => Purpose::BreakGlass,
            _ => panic!("unknown purpose {s} in the table"),
        }
    }

    fn code(self) -> &'static str {
        match self {
            Purpose::Treat => "TREAT",
            Purpose::PatientRequest => "PATRQT",
            Purpose::Research => "HRESCH",
            Purpose::Emergency | Purpose::BreakGlass => "ETREAT",
        }
    }
}

/// The resources (columns within each interaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Res {
    P1,
    P2,
    /// Unlabelled Observation of P1.
    O1,
    /// Unlabelled Observation of P2.
    O2,
    /// PSY-labelled Observation of P1.
    Psy,
}

const RESOURCES: [Res; 5] = [Res::P1, Res::P2, Res::O1, Res::O2, Res::Psy];

/// The interactions (groups of a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Read,
    SearchByPatient,
    SearchByCode,
    Create,
    Update,
    Delete,
    History,
    Transaction,
}

const OPS: [Op; 8] = [
    Op::Read,
    Op::SearchByPatient,
    Op::SearchByCode,
    Op::Create,
    Op::Update,
    Op::Delete,
    Op::History,
    Op::Transaction,
];

/// One cell's expected answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `A`: allowed: 200 (201 for create, 200/204 for delete); a search lists and counts the
    /// resource.
    Allow,
    /// `d`: denied: 403 with an OperationOutcome (`forbidden`).
    Deny,
    /// `h`: the search is allowed (200) but the resource is neither listed nor counted.
    Hidden,
    /// `x`: hidden or denied: a search limited to a patient out of reach may be refused as a
    /// whole (403) or answered empty (200); both reveal nothing.
    HiddenOrDeny,
    /// `-`: not applicable (creating or deleting the Patient fixtures themselves).
    NotApplicable,
}

impl Expect {
    fn parse(c: char) -> Expect {
        match c {
            'A' => Expect::Allow,
            'd' => Expect::Deny,
            'h' => Expect::Hidden,
            'x' => Expect::HiddenOrDeny,
            '-' => Expect::NotApplicable,
            _ => panic!("unknown cell {c:?} in the table"),
        }
    }
}

/// The expected answer of every cell, derived from the policy semantics
/// (crates/phivault-policy/policies/default.cedar and DESIGN.md "Authorization"):
///
/// - each role asserts only its purposes of use (built-in: clinicians TREAT and its
///   specializations, patients PATRQT, apps TREAT/HPAYMT/HOPERAT/HRESCH/PUBHLTH, never
///   ETREAT); any other purpose is refused whole (403);
/// - clinicians: their care team's patients (here: a grant on P1), for TREAT; delete for TREAT
///   only; HRESCH and PATRQT give them nothing; ETREAT without a claim reaches no patient (a
///   search is allowed and shows nothing); break-the-glass (ETREAT with
///   `X-Break-Glass-Reason`) reads any patient, labels included, and writes only where the
///   care team could; a search across patients is allowed and each hit decided on its own;
/// - patients: reads of their own compartment (labels included) with PATRQT; no writes but
///   Consent and Task (not in this matrix);
/// - admin, auditor, researcher: no clinical data at all;
/// - apps: exactly their SMART scopes (`patient/` scopes reach the launch patient's
///   compartment only, so a search is limited to it), within consent;
/// - sensitivity labels need an explicit grant (apps never have one), except for a patient's
///   own record and break-the-glass reads;
/// - consent: no Consent resources are recorded, so the default applies: TREAT and ETREAT are
///   permitted, research (HRESCH) is not (research needs the patient's consent); consent does
///   not bind a patient's own access.
///
/// Columns of each group: P1 P2 O1 O2 PSY (PSY = the PSY-labelled Observation of P1).
/// Groups: read, search by patient (`Patient?_id=` / `Observation?patient=`), search by code
/// (`Patient?family=` shared by P1 and P2 / `Observation?code=` shared by the three
/// Observations), create (an Observation like the column's), update (PUT of the current body),
/// delete (of a fresh copy of the column's Observation), history, transaction (one GET entry).
/// Cells: `A` allow, `d` 403, `h` hidden in a 200 search, `x` hidden or 403, `-` n/a.
///
/// Within a row the interactions run in this order, reads first: in the break-the-glass rows
/// the reads record the claims (one per patient, an hour long) that the later searches of the
/// same row rely on.
const MATRIX: &[(&str, &str, &str)] = &[
    //  principal    purpose        read  s-pat s-code create update delete hist  tx
    //                              PpOoS PpOoS PpOoS  PpOoS  PpOoS  PpOoS  PpOoS PpOoS
    (
        "care",
        "TREAT",
        "AdAdd AxAxh AhAhh --Add AdAdd --Add AdAdd AdAdd",
    ),
    (
        "care",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --Add AdAdd --ddd AAAAA AAAAA",
    ),
    (
        "care+psy",
        "TREAT",
        "AdAdA AxAxA AhAhA --AdA AdAdA --AdA AdAdA AdAdA",
    ),
    (
        "care+psy",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --AdA AdAdA --ddd AAAAA AAAAA",
    ),
    (
        "other",
        "TREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --ddd ddddd --ddd AAAAA AAAAA",
    ),
    (
        "pat-p1",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "PATRQT",
        "AdAdA AxAxA AhAhA --ddd ddddd --ddd AdAdA AdAdA",
    ),
    (
        "pat-p1",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "PATRQT",
        "dAdAd xAxAx hAhAh --ddd ddddd --ddd dAdAd dAdAd",
    ),
    (
        "pat-p2",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "TREAT",
        "ddAdd ddAxh ddAhh --ddd ddddd --ddd ddAdd ddAdd",
    ),
    (
        "app-p1",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "HRESCH",
        "ddddd ddxxx ddxxx --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "TREAT",
        "AAAAd AAAAh AAAAh --AAd AAAAd --AAd AAAAd AAAAd",
    ),
    (
        "system",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "HRESCH",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
];

type Table = BTreeMap<(Who, Purpose), BTreeMap<(Op, Res), Expect>>;

/// [`MATRIX`] parsed; every (principal, purpose) has a row, every row every cell.
fn table() -> Table {
    let mut out = Table::new();
    for (who, purpose, cells) in MATRIX {
        let groups: Vec<&str> = cells.split_whitespace().collect();
        assert_eq!(groups.len(), OPS.len(), "row {who} {purpose}: 8 groups");
        let mut row = BTreeMap::new();
        for (op, group) in OPS.iter().zip(groups) {
            let chars: Vec<char> = group.chars().collect();
            assert_eq!(chars.len(), RESOURCES.len(), "row {who} {purpose} {op:?}");
            for (res, c) in RESOURCES.iter().zip(chars) {
                let e = Expect::parse(c);
                let na = matches!(op, Op::Create | Op::Delete) && matches!(res, Res::P1 | Res::P2);
                assert_eq!(
                    e == Expect::NotApplicable,
                    na,
                    "row {who} {purpose} {op:?} {res:?}: `-` exactly where n/a"
                );
                row.insert((*op, *res), e);
            }
        }
        let key = (Who::parse(who), Purpose::parse(purpose));
        assert!(out.insert(key, row).is_none(), "row {who} {purpose} twice");
    }
    assert_eq!(
        out.len(),
        10 * Purpose::ALL.len(),
        "every principal x purpose"
    );
    out
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// The server, its principals and the fixtures of the matrix.
struct World {
    server: Server,
    /// Each principal's API (its token).
    apis: BTreeMap<Who, Api>,
    /// Usernames of the users.
    usernames: BTreeMap<Who, String>,
    /// The users' accounts (passwords, TOTP enrolments), to sign them in again elsewhere.
    accounts: BTreeMap<Who, Account>,
    p1: String,
    p2: String,
    o1: String,
    o2: String,
    psy: String,
    /// The family name shared by P1 and P2.
    family: Marker,
    /// The code shared by O1, O2 and the PSY Observation.
    code: Marker,
    /// The code of the copies made for delete cells (not `code`, so searches by code see
    /// only the three fixtures).
    copy_code: Marker,
    /// The reason sent with break-the-glass requests (a marker: it must never reach the logs).
    reason: Marker,
}

/// The ids of a searchset's entries of `search.mode` `mode`.
fn mode_ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn psy_label() -> Value {
    json!([{ "system": ACT_CODE, "code": "PSY" }])
}

fn observation(patient: &str, code: &Marker, psy: bool) -> Value {
    let mut o = fixtures::observation(
        &format!("Patient/{patient}"),
        coding(Some(LOINC), code.text(), "Authz test"),
        "2024-05-06T07:08:09Z",
    );
    if psy {
        o["meta"] = json!({ "security": psy_label() });
    }
    o
}

impl World {
    async fn new(server: Server) -> World {
        let sys = server.api().clone();
        let family = Marker::name();
        let code = Marker::code("az-");
        let copy_code = Marker::code("ac-");
        let p1 = sys.create(&fixtures::patient(family.text(), "One")).await;
        let p2 = sys.create(&fixtures::patient(family.text(), "Two")).await;
        let o1 = sys.create(&observation(&p1, &code, false)).await;
        let o2 = sys.create(&observation(&p2, &code, false)).await;

        let mut apis = BTreeMap::new();
        let mut usernames = BTreeMap::new();
        let mut accounts = BTreeMap::new();
        let users = [
            (Who::Care, "clinician"),
            (Who::CarePsy, "clinician"),
            (Who::Other, "clinician"),
            (Who::PatientP1, "patient"),
            (Who::PatientP2, "patient"),
            (Who::Admin, "admin"),
            (Who::Auditor, "auditor"),
            (Who::Researcher, "researcher"),
        ];
        for (who, role) in users {
            let username = random_username();
            let password = server.create_user(&username, role).await;
            // Relationships before the first login.
            match who {
                Who::Care => server.grant(&username, &p1, &[], None).await,
                Who::CarePsy => server.grant(&username, &p1, &["PSY"], None).await,
                Who::PatientP1 => server.link_patient(&username, &p1).await,
                Who::PatientP2 => server.link_patient(&username, &p2).await,
                _ => {}
            }
            let account = server.sign_in(&username, role, &password, false).await;
            assert_eq!(
                account.totp.is_some(),
                role != "patient",
                "staff ({role}) must enrol TOTP before anything else; patients need not"
            );
            apis.insert(who, server.api_as(&account.token));
            usernames.insert(who, username);
            accounts.insert(who, account);
        }
        let app = server
            .client_token("patient/Observation.rs", Some(&p1))
            .await;
        apis.insert(Who::AppP1, server.api_as(&app));
        apis.insert(Who::System, sys);

        // The PSY Observation is written by the clinician holding the PSY grant (apps and
        // the system app hold no label grants).
        let psy = apis[&Who::CarePsy]
            .create(&observation(&p1, &code, true))
            .await;
        World {
            server,
            apis,
            usernames,
            accounts,
            p1,
            p2,
            o1,
            o2,
            psy,
            family,
            code,
            copy_code,
            reason: Marker::name(),
        }
    }

    fn id(&self, res: Res) -> &str {
        match res {
            Res::P1 => &self.p1,
            Res::P2 => &self.p2,
            Res::O1 => &self.o1,
            Res::O2 => &self.o2,
            Res::Psy => &self.psy,
        }
    }

    fn path(&self, res: Res) -> String {
        match res {
            Res::P1 | Res::P2 => format!("Patient/{}", self.id(res)),
            _ => format!("Observation/{}", self.id(res)),
        }
    }

    /// The patient whose compartment holds `res`.
    fn patient_of(&self, res: Res) -> &str {
        match res {
            Res::P1 | Res::O1 | Res::Psy => &self.p1,
            Res::P2 | Res::O2 => &self.p2,
        }
    }

    /// A request as `who` with `purpose` (and the reason for break-the-glass).
    fn request(&self, who: Who, purpose: Purpose, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.apis[&who]
            .request(method, path)
            .header("X-Purpose-Of-Use", purpose.code());
        if purpose == Purpose::BreakGlass {
            rb = rb.header("X-Break-Glass-Reason", self.reason.text());
        }
        rb
    }

    fn json_request(
        &self,
        who: Who,
        purpose: Purpose,
        method: Method,
        path: &str,
        body: &Value,
    ) -> RequestBuilder {
        self.request(who, purpose, method, path)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string())
    }

    /// The current body of `res`, read by a principal that may.
    async fn current(&self, res: Res) -> Value {
        let reader = if res == Res::Psy {
            Who::CarePsy
        } else {
            Who::System
        };
        let r = self.apis[&reader].get(&self.path(res)).await;
        r.assert_status(200);
        r.json()
    }

    /// A fresh copy of the Observation `res` (same patient and labels, the copy code), for
    /// a delete cell.
    async fn copy(&self, res: Res) -> String {
        let writer = if res == Res::Psy {
            Who::CarePsy
        } else {
            Who::System
        };
        self.apis[&writer]
            .create(&observation(
                self.patient_of(res),
                &self.copy_code,
                res == Res::Psy,
            ))
            .await
    }

    /// Which matrix column a listed search hit belongs to (by its patient and labels).
    fn class_of(&self, resource: &Value) -> Option<Res> {
        let labelled = resource["meta"]["security"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        match resource["resourceType"].as_str()? {
            "Patient" => {
                let id = resource["id"].as_str()?;
                (id == self.p1)
                    .then_some(Res::P1)
                    .or((id == self.p2).then_some(Res::P2))
            }
            "Observation" => {
                let subject = resource["subject"]["reference"].as_str()?;
                if subject == format!("Patient/{}", self.p1) {
                    Some(if labelled { Res::Psy } else { Res::O1 })
                } else if subject == format!("Patient/{}", self.p2) {
                    Some(Res::O2)
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

/// What a search answered, in the terms of the matrix.
struct SearchAnswer {
    resp: Resp,
    ids: BTreeSet<String>,
    resources: Vec<Value>,
}

fn search_answer(resp: Resp, rtype: &str) -> SearchAnswer {
    let mut ids = BTreeSet::new();
    let mut resources = Vec::new();
    if resp.status == 200 {
        let b = resp.json();
        for r in phivault_testkit::search_matches(&b, rtype) {
            ids.insert(r["id"].as_str().unwrap_or_default().to_owned());
            resources.push(r);
        }
    }
    SearchAnswer {
        resp,
        ids,
        resources,
    }
}

/// Checks one answer against the expectation; a mismatch is returned as a line.
fn check(
    cell: &str,
    expect: Expect,
    r: &Resp,
    allowed: &[u16],
    listed: Option<bool>,
) -> Option<String> {
    if r.status >= 500 {
        return Some(format!("{cell}: server error {r:?}"));
    }
    let denied_ok = |r: &Resp| -> Result<(), String> {
        if r.status != 403 {
            return Err(format!("expected 403, got {r:?}"));
        }
        let v: Value = serde_json::from_str(&r.text).unwrap_or(Value::Null);
        if v["resourceType"] != "OperationOutcome" || v["issue"][0]["code"] != "forbidden" {
            return Err(format!(
                "a 403 is an OperationOutcome with code forbidden: {r:?}"
            ));
        }
        Ok(())
    };
    let outcome = match expect {
        Expect::NotApplicable => Ok(()),
        Expect::Allow => {
            if !allowed.contains(&r.status) {
                Err(format!("expected {allowed:?}, got {r:?}"))
            } else if listed == Some(false) {
                Err("allowed, but the resource is not listed".to_owned())
            } else {
                Ok(())
            }
        }
        Expect::Deny => denied_ok(r),
        Expect::Hidden => {
            if r.status != 200 {
                Err(format!("expected 200 without the resource, got {r:?}"))
            } else if listed == Some(true) {
                Err("the resource is listed, it must be hidden".to_owned())
            } else {
                Ok(())
            }
        }
        Expect::HiddenOrDeny => {
            if r.status == 200 {
                if listed == Some(true) {
                    Err("the resource is listed, it must be hidden".to_owned())
                } else {
                    Ok(())
                }
            } else {
                denied_ok(r)
            }
        }
    };
    outcome.err().map(|e| format!("{cell}: {e}"))
}

/// Runs every cell of the matrix; returns the mismatches.
async fn run_matrix(w: &World, table: &Table) -> Vec<String> {
    let mut failures = Vec::new();
    for purpose in Purpose::ALL {
        for (&(who, p), row) in table.iter().filter(|((_, p), _)| *p == purpose) {
            debug_assert_eq!(p, purpose);
            for op in OPS {
                // The searches of a row are run once per query and checked per column.
                let mut search_cache: BTreeMap<String, SearchAnswer> = BTreeMap::new();
                for res in RESOURCES {
                    let expect = row[&(op, res)];
                    let cell = format!(
                        "{who:?} {} {op:?} {res:?} (expected {expect:?})",
                        label(purpose)
                    );
                    if expect == Expect::NotApplicable {
                        continue;
                    }
                    let failure = match op {
                        Op::Read => {
                            let r =
                                Api::send(w.request(who, purpose, Method::GET, &w.path(res))).await;
                            let mut f = check(&cell, expect, &r, &[200], None);
                            if f.is_none() && expect == Expect::Allow {
                                let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                                if id != w.id(res) {
                                    f = Some(format!("{cell}: read returned id {id}"));
                                }
                                f = f.or_else(|| break_glass_mark(who, purpose, res, &r, &cell));
                            }
                            f
                        }
                        Op::SearchByPatient | Op::SearchByCode => {
                            let (rtype, q) = search_query(w, op, res);
                            if !search_cache.contains_key(&q) {
                                let r = Api::send(w.request(who, purpose, Method::GET, &q)).await;
                                search_cache.insert(q.clone(), search_answer(r, rtype));
                            }
                            let a = &search_cache[&q];
                            let listed = a.ids.contains(w.id(res));
                            check(&cell, expect, &a.resp, &[200], Some(listed))
                                .or_else(|| search_invariants(w, row, op, &cell, a))
                        }
                        Op::Create => {
                            let body =
                                observation(w.patient_of(res), &w.copy_code, res == Res::Psy);
                            let r = Api::send(w.json_request(
                                who,
                                purpose,
                                Method::POST,
                                "Observation",
                                &body,
                            ))
                            .await;
                            check(&cell, expect, &r, &[201], None)
                        }
                        Op::Update => {
                            let body = w.current(res).await;
                            let r = Api::send(w.json_request(
                                who,
                                purpose,
                                Method::PUT,
                                &w.path(res),
                                &body,
                            ))
                            .await;
                            check(&cell, expect, &r, &[200], None)
                        }
                        Op::Delete => {
                            let copy = w.copy(res).await;
                            let path = format!("Observation/{copy}");
                            let r = Api::send(w.request(who, purpose, Method::DELETE, &path)).await;
                            let f = check(&cell, expect, &r, &[200, 204], None);
                            // A refused delete leaves the copy readable.
                            if f.is_none() && expect == Expect::Deny {
                                let reader = if res == Res::Psy {
                                    Who::CarePsy
                                } else {
                                    Who::System
                                };
                                let after = w.apis[&reader].get(&path).await;
                                (after.status != 200).then(|| {
                                    format!("{cell}: refused, but the copy is gone: {after:?}")
                                })
                            } else {
                                f
                            }
                        }
                        Op::History => {
                            let path = format!("{}/_history", w.path(res));
                            let r = Api::send(w.request(who, purpose, Method::GET, &path)).await;
                            check(&cell, expect, &r, &[200], None)
                        }
                        Op::Transaction => {
                            let mut b = BundleBuilder::transaction();
                            b.get(&w.path(res));
                            let r = Api::send(w.json_request(
                                who,
                                purpose,
                                Method::POST,
                                "",
                                &b.build(),
                            ))
                            .await;
                            let mut f = check(&cell, expect, &r, &[200], None);
                            if f.is_none() && expect == Expect::Allow {
                                let v = r.json();
                                let status = v["entry"][0]["response"]["status"]
                                    .as_str()
                                    .unwrap_or_default();
                                let id =
                                    v["entry"][0]["resource"]["id"].as_str().unwrap_or_default();
                                if !status.starts_with("200") || id != w.id(res) {
                                    f = Some(format!(
                                        "{cell}: entry answered {status} {id}: {r:?}"
                                    ));
                                }
                            }
                            f
                        }
                    };
                    failures.extend(failure);
                }
            }
        }
    }
    failures
}

fn label(p: Purpose) -> &'static str {
    match p {
        Purpose::Treat => "TREAT",
        Purpose::PatientRequest => "PATRQT",
        Purpose::Research => "HRESCH",
        Purpose::Emergency => "ETREAT",
        Purpose::BreakGlass => "ETREAT+BTG",
    }
}

/// A read allowed only through break-the-glass is marked `X-Break-Glass: recorded` (the first
/// time for that patient); one allowed without it never is.
fn break_glass_mark(who: Who, purpose: Purpose, res: Res, r: &Resp, cell: &str) -> Option<String> {
    let marked = r.header("x-break-glass") == Some("recorded");
    // ETREAT reaches a patient only through a claim, care team or not: every such access
    // relies on it.
    let needs_glass = purpose == Purpose::BreakGlass && who.is_clinician();
    if marked && !needs_glass {
        return Some(format!(
            "{cell}: X-Break-Glass: recorded on an access that did not need it"
        ));
    }
    // The first break-the-glass read of each patient records it; Read runs P1 P2 O1 O2 PSY.
    let first_of_patient = who.is_clinician() && matches!(res, Res::P1 | Res::P2);
    if needs_glass && first_of_patient && !marked {
        return Some(format!(
            "{cell}: a break-the-glass access must say X-Break-Glass: recorded: {r:?}"
        ));
    }
    None
}

/// The query of a search cell: (type, path and query).
fn search_query(w: &World, op: Op, res: Res) -> (&'static str, String) {
    match (op, res) {
        (Op::SearchByPatient, Res::P1 | Res::P2) => (
            "Patient",
            query("Patient", &[("_id", w.id(res)), ("_count", "1000")]),
        ),
        (Op::SearchByPatient, _) => (
            "Observation",
            query(
                "Observation",
                &[("patient", w.patient_of(res)), ("_count", "1000")],
            ),
        ),
        (_, Res::P1 | Res::P2) => (
            "Patient",
            query(
                "Patient",
                &[("family", w.family.text()), ("_count", "1000")],
            ),
        ),
        _ => (
            "Observation",
            query(
                "Observation",
                &[("code", w.code.text()), ("_count", "1000")],
            ),
        ),
    }
}

/// Whatever a search lists must be readable by the row's rules, and its total counts exactly
/// what it lists.
fn search_invariants(
    w: &World,
    row: &BTreeMap<(Op, Res), Expect>,
    op: Op,
    cell: &str,
    a: &SearchAnswer,
) -> Option<String> {
    if a.resp.status != 200 {
        return None;
    }
    let b = a.resp.json();
    if let Some(total) = b["total"].as_u64()
        && total != a.ids.len() as u64
    {
        return Some(format!(
            "{cell}: total {total} counts other than the {} listed: {:?}",
            a.ids.len(),
            a.resp
        ));
    }
    for r in &a.resources {
        let Some(class) = w.class_of(r) else {
            return Some(format!(
                "{cell}: lists a resource outside the test's fixtures: {r}"
            ));
        };
        if row[&(op, class)] != Expect::Allow {
            return Some(format!(
                "{cell}: lists {} (a {class:?}-like resource) that this principal may not see",
                r["id"]
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let table = table();
    let cells: usize = table
        .values()
        .map(|row| {
            row.values()
                .filter(|e| **e != Expect::NotApplicable)
                .count()
        })
        .sum();
    // Every backend runs before the verdict, so one report covers them all.
    let mut report = Vec::new();
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let w = World::new(server).await;
        let failures = run_matrix(&w, &table).await;
        eprintln!(
            "authorization matrix ({}): {cells} cells, {} answered otherwise",
            backend.name(),
            failures.len()
        );
        for f in &failures {
            eprintln!("  {f}");
        }
        // The other checks run whatever the matrix found; its mismatches fail the test last.
        break_glass_review(&w).await;
        owasp_cases(&w).await;
        let logs = w.server.stderr_text();
        assert!(
            !logs.contains(w.reason.text()) && !logs.contains(w.reason.core()),
            "a break-the-glass reason reached the logs"
        );
        for name in w.usernames.values() {
            assert!(!logs.contains(name.as_str()), "a username reached the logs");
        }
        w.server.assert_no_panic();
        report.extend(
            failures
                .into_iter()
                .map(|f| format!("[{}] {f}", backend.name())),
        );
    }
    assert!(
        report.is_empty(),
        "{} cells of the matrix ({cells} per backend) answered otherwise:\n{}",
        report.len(),
        report.join("\n")
    );
}

/// `phivault break-glass list`: the recorded claims (time, user, patient, expiry), reasons
/// only with `--show-reasons`.
async fn break_glass_review(w: &World) {
    let out = w.server.cli(&["break-glass", "list"], None).await;
    out.assert_ok("phivault break-glass list");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|h| {
            let cols: Vec<&str> = h.split_whitespace().collect();
            cols == ["time", "user", "patient", "expires"]
        }),
        "the table starts with its header: {}",
        out.stdout
    );
    // Claims: each of the three clinicians on P1 and P2 (ETREAT reaches even a care-team
    // patient only through a claim). Each request that relied on its own reason is listed.
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for row in &rows {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(row[2] == w.p1 || row[2] == w.p2, "{row:?}");
        assert!(row[0] < row[3], "expires after it starts: {row:?}");
    }
    eprintln!("break-glass list: {} records", rows.len());
    let users: BTreeSet<&str> = rows.iter().map(|r| r[1]).collect();
    let pairs: BTreeSet<(&str, &str)> = rows.iter().map(|r| (r[1], r[2])).collect();
    assert_eq!(
        users.len(),
        3,
        "three clinicians broke the glass:\n{}",
        out.stdout
    );
    assert_eq!(
        pairs.len(),
        6,
        "six (clinician, patient) claims:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(w.reason.text()),
        "reasons only with --show-reasons"
    );
    let out = w
        .server
        .cli(&["break-glass", "list", "--show-reasons"], None)
        .await;
    out.assert_ok("phivault break-glass list --show-reasons");
    assert_eq!(
        out.stdout.matches(w.reason.text()).count(),
        rows.len(),
        "each record shows its reason:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .ends_with("reason")
    );
}

/// OWASP access-control cases, as the care clinician (P1 on their care team, not P2).
async fn owasp_cases(w: &World) {
    let care = Who::Care;
    let t = Purpose::Treat;
    let forbidden = |r: &Resp, what: &str| {
        assert_eq!(r.status, 403, "{what}: {r:?}");
        r.assert_outcome(403, &[]);
    };
    let o2_before = w.apis[&Who::System].get(&w.path(Res::O2)).await.json();

    // Another patient's id in the URL: read, vread, update (even claiming P1 in the body),
    // moving one's own resource to P2, delete, history.
    let r = Api::send(w.request(care, t, Method::GET, &w.path(Res::O2))).await;
    forbidden(&r, "read of P2's Observation by id");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history/1", w.path(Res::O2)),
    ))
    .await;
    forbidden(&r, "vread of P2's Observation");
    let mut claims_p1 = o2_before.clone();
    claims_p1["subject"]["reference"] = json!(format!("Patient/{}", w.p1));
    let r = Api::send(w.json_request(care, t, Method::PUT, &w.path(Res::O2), &claims_p1)).await;
    forbidden(&r, "update of P2's Observation with a body naming P1");
    let mut to_p2 = w.current(Res::O1).await;
    to_p2["subject"]["reference"] = json!(format!("Patient/{}", w.p2));
    let r = Api::send(w.json_request(care, t, Method::PUT, &w.path(Res::O1), &to_p2)).await;
    forbidden(&r, "moving P1's Observation into P2's compartment");
    let r = Api::send(w.request(care, t, Method::DELETE, &w.path(Res::O2))).await;
    forbidden(&r, "delete of P2's Observation");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history", w.path(Res::O2)),
    ))
    .await;
    forbidden(&r, "history of P2's Observation");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history", w.path(Res::P2)),
    ))
    .await;
    forbidden(&r, "history of P2");

    // Transactions that read or update P2's Observation among allowed entries: refused as a
    // whole, nothing applied.
    let mut b = BundleBuilder::transaction();
    b.get(&w.path(Res::O1)).get(&w.path(Res::O2));
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    forbidden(&r, "transaction reading P2's Observation");
    let mut changed = o2_before.clone();
    changed["status"] = json!("amended");
    let mut b = BundleBuilder::transaction();
    b.post(observation(&w.p1, &w.copy_code, false));
    b.put(&w.path(Res::O2), changed, None);
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    forbidden(&r, "transaction updating P2's Observation");
    // A batch answers per entry: P2's entry is refused, P1's served.
    let mut b = BundleBuilder::batch();
    b.get(&w.path(Res::O1)).get(&w.path(Res::O2));
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    r.assert_status(200);
    let v = r.json();
    let status = |i: usize| {
        v["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status(0).starts_with("200"), "batch entry for P1: {r:?}");
    assert!(status(1).starts_with("403"), "batch entry for P2: {r:?}");
    assert!(
        v["entry"][1]["resource"].is_null(),
        "no resource for a refused entry: {r:?}"
    );
    let o2_after = w.apis[&Who::System].get(&w.path(Res::O2)).await.json();
    assert_eq!(o2_after, o2_before, "P2's Observation is unchanged");

    // Search totals count only what may be read: O1 (P1, unlabelled), not O2 nor the PSY one.
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &query("Observation", &[("code", w.code.text())]),
    ))
    .await;
    r.assert_status(200);
    let b = r.json();
    assert_eq!(
        b["total"], 1,
        "total counts only P1's unlabelled Observation: {r:?}"
    );
    let ids: Vec<&str> = phivault_testkit::search_matches(&b, "Observation")
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default())
        .map(|s| if s == w.o1 { "O1" } else { "other" })
        .collect();
    assert_eq!(ids, ["O1"], "{r:?}");
    // The same for the form-encoded search.
    let r = Api::send(
        w.apis[&care]
            .form_request("Observation/_search", &[("code", w.code.text())])
            .header("X-Purpose-Of-Use", "TREAT"),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json()["total"], 1, "POST _search counts the same: {r:?}");

    // _include and _revinclude return only what the principal may read: an Observation of P1
    // derived from P2's Observation, P1's PSY Observation and O1 includes, for each principal,
    // the ones it could read itself, never the others, and never counts them in the total.
    let mut derived = observation(&w.p1, &w.copy_code, false);
    derived["derivedFrom"] = json!([
        { "reference": w.path(Res::O2) },
        { "reference": w.path(Res::Psy) },
        { "reference": w.path(Res::O1) },
    ]);
    let derived = w.apis[&Who::System].create(&derived).await;
    let include_query = query(
        "Observation",
        &[("_id", &derived), ("_include", "Observation:derived-from")],
    );
    for (who, purpose, readable) in [
        (care, t, vec![Res::O1]),
        (Who::AppP1, t, vec![Res::O1]),
        (
            Who::PatientP1,
            Purpose::PatientRequest,
            vec![Res::O1, Res::Psy],
        ),
        (Who::System, t, vec![Res::O1, Res::O2]),
        (Who::CarePsy, t, vec![Res::O1, Res::Psy]),
    ] {
        let r = Api::send(w.request(who, purpose, Method::GET, &include_query)).await;
        r.assert_status(200);
        let bundle = r.json();
        assert_eq!(
            bundle["total"], 1,
            "{who:?}: includes are not counted: {bundle}"
        );
        let mut included = mode_ids(&bundle, "include");
        included.sort();
        let mut expected: Vec<String> = readable.iter().map(|res| w.id(*res).to_owned()).collect();
        expected.sort();
        assert_eq!(included, expected, "{who:?}: included Observations");
        assert_eq!(mode_ids(&bundle, "match"), vec![derived.clone()], "{who:?}");
    }
    // The reverse: P1's Observations that name P1, as far as each may read them.
    let rev_query = query(
        "Patient",
        &[("_id", &w.p1), ("_revinclude", "Observation:subject")],
    );
    for (who, psy_visible) in [(care, false), (Who::CarePsy, true)] {
        let r = Api::send(w.request(who, t, Method::GET, &rev_query)).await;
        r.assert_status(200);
        let bundle = r.json();
        assert_eq!(bundle["total"], 1, "{who:?}: {bundle}");
        let included = mode_ids(&bundle, "include");
        assert!(
            included.contains(&w.o1) && included.contains(&derived),
            "{who:?}"
        );
        assert_eq!(
            included.contains(&w.psy),
            psy_visible,
            "{who:?}: the PSY Observation"
        );
        assert!(!included.contains(&w.o2), "{who:?}: P2's Observation");
    }
    // A clinician without P1 on the care team gets nothing, includes included.
    let r = Api::send(w.request(Who::Other, t, Method::GET, &rev_query)).await;
    r.assert_status(200);
    assert_eq!(r.json()["total"], 0);
    assert!(mode_ids(&r.json(), "include").is_empty());
    // The forms not served are refused, whoever asks.
    for q in [
        query(
            "Observation",
            &[("_include:iterate", "Observation:patient")],
        ),
        query("Observation", &[("_include", "*")]),
        query("Observation", &[("_include", "Patient:organization")]),
    ] {
        let r = Api::send(w.request(Who::System, t, Method::GET, &q)).await;
        r.assert_outcome(400, &["_include"]);
    }

    // Chains and _has look up the other type as the caller: P1 and P2 share a family name and
    // O1, O2 and the PSY Observation a code, so each principal finds exactly what it could
    // read itself, and the chain never reaches a patient or an Observation out of reach.
    let chained = query(
        "Observation",
        &[
            ("code", w.code.text()),
            ("subject:Patient.family", w.family.text()),
        ],
    );
    let has = query(
        "Patient",
        &[("_has:Observation:subject:code", w.code.text())],
    );
    for (who, purpose, observations, patients) in [
        (care, t, vec![Res::O1], vec![Res::P1]),
        (Who::CarePsy, t, vec![Res::O1, Res::Psy], vec![Res::P1]),
        (
            Who::System,
            t,
            vec![Res::O1, Res::O2],
            vec![Res::P1, Res::P2],
        ),
        (
            Who::PatientP2,
            Purpose::PatientRequest,
            vec![Res::O2],
            vec![Res::P2],
        ),
        (Who::Other, t, vec![], vec![]),
    ] {
        for (q, expected) in [(&chained, &observations), (&has, &patients)] {
            let r = Api::send(w.request(who, purpose, Method::GET, q)).await;
            r.assert_status(200);
            let bundle = r.json();
            let mut found = mode_ids(&bundle, "match");
            found.sort();
            let mut want: Vec<String> = expected.iter().map(|res| w.id(*res).to_owned()).collect();
            want.sort();
            assert_eq!(found, want, "{who:?} {q}");
            assert_eq!(bundle["total"], want.len(), "{who:?} {q}");
            let link = bundle["link"][0]["url"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(link.contains("_has") || link.contains("family"), "{link}");
        }
    }
    for (q, says) in [
        (
            query("Observation", &[("subject.organization.name", "x")]),
            "one level",
        ),
        (
            query("Observation", &[("subject.family", "x")]),
            "several types",
        ),
    ] {
        let r = Api::send(w.request(Who::System, t, Method::GET, &q)).await;
        r.assert_outcome(400, &[says]);
    }

    // Existence never leaks: a missing id is refused like one out of reach, unless the
    // principal could reach it.
    let missing = "Observation/no-such-observation-authz";
    let r = Api::send(w.request(Who::Other, t, Method::GET, missing)).await;
    forbidden(
        &r,
        "a missing Observation, for a clinician without patients",
    );
    let out_of_reach = Api::send(w.request(Who::Other, t, Method::GET, &w.path(Res::O2))).await;
    assert_eq!(
        r.issue_text(),
        out_of_reach.issue_text(),
        "same refusal for missing and existing"
    );
    let r = Api::send(w.request(Who::System, t, Method::GET, missing)).await;
    r.assert_outcome(404, &[]);

    // Purpose of use and reason headers are parsed strictly.
    let r = Api::send(
        w.apis[&care]
            .request(Method::GET, &w.path(Res::O1))
            .header("X-Purpose-Of-Use", "treat"),
    )
    .await;
    r.assert_outcome(400, &["X-Purpose-Of-Use"]);
    let r = Api::send(
        w.apis[&care]
            .request(Method::GET, &w.path(Res::O1))
            .header("X-Purpose-Of-Use", "TREAT")
            .header("X-Break-Glass-Reason", "not an emergency"),
    )
    .await;
    r.assert_outcome(400, &["X-Break-Glass-Reason"]);
    // Without a purpose header a clinician acts for TREAT (the role's default).
    w.apis[&care].get(&w.path(Res::O1)).await.assert_status(200);
    w.apis[&care]
        .get(&w.path(Res::O2))
        .await
        .assert_outcome(403, &[]);
}

// ---------------------------------------------------------------------------------------
// Break-the-glass as the first access: a search limited to one patient

/// DESIGN.md: a clinician "may claim an emergency (ETREAT with a reason) to pass a denial".
/// A search limited to one patient (`Observation?patient=X`) names the patient the claim is
/// for, so it passes like a read does, even as the clinician's first access to that patient.
#[tokio::test(flavor = "multi_thread")]
async fn break_the_glass_search_first() {
    let mut report = Vec::new();
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let code = Marker::code("bg-");
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Emergency"))
            .await;
        let o = sys.create(&observation(&p, &code, false)).await;
        let token = server.staff_session(&random_username(), "clinician").await;
        let api = server.api_as(&token);
        let reason = Marker::name();
        let q = query("Observation", &[("patient", &p)]);
        // Without the claim: nothing.
        let r = Api::send(
            api.request(Method::GET, &q)
                .header("X-Purpose-Of-Use", "ETREAT"),
        )
        .await;
        assert!(
            r.status == 403 || (r.status == 200 && r.json()["total"] == 0),
            "without a claim the search shows nothing: {r:?}"
        );
        // With the claim, the search by patient is the first access: it passes the refusal.
        let r = Api::send(
            api.request(Method::GET, &q)
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", reason.text()),
        )
        .await;
        r.assert_status(200);
        let b = r.json();
        let ids: Vec<Value> = phivault_testkit::search_matches(&b, "Observation")
            .iter()
            .map(|x| x["id"].clone())
            .collect();
        if ids != [json!(o)] || r.header("x-break-glass") != Some("recorded") {
            report.push(format!(
                "[{}] a break-the-glass search limited to one patient, as the first access, \
                 lists {ids:?} (expected [{o}]) and says X-Break-Glass: {:?}: {r:?}",
                backend.name(),
                r.header("x-break-glass")
            ));
        }
        server.assert_no_panic();
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

// ---------------------------------------------------------------------------------------
// TOTP

#[tokio::test(flavor = "multi_thread")]
async fn totp_second_factor() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;

        // A staff account's first session may only enrol TOTP.
        let username = random_username();
        let password = server.create_user(&username, "clinician").await;
        let r = server.login(&username, &password, None).await;
        let first = phivault_testkit::LoginAnswer::parse(&r);
        assert!(first.enrolment_only, "staff must enrol TOTP first: {r:?}");
        let enrol_only = server.api_as(&first.token);
        enrol_only
            .get("Patient")
            .await
            .assert_outcome(403, &["TOTP"]);

        // Enrolment: a wrong code is refused, the right one returns recovery codes.
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/totp/enroll", Some(&first.token)))
                .await;
        r.assert_status(200);
        let v = r.json();
        let secret = v["secret"].as_str().unwrap().to_owned();
        assert!(
            v["otpauth_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("otpauth://totp/") && u.contains(&secret)),
            "{r:?}"
        );
        let now = totp_step(unix_now());
        let wrong = wrong_code(&secret, now);
        let r = server.confirm_totp(&first.token, &wrong).await;
        assert_eq!(r.status, 400, "a wrong confirmation code: {r:?}");
        let confirm_step = now;
        let r = server
            .confirm_totp(&first.token, &totp_code(&secret, confirm_step))
            .await;
        r.assert_status(200);
        let recovery: Vec<String> = r.json()["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(recovery.len(), 10, "{r:?}");

        // Password alone: refused like a wrong password, nothing says it was right.
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(401, &["authentication failed"]);
        assert!(!r.text.contains("TOTP"), "{r:?}");
        // A wrong code.
        let now = totp_step(unix_now()).max(confirm_step + 1);
        let r = server
            .login(&username, &password, Some(&wrong_code(&secret, now)))
            .await;
        r.assert_outcome(401, &["authentication failed"]);
        // An old code, outside the window (three steps back).
        let old = totp_code(&secret, now - 3);
        if !window(&secret, now).contains(&old) {
            let r = server.login(&username, &password, Some(&old)).await;
            r.assert_outcome(401, &["authentication failed"]);
        }
        // The confirming code again: already used.
        let r = server
            .login(
                &username,
                &password,
                Some(&totp_code(&secret, confirm_step)),
            )
            .await;
        r.assert_outcome(401, &["authentication failed"]);
        // The next code: accepted, once.
        let code = totp_code(&secret, now);
        let r = server.login(&username, &password, Some(&code)).await;
        let session = phivault_testkit::LoginAnswer::parse(&r);
        assert!(!session.enrolment_only);
        let r = server.login(&username, &password, Some(&code)).await;
        r.assert_outcome(401, &["authentication failed"]);

        // A recovery code instead of TOTP: once.
        let body =
            json!({ "username": username, "password": password, "recovery_code": recovery[0] });
        let r = server.login_with(body.clone()).await;
        r.assert_status(200);
        let r = server.login_with(body).await;
        r.assert_outcome(401, &["authentication failed"]);

        // The session works, and logout ends it.
        let api = server.api_as(&session.token);
        api.get(&query("Patient", &[("_count", "1")]))
            .await
            .assert_status(200);
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/logout", Some(&session.token)))
                .await;
        assert!(matches!(r.status, 200 | 204), "{r:?}");
        api.get("Patient")
            .await
            .assert_outcome(401, &["authentication failed"]);

        // Refusals never echo what was sent.
        let logs = server.stderr_text();
        for s in [
            &password,
            &secret,
            &code,
            &recovery[0],
            &session.token,
            &first.token,
        ] {
            assert!(!logs.contains(s.as_str()), "a credential reached the logs");
        }
        server.assert_no_panic();
    }
}

/// The codes accepted around `step` (now-1 ..= now+1).
fn window(secret: &str, step: u64) -> Vec<String> {
    (step - 1..=step + 1)
        .map(|s| totp_code(secret, s))
        .collect()
}

/// A 6-digit code accepted at no step of the window around `step`.
fn wrong_code(secret: &str, step: u64) -> String {
    let accepted = window(secret, step);
    (0..1000u32)
        .map(|i| format!("{:06}", (i * 7919 + 123_457) % 1_000_000))
        .find(|c| !accepted.contains(c))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Lockout

/// After 5 consecutive wrong passwords the account is locked: the right password is refused
/// with 429 and `Retry-After` (the first lock lasts 60 s, README "Accounts") until it passes.
/// The test does not wait a minute: it asserts the lock and its announced length.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_after_five_wrong_passwords() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let username = random_username();
        let password = server.create_user(&username, "patient").await;
        for i in 1..=5 {
            let r = server
                .login(&username, &format!("{password}-wrong{i}"), None)
                .await;
            r.assert_outcome(401, &["authentication failed"]);
        }
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(429, &[]);
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
        assert!(
            (30..=60).contains(&retry),
            "the first lock lasts 60 s (Retry-After {retry})"
        );
        // Long: still locked a moment later, whatever the password.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(429, &[]);
        // An unknown account is not told apart by the lock: it answers 401 as before.
        let r = server.login(&random_username(), &password, None).await;
        r.assert_outcome(401, &["authentication failed"]);
        // Another account is not affected.
        let other = random_username();
        let other_pw = server.create_user(&other, "patient").await;
        server
            .login(&other, &other_pw, None)
            .await
            .assert_status(200);
        assert!(!server.stderr_text().contains(&password));
        server.assert_no_panic();
    }
}

// ---------------------------------------------------------------------------------------
// OAuth2 clients

#[tokio::test(flavor = "multi_thread")]
async fn oauth_client_credentials() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Scoped"))
            .await;

        let (id, secret) = server
            .add_client("reader", "system/*.rs system/Patient.cruds", None)
            .await;
        // Wrong secret, unknown client: the same invalid_client.
        let r = server.token_request(&id, &format!("{secret}x"), None).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_client", "{r:?}");
        let r = server.token_request("no-such-client", &secret, None).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_client", "{r:?}");
        // A scope beyond the client's: refused.
        let r = server
            .token_request(&id, &secret, Some("system/*.cruds"))
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_scope", "{r:?}");
        // A narrower scope: granted as asked, and enforced.
        let r = server
            .token_request(&id, &secret, Some("system/Observation.rs"))
            .await;
        r.assert_status(200);
        let v = r.json();
        assert_eq!(v["scope"], "system/Observation.rs", "{r:?}");
        assert!(
            v["expires_in"]
                .as_i64()
                .is_some_and(|s| (1..=900).contains(&s)),
            "15 min at most: {r:?}"
        );
        let narrow = server.api_as(v["access_token"].as_str().unwrap());
        narrow
            .get(&format!("Patient/{p}"))
            .await
            .assert_outcome(403, &[]);
        narrow
            .get(&query("Observation", &[("patient", &p)]))
            .await
            .assert_status(200);
        // The full scope: read everything, write Patients only.
        let token = server.client_credentials(&id, &secret, None).await;
        let api = server.api_as(&token);
        api.get(&format!("Patient/{p}")).await.assert_status(200);
        let obs = observation(&p, &Marker::code("oc-"), false);
        api.post_json("Observation", &obs)
            .await
            .assert_outcome(403, &[]);
        api.post_json("Patient", &fixtures::patient(Marker::name().text(), "New"))
            .await
            .assert_status(201);

        // Revocation by the client: the token stops working.
        let body = query(
            "",
            &[
                ("token", &token),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
        );
        let r = Api::send(
            server
                .origin_request(Method::POST, "/oauth/revoke", None)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.trim_start_matches('?').to_owned()),
        )
        .await;
        r.assert_status(200);
        api.get(&format!("Patient/{p}"))
            .await
            .assert_outcome(401, &["authentication failed"]);

        // SMART discovery names the token endpoint.
        let r =
            Api::send(server.origin_request(Method::GET, "/.well-known/smart-configuration", None))
                .await;
        r.assert_status(200);
        assert_eq!(
            r.json()["token_endpoint"],
            server.origin_url("/oauth/token"),
            "{r:?}"
        );

        // A client made with a launch patient reaches only that patient's compartment.
        let other = sys
            .create(&fixtures::patient(Marker::name().text(), "Other"))
            .await;
        let oid = sys
            .create(&observation(&other, &Marker::code("oc-"), false))
            .await;
        let mine = sys
            .create(&observation(&p, &Marker::code("oc-"), false))
            .await;
        let t = server
            .client_token("patient/Observation.rs", Some(&p))
            .await;
        let app = server.api_as(&t);
        app.get(&format!("Observation/{mine}"))
            .await
            .assert_status(200);
        app.get(&format!("Observation/{oid}"))
            .await
            .assert_outcome(403, &[]);

        // CLI errors: one line, exit 1.
        let out = server
            .cli(
                &[
                    "client",
                    "add",
                    "--name",
                    "bad",
                    "--scope",
                    "system/Nope.rs",
                ],
                None,
            )
            .await;
        out.assert_error("client add with a bad scope", "scope");
        let logs = server.stderr_text();
        assert!(
            !logs.contains(&secret) && !logs.contains(&token),
            "credentials reached the logs"
        );
        server.assert_no_panic();
    }
}

// ---------------------------------------------------------------------------------------
// The administration commands

#[tokio::test(flavor = "multi_thread")]
async fn administration_commands() {
    let backend = backends().remove(0);
    let server = Server::start(BIN, &backend, &[]).await;

    // A generated password is printed once on stdout, and works.
    let username = random_username();
    let out = server
        .cli(
            &["user", "add", "--username", &username, "--role", "patient"],
            None,
        )
        .await;
    out.assert_ok("user add");
    let prefix = format!("phivault: password for {username} (shown once): ");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {}", out.stdout);
    let password = lines[0]
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("contract line: {}", lines[0]));
    assert!(password.len() >= 16, "a strong password");
    server
        .login(&username, password, None)
        .await
        .assert_status(200);

    // Errors: one line on stderr, exit status 1.
    let out = server
        .cli(
            &["user", "add", "--username", &username, "--role", "patient"],
            None,
        )
        .await;
    out.assert_error("a taken username", "exists");
    let out = server
        .cli(
            &[
                "user",
                "add",
                "--username",
                &random_username(),
                "--role",
                "app",
            ],
            None,
        )
        .await;
    out.assert_error("the app role for a user", "app");
    let out = server
        .cli(
            &[
                "user",
                "add",
                "--username",
                &random_username(),
                "--role",
                "patient",
                "--password-stdin",
            ],
            Some("password\n"),
        )
        .await;
    out.assert_error("a weak password", "password");
    let out = server
        .cli(&["user", "grant", "nobody-here", "p1"], None)
        .await;
    out.assert_error("a grant to an unknown user", "not found");
    let out = server
        .cli(&["user", "grant", &username, "p1", "--labels", "XYZ"], None)
        .await;
    out.assert_error("an unknown label", "label");
    let out = server
        .cli(
            &[
                "user",
                "grant",
                &username,
                "p1",
                "--until",
                "2001-01-01T00:00:00Z",
            ],
            None,
        )
        .await;
    out.assert_error("a grant ending in the past", "past");
    let out = server
        .cli(&["user", "link-patient", &username, "not an id"], None)
        .await;
    out.assert_error("a bad patient id", "id");

    // policy check
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.cedar");
    std::fs::write(
        &good,
        "@id(\"ops.read\")\npermit (principal is PhiVault::User, action == PhiVault::Action::\"read\", \
         resource is PhiVault::Resource) when { principal.role == \"admin\" };\n\
         @id(\"ops.search\")\npermit (principal is PhiVault::User, action == PhiVault::Action::\"search\", \
         resource is PhiVault::Resource) when { principal.role == \"admin\" };\n",
    )
    .unwrap();
    let out = server
        .cli_plain(&["policy", "check", good.to_str().unwrap()], None)
        .await;
    out.assert_ok("policy check");
    assert_eq!(out.stdout.trim(), "ok: 2 policies");
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action, resource) when { principal.nope == 1 };\n",
    )
    .unwrap();
    let out = server
        .cli_plain(&["policy", "check", bad.to_str().unwrap()], None)
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty() && !out.stderr.trim().is_empty(),
        "{out:?}"
    );

    // break-glass list on a fresh server: the header only.
    let out = server.cli(&["break-glass", "list"], None).await;
    out.assert_ok("break-glass list");
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    server.assert_no_panic();
}

#[test]
fn the_matrix_is_complete() {
    let t = table();
    // Spot checks that the table says what the policies say.
    assert_eq!(
        t[&(Who::Care, Purpose::Treat)][&(Op::Read, Res::O2)],
        Expect::Deny
    );
    assert_eq!(
        t[&(Who::Other, Purpose::BreakGlass)][&(Op::Update, Res::O2)],
        Expect::Deny
    );
    assert_eq!(
        t[&(Who::PatientP1, Purpose::PatientRequest)][&(Op::Read, Res::Psy)],
        Expect::Allow
    );
    assert_eq!(
        t[&(Who::System, Purpose::Treat)][&(Op::Read, Res::Psy)],
        Expect::Deny
    );
    assert_eq!(
        t[&(Who::AppP1, Purpose::Treat)][&(Op::Read, Res::P1)],
        Expect::Deny
    );
    assert_eq!(
        t[&(Who::Care, Purpose::Emergency)][&(Op::Delete, Res::O1)],
        Expect::Deny
    );
    assert_eq!(
        fixtures::ACT_CODE,
        "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    );
}

// ---------------------------------------------------------------------------------------
// Care relationships from CareTeams

/// A CareTeam gives a clinician access to a patient only when written by a principal allowed
/// to grant it (a clinician of the patient's care team; not an app with a CareTeam scope), and
/// only within the team's and the member's periods.
#[tokio::test(flavor = "multi_thread")]
async fn care_teams_need_a_grantor_and_honour_their_periods() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Teamed"))
            .await;
        let d = sys.create(&fixtures::practitioner("Locum")).await;
        let locum_name = random_username();
        let password = server.create_user(&locum_name, "clinician").await;
        server.link_practitioner(&locum_name, &d).await;
        let locum = server.api_as(
            &server
                .sign_in(&locum_name, "clinician", &password, false)
                .await
                .token,
        );
        let lead_name = random_username();
        let password = server.create_user(&lead_name, "clinician").await;
        server.grant(&lead_name, &p, &[], None).await;
        let lead = server.api_as(
            &server
                .sign_in(&lead_name, "clinician", &password, false)
                .await
                .token,
        );
        let read = format!("Patient/{p}");
        let team = |period: Option<Value>| {
            let mut t = json!({
                "resourceType": "CareTeam",
                "status": "active",
                "subject": {"reference": format!("Patient/{p}")},
                "participant": [{"member": {"reference": format!("Practitioner/{d}")}}],
            });
            if let Some(period) = period {
                t["period"] = period;
            }
            t
        };

        // An app whose only scope is creating CareTeams: refused.
        let (id, secret) = server.add_client("teams", "system/CareTeam.c", None).await;
        let app = server.api_as(&server.client_credentials(&id, &secret, None).await);
        app.post_json("CareTeam", &team(None))
            .await
            .assert_outcome(403, &["access denied"]);
        locum
            .get(&read)
            .await
            .assert_outcome(403, &["access denied"]);

        // The lead (on the care team) adds the locum, for a period that is over: nothing.
        lead.create(&team(Some(json!({"start": "2019-01", "end": "2020-06"}))))
            .await;
        locum
            .get(&read)
            .await
            .assert_outcome(403, &["access denied"]);
        // For a period that has begun: the locum is on the team.
        lead.create(&team(Some(json!({"start": "2020-01-01"}))))
            .await;
        locum.get(&read).await.assert_status(200);
        server.assert_no_panic();
    }
}
