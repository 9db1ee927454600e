//! The audit trail on the FHIR API (issue 5) over HTTPS, on every backend: a patient sees
//! their access log (who, with name and role; when; what; why), a break-the-glass access
//! flagged as such (meta.security BTG and purposeOfEvent ETREAT) and a normal one not; another
//! patient, a clinician and other roles cannot see it; auditors search the whole trail by
//! patient, agent, action, outcome and date, page through it without duplicates, and get a
//! precise 400 for bad parameters; a row whose indexed columns were altered in the database
//! (disagreeing with its recorded body) is left out and reported, never shown as it claims.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use phivault_testkit::fixtures;
use phivault_testkit::{
    Account, Api, Marker, Resp, Server, backends, next_link, query, random_username, unix_now,
};
use reqwest::Method;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

const BTG_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The AuditEvents (`match` entries) of a Bundle.
fn events(bundle: &Value) -> Vec<Value> {
    phivault_testkit::search_matches(bundle, "AuditEvent")
}

fn ids(bundle: &Value) -> Vec<u64> {
    events(bundle)
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn agent_display(e: &Value) -> &str {
    e["agent"][0]["who"]["display"].as_str().unwrap_or_default()
}

fn agent_id(e: &Value) -> &str {
    e["agent"][0]["who"]["identifier"]["value"]
        .as_str()
        .unwrap_or_default()
}

fn agent_role(e: &Value) -> &str {
    e["agent"][0]["role"][0]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
}

fn is_btg(e: &Value) -> bool {
    e["meta"]["security"].as_array().is_some_and(|s| {
        s.iter()
            .any(|c| c["system"] == BTG_SYSTEM && c["code"] == "BTG")
    })
}

fn purposes(e: &Value) -> Vec<String> {
    e["purposeOfEvent"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|c| c["coding"][0]["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn about(e: &Value, reference: &str) -> bool {
    e["entity"]
        .as_array()
        .is_some_and(|es| es.iter().any(|x| x["what"]["reference"] == reference))
}

/// A searchset answered 200.
fn searchset(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle", "{what}: {r:?}");
    assert_eq!(b["type"], "searchset", "{what}: {r:?}");
    b
}

/// A user created with `role`, optionally linked to a patient or practitioner, then signed in.
async fn person(
    server: &Server,
    role: &str,
    patient: Option<&str>,
    practitioner: Option<&str>,
) -> Account {
    let username = random_username();
    let password = server.create_user(&username, role).await;
    if let Some(p) = patient {
        server.link_patient(&username, p).await;
    }
    if let Some(p) = practitioner {
        server.link_practitioner(&username, p).await;
    }
    server.sign_in(&username, role, &password, false).await
}

/// Follows the next links from `first`, returning every event id in order.
async fn all_pages(api: &Api, first: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        pages += 1;
        assert!(pages < 500, "paging does not end");
        let b = searchset(&api.get(&url).await, "a page");
        let page = ids(&b);
        assert!(page.len() <= 1, "_count=1 pages hold one event: {b}");
        out.extend(page);
        next = next_link(&b);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn access_logs_and_audit_event_search() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let a = sys
            .create(&fixtures::patient(Marker::name().text(), "Alpha"))
            .await;
        let b = sys
            .create(&fixtures::patient(Marker::name().text(), "Beta"))
            .await;
        let family = format!("Quill{}", &random_username()[2..8]);
        let prac = sys.create(&fixtures::practitioner(&family)).await;
        let prac_name = format!("Test {family}");

        let care = person(&server, "clinician", None, Some(&prac)).await;
        server.grant(&care.username, &a, &[], None).await;
        let other = person(&server, "clinician", None, None).await;
        let pat_a = person(&server, "patient", Some(&a), None).await;
        let pat_b = person(&server, "patient", Some(&b), None).await;
        let auditor = person(&server, "auditor", None, None).await;
        let admin = person(&server, "admin", None, None).await;
        let care_api = server.api_as(&care.token);
        let other_api = server.api_as(&other.token);
        let a_api = server.api_as(&pat_a.token);
        let b_api = server.api_as(&pat_b.token);
        let aud = server.api_as(&auditor.token);
        let admin_api = server.api_as(&admin.token);

        // A clinician on A's care team reads A; another reads A by break-the-glass.
        care_api
            .get(&format!("Patient/{a}"))
            .await
            .assert_status(200);
        let reason = Marker::name();
        let r = Api::send(
            other_api
                .request(Method::GET, &format!("Patient/{a}"))
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", reason.text()),
        )
        .await;
        r.assert_status(200);
        assert_eq!(r.header("x-break-glass"), Some("recorded"), "{label}");
        // A refused request about A (no care relationship, no claim).
        let r = other_api.get(&format!("Patient/{b}")).await;
        assert_eq!(r.status, 403, "{label}: {r:?}");

        // ---- A's access log, by A.
        let log_a = format!("Patient/{a}/$access-log");
        let la = searchset(&a_api.get(&log_a).await, "A's access log");
        let evs = events(&la);
        assert!(
            evs.iter().all(|e| about(e, &format!("Patient/{a}"))),
            "{label}: every event of A's log is about A: {la}"
        );
        assert!(
            !la.to_string().contains("\"network\""),
            "{label}: no addresses in a patient's view: {la}"
        );
        assert!(
            !la.to_string().contains(reason.text()),
            "{label}: no reason"
        );
        let normal: Vec<&Value> = evs
            .iter()
            .filter(|e| agent_display(e) == prac_name)
            .collect();
        assert_eq!(
            normal.len(),
            1,
            "{label}: the care clinician's read, by name: {la}"
        );
        let n = normal[0];
        assert_eq!(agent_role(n), "clinician");
        assert_eq!(n["action"], "R");
        assert_eq!(n["subtype"][0]["code"], "read");
        assert_eq!(n["outcome"], "0");
        assert_eq!(purposes(n), ["TREAT"]);
        assert!(!is_btg(n), "{label}: a normal access is not flagged: {n}");
        assert!(n["recorded"].as_str().is_some_and(|t| t.ends_with('Z')));
        let btg: Vec<&Value> = evs
            .iter()
            .filter(|e| agent_display(e) == other.username)
            .collect();
        assert_eq!(
            btg.len(),
            1,
            "{label}: the break-the-glass read, by username: {la}"
        );
        let g = btg[0];
        assert_eq!(agent_role(g), "clinician");
        assert!(is_btg(g), "{label}: break-the-glass is flagged BTG: {g}");
        assert!(purposes(g).contains(&"ETREAT".to_owned()), "{g}");
        assert_eq!(g["outcome"], "0");
        let care_id = agent_id(n).to_owned();
        let other_id = agent_id(g).to_owned();
        assert!(!care_id.is_empty() && care_id != other_id);

        // ---- Nobody else reads A's log: B, the clinicians, admin, auditor-less apps.
        let r = b_api.get(&log_a).await;
        r.assert_outcome(403, &["access denied"]);
        // The same refusal for a patient that does not exist.
        let r2 = b_api.get("Patient/no-such-patient/$access-log").await;
        assert_eq!((r2.status, r2.diagnostics()), (403, r.diagnostics()));
        for (who, api) in [
            ("care clinician", &care_api),
            ("other clinician", &other_api),
            ("admin", &admin_api),
            ("system app", &sys),
        ] {
            let r = api.get(&log_a).await;
            assert_eq!(r.status, 403, "{label}: {who} reads A's access log: {r:?}");
        }
        // B's own log has none of A's accesses.
        let lb = searchset(
            &b_api.get(&format!("Patient/{b}/$access-log")).await,
            "B's log",
        );
        for e in events(&lb) {
            assert!(!about(&e, &format!("Patient/{a}")), "{label}: {e}");
            assert!(about(&e, &format!("Patient/{b}")), "{label}: {e}");
        }
        assert!(
            !events(&lb).iter().any(|e| agent_display(e) == prac_name),
            "{label}: A's care clinician never touched B"
        );
        // The auditor may read A's log (with addresses).
        let r = aud.get(&log_a).await;
        let al = searchset(&r, "A's log by the auditor");
        assert!(al.to_string().contains("\"network\""), "{label}: {al}");

        // ---- The AuditEvent API: auditors only.
        for (who, api) in [
            ("patient A", &a_api),
            ("care clinician", &care_api),
            ("admin", &admin_api),
            ("system app", &sys),
        ] {
            for path in [
                "AuditEvent".to_owned(),
                format!("AuditEvent?patient={a}"),
                "AuditEvent/1".to_owned(),
            ] {
                let r = api.get(&path).await;
                assert_eq!(r.status, 403, "{label}: {who} {path}: {r:?}");
            }
        }

        let by_patient = searchset(
            &aud.get(&query("AuditEvent", &[("patient", &a)])).await,
            "patient",
        );
        let evs = events(&by_patient);
        assert!(evs.iter().all(|e| about(e, &format!("Patient/{a}"))));
        assert!(evs.iter().any(|e| agent_id(e) == care_id));
        assert!(evs.iter().any(|e| agent_id(e) == other_id && is_btg(e)));
        assert!(by_patient["total"].as_u64().unwrap() >= evs.len() as u64);
        // Patient/<id> means the same.
        let same = searchset(
            &aud.get(&query(
                "AuditEvent",
                &[("patient", &format!("Patient/{a}"))],
            ))
            .await,
            "Patient/id",
        );
        assert!(ids(&same).iter().any(|i| ids(&by_patient).contains(i)));

        let by_agent = searchset(
            &aud.get(&query("AuditEvent", &[("agent", &care_id)])).await,
            "agent",
        );
        let evs = events(&by_agent);
        assert!(
            !evs.is_empty() && evs.iter().all(|e| agent_id(e) == care_id),
            "{by_agent}"
        );
        assert!(evs.iter().all(|e| agent_display(e) == prac_name));

        let reads = searchset(&aud.get("AuditEvent?action=R").await, "action");
        let evs = events(&reads);
        assert!(!evs.is_empty() && evs.iter().all(|e| e["action"] == "R"));
        let execs = searchset(&aud.get("AuditEvent?action=E").await, "action E");
        assert!(events(&execs).iter().all(|e| e["action"] == "E"));
        assert!(
            events(&execs).iter().any(|e| e["type"]["code"] == "110114"),
            "{label}: logins are execute events of type User Authentication"
        );

        let denied = searchset(&aud.get("AuditEvent?outcome=4").await, "outcome");
        let evs = events(&denied);
        assert!(!evs.is_empty() && evs.iter().all(|e| e["outcome"] == "4"));
        assert!(
            evs.iter().any(|e| agent_id(e) == other_id),
            "{label}: the refused read of B is there: {denied}"
        );
        let combined = searchset(
            &aud.get(&query(
                "AuditEvent",
                &[("agent", &other_id), ("outcome", "0"), ("action", "R")],
            ))
            .await,
            "combined",
        );
        assert!(
            events(&combined)
                .iter()
                .all(|e| agent_id(e) == other_id && e["outcome"] == "0" && e["action"] == "R")
        );

        let secs = i64::try_from(unix_now()).unwrap();
        let today = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap()
            .date()
            .to_string();
        let recent = searchset(
            &aud.get(&query("AuditEvent", &[("date", &format!("ge{today}"))]))
                .await,
            "date",
        );
        let evs = events(&recent);
        assert!(!evs.is_empty());
        assert!(
            evs.iter()
                .all(|e| e["recorded"].as_str().unwrap() >= today.as_str()),
            "{recent}"
        );
        let old = searchset(
            &aud.get(&query(
                "AuditEvent",
                &[("date", "ge2000-01-01"), ("date", "lt2000-02-01")],
            ))
            .await,
            "old",
        );
        assert_eq!(old["total"], 0, "{label}: {old}");
        assert!(events(&old).is_empty());

        // Paging one at a time: no duplicates, newest first, everything seen. (Each search
        // with patient=A is itself an event about A, newer than the cursor.)
        let first_ids = ids(&by_patient);
        let paged = all_pages(
            &aud,
            &query("AuditEvent", &[("patient", &a), ("_count", "1")]),
        )
        .await;
        let unique: BTreeSet<u64> = paged.iter().copied().collect();
        assert_eq!(
            unique.len(),
            paged.len(),
            "{label}: duplicates in {paged:?}"
        );
        assert!(paged.windows(2).all(|w| w[0] > w[1]), "{paged:?}");
        for id in &first_ids {
            assert!(unique.contains(id), "{label}: {id} not paged: {paged:?}");
        }

        // One event by id.
        let one = aud.get(&format!("AuditEvent/{}", first_ids[0])).await;
        one.assert_status(200);
        assert_eq!(one.json()["resourceType"], "AuditEvent");
        assert_eq!(one.json()["id"], first_ids[0].to_string());
        aud.get("AuditEvent/999999999")
            .await
            .assert_outcome(404, &["AuditEvent"]);

        // Bad parameters: 400 naming the parameter, never echoing the value.
        for (q, name) in [
            ("AuditEvent?date=notadate", "date"),
            ("AuditEvent?outcome=9", "outcome"),
            ("AuditEvent?unknown=1", "unknown"),
            ("AuditEvent?action=Q", "action"),
            ("AuditEvent?_cursor=x", "_cursor"),
        ] {
            let r = aud.get(q).await;
            r.assert_outcome(400, &[name]);
        }
        // Authorization comes first: B learns nothing about parameters of A's log.
        let r = b_api.get(&format!("{log_a}?agent=x")).await;
        assert_eq!(r.status, 403, "{label}: {r:?}");
        aud.get(&format!("{log_a}?agent=x"))
            .await
            .assert_outcome(400, &["agent"]);
        a_api
            .get(&format!("{log_a}?date=notadate"))
            .await
            .assert_outcome(400, &["date"]);

        // ---- Integrity: move an event about B into A's compartment by its columns only.
        let b_events = searchset(
            &aud.get(&query("AuditEvent", &[("patient", &b), ("_count", "500")]))
                .await,
            "B's events",
        );
        let moved = ids(&b_events)[0];
        let db = server.db().await;
        let done = sqlx::query("UPDATE audit_entries SET patient = $1 WHERE seq = $2")
            .bind(a.clone())
            .bind(i64::try_from(moved).unwrap())
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        // Queries by patient go through the entry's patient rows: move that one too.
        let done = sqlx::query(
            "UPDATE audit_entry_patients SET patient = $1 WHERE seq = $2 AND patient = $3",
        )
        .bind(a.clone())
        .bind(i64::try_from(moved).unwrap())
        .bind(b.clone())
        .execute(&db)
        .await
        .unwrap();
        assert_eq!(done.rows_affected(), 1);
        db.close().await;
        let la = searchset(&a_api.get(&format!("{log_a}?_count=500")).await, "A's log");
        assert!(
            !ids(&la).contains(&moved),
            "{label}: a row moved by its column is not shown in A's log: {la}"
        );
        assert!(
            la.to_string().contains("could not be shown"),
            "{label}: {la}"
        );
        let au = searchset(
            &aud.get(&query("AuditEvent", &[("patient", &a), ("_count", "500")]))
                .await,
            "auditor, after",
        );
        assert!(!ids(&au).contains(&moved));
        assert!(
            au.to_string().contains(&format!("seq {moved}")),
            "{label}: the auditor is told which entry was left out: {au}"
        );
        // Read by id: an integrity failure, not the altered claim.
        aud.get(&format!("AuditEvent/{moved}"))
            .await
            .assert_outcome(500, &["integrity"]);
        let logs = server.stderr_text();
        assert!(logs.contains("audit entry left out"), "{label}: logged");
        assert!(
            !logs.contains(reason.text()),
            "{label}: a reason reached the logs"
        );
        for name in [&care.username, &other.username, &pat_a.username] {
            assert!(
                !logs.contains(name.as_str()),
                "{label}: a username reached the logs"
            );
        }
        server.assert_no_panic();
    }
}
