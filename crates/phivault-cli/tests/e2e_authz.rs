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

/// OWASP access-control cases, run after the matrix.
#[path = "e2e_authz/owasp.rs"]
mod owasp;
use owasp::owasp_cases;

/// Break-the-glass as the first access, TOTP, lockout, OAuth2 clients, the administration
/// commands and care teams.
#[path = "e2e_authz/accounts.rs"]
mod accounts;

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

// The expected answer of every cell: `e2e_authz/matrix.rs`.
#[path = "e2e_authz/matrix.rs"]
mod matrix;
use matrix::MATRIX;

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
