//! Every patient whose data a response returns finds the request in their access log, on
//! every backend: a clinician's search across their patients, a search of `Patient` by `_id`,
//! a system app's bulk search, `$everything` and a batch Bundle of reads. A patient's own view
//! of a search that returned several patients names only them. A patient row deleted in the
//! database to hide an access is named by `phivault audit verify`. The access log names a
//! clinician as their Practitioner read at the time of the access, whatever they edit later,
//! and the entry holds that Practitioner's version id, not the name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{self, BundleBuilder};
use phivault_testkit::{Marker, Resp, Server, backends, query, random_username};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

fn searchset(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    r.json()
}

/// The AuditEvents of a Bundle whose first agent is `agent` (identifier value) and whose
/// subtype is `subtype`.
fn by(bundle: &Value, agent: &str, subtype: &str) -> Vec<Value> {
    phivault_testkit::search_matches(bundle, "AuditEvent")
        .into_iter()
        .filter(|e| {
            e["agent"][0]["who"]["identifier"]["value"] == agent
                && e["subtype"][0]["code"] == subtype
        })
        .collect()
}

fn patients_named(e: &Value) -> Vec<String> {
    e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["what"]["reference"].as_str())
        .filter(|r| r.starts_with("Patient/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_patient_a_response_returns_sees_it_in_their_access_log() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let mut patients = Vec::new();
        for given in ["Alpha", "Beta", "Gamma"] {
            let p = sys
                .create(&fixtures::patient(Marker::name().text(), given))
                .await;
            let code = fixtures::coding(Some("http://loinc.org"), "8867-4", "Heart rate");
            sys.create(&fixtures::observation(
                &format!("Patient/{p}"),
                code,
                "2024-05-01T10:00:00Z",
            ))
            .await;
            patients.push(p);
        }
        let (a, b, c) = (&patients[0], &patients[1], &patients[2]);

        // A clinician (linked to a Practitioner) on A's and B's care team; an auditor; patient
        // A's account.
        let family = format!("Quill{}", &random_username()[2..8]);
        let prac = sys.create(&fixtures::practitioner(&family)).await;
        let clin_name = random_username();
        let pw = server.create_user(&clin_name, "clinician").await;
        server.link_practitioner(&clin_name, &prac).await;
        let clin = server.sign_in(&clin_name, "clinician", &pw, false).await;
        server.grant(&clin_name, a, &[], None).await;
        server.grant(&clin_name, b, &[], None).await;
        let aud_name = random_username();
        let pw = server.create_user(&aud_name, "auditor").await;
        let aud = server.sign_in(&aud_name, "auditor", &pw, false).await;
        let pa_name = random_username();
        let pw = server.create_user(&pa_name, "patient").await;
        server.link_patient(&pa_name, a).await;
        let pa = server.sign_in(&pa_name, "patient", &pw, false).await;
        let clin_api = server.api_as(&clin.token);
        let aud_api = server.api_as(&aud.token);
        let a_api = server.api_as(&pa.token);

        let log = |p: &str| format!("Patient/{p}/$access-log?_count=500");
        let agent_of = |bundle: &Value, subtype: &str| -> Option<String> {
            phivault_testkit::search_matches(bundle, "AuditEvent")
                .into_iter()
                .find(|e| e["subtype"][0]["code"] == subtype)
                .and_then(|e| {
                    e["agent"][0]["who"]["identifier"]["value"]
                        .as_str()
                        .map(str::to_owned)
                })
        };

        // ---- A clinician's search across patients: A and B, not C.
        let hits = clin_api.search_ids("Observation").await;
        assert_eq!(hits.len(), 2, "{label}: {hits:?}");
        let la = searchset(&aud_api.get(&log(a)).await, "A's log");
        let clin_id = agent_of(&la, "search-type").expect("the search is in A's log");
        for (p, expect) in [(a, 1), (b, 1), (c, 0)] {
            let l = searchset(&aud_api.get(&log(p)).await, "a log");
            assert_eq!(
                by(&l, &clin_id, "search-type").len(),
                expect,
                "{label}: the clinician's search in the log of {p}: {l}"
            );
        }
        // The auditor sees every patient the search returned.
        let l = searchset(&aud_api.get(&log(b)).await, "B's log");
        let mut named = patients_named(&by(&l, &clin_id, "search-type")[0]);
        named.sort();
        let mut expect = vec![format!("Patient/{a}"), format!("Patient/{b}")];
        expect.sort();
        assert_eq!(named, expect, "{label}");
        // Patient A's own view of it names A only.
        let own = searchset(&a_api.get(&log(a)).await, "A's own log");
        let mine = by(&own, &clin_id, "search-type");
        assert_eq!(mine.len(), 1, "{label}: {own}");
        assert_eq!(
            patients_named(&mine[0]),
            [format!("Patient/{a}")],
            "{label}"
        );
        assert!(
            !own.to_string().contains(b.as_str()),
            "{label}: B named in A's view"
        );

        // ---- Patient?_id=B by the clinician.
        let before = by(
            &searchset(&aud_api.get(&log(b)).await, "B"),
            &clin_id,
            "search-type",
        );
        clin_api.search_ids(&query("Patient", &[("_id", b)])).await;
        let after = by(
            &searchset(&aud_api.get(&log(b)).await, "B"),
            &clin_id,
            "search-type",
        );
        assert_eq!(after.len(), before.len() + 1, "{label}: Patient?_id=B");

        // ---- A system app's bulk search: every patient.
        let sys_hits = sys.search_ids("Observation?_count=100").await;
        assert!(sys_hits.len() >= 3, "{label}");
        let lc = searchset(&aud_api.get(&log(c)).await, "C's log");
        let sys_id = phivault_testkit::search_matches(&lc, "AuditEvent")
            .into_iter()
            .filter(|e| e["subtype"][0]["code"] == "search-type")
            .filter_map(|e| {
                e["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .map(str::to_owned)
            })
            .next()
            .expect("the system app's search is in C's log");
        for p in [a, b, c] {
            let l = searchset(&aud_api.get(&log(p)).await, "a log");
            assert!(!by(&l, &sys_id, "search-type").is_empty(), "{label}: {p}");
        }

        // ---- $everything of A, by the clinician: one more operation entry in A's log.
        let operations = |l: &Value| by(l, &clin_id, "operation").len();
        let before = operations(&searchset(&aud_api.get(&log(a)).await, "A's log"));
        searchset(
            &clin_api.get(&format!("Patient/{a}/$everything")).await,
            "$everything",
        );
        let la = searchset(&aud_api.get(&log(a)).await, "A's log");
        assert_eq!(
            operations(&la),
            before + 1,
            "{label}: $everything in A's log: {la}"
        );

        // ---- A batch of reads of A's and B's records: both logs have the Bundle.
        let mut batch = BundleBuilder::batch();
        batch.get(&format!("Patient/{a}"));
        batch.get(&format!("Patient/{b}"));
        let r = clin_api.post_json("", &batch.build()).await;
        assert_eq!(r.status, 200, "{label}: {r:?}");
        for p in [a, b] {
            let l = searchset(&aud_api.get(&log(p)).await, "a log");
            let bundles = phivault_testkit::search_matches(&l, "AuditEvent")
                .into_iter()
                .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == clin_id.as_str())
                // A Bundle request (`POST /fhir`) has no restful subtype.
                .filter(|e| e["subtype"].is_null())
                .count();
            assert_eq!(bundles, 1, "{label}: the batch in the log of {p}: {l}");
        }

        // ---- The name at the time: the clinician renames their Practitioner afterwards.
        let renamed = serde_json::json!({
            "resourceType": "Practitioner",
            "id": prac,
            "name": [{ "family": "Nobody", "given": ["Someone"] }],
        });
        let r = clin_api
            .put_json(&format!("Practitioner/{prac}"), &renamed)
            .await;
        assert_eq!(
            r.status, 200,
            "{label}: a clinician edits their Practitioner: {r:?}"
        );
        let own = searchset(&a_api.get(&log(a)).await, "A's own log");
        let names: Vec<String> = by(&own, &clin_id, "search-type")
            .iter()
            .map(|e| {
                e["agent"][0]["who"]["display"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert!(!names.is_empty(), "{label}: {own}");
        assert!(
            names.iter().all(|n| *n == format!("Test {family}")),
            "{label}: the name at the time of the access: {names:?}"
        );
        // The entry holds the Practitioner version, never the name.
        let db = server.db().await;
        let bodies: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT body FROM audit_entries WHERE actor = $1")
                .bind(clin_id.clone())
                .fetch_all(&db)
                .await
                .unwrap();
        db.close().await;
        let all: String = bodies
            .iter()
            .map(|(b,)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(all.contains(&format!("\"actor_ref\":\"Practitioner/{prac}/_history/1\"")));
        assert!(!all.contains(&family), "{label}: a name in an audit entry");

        // ---- Hiding the clinician's search from B's log in the database: `audit verify`
        // names the entry.
        let db = server.db().await;
        let done = sqlx::query(
            "DELETE FROM audit_entry_patients WHERE patient = $1 AND seq IN \
             (SELECT seq FROM audit_entries WHERE patient IS NULL AND actor = $2)",
        )
        .bind(b.clone())
        .bind(clin_id.clone())
        .execute(&db)
        .await
        .unwrap();
        assert!(done.rows_affected() >= 1, "{label}");
        db.close().await;
        let o = server.cli(&["audit", "verify"], None).await;
        // `FAILED: ...` on stdout names the altered column.
        assert_eq!(o.code, Some(1), "{label}: {}", o.stderr);
        assert!(
            o.stdout.contains("patients column"),
            "{label}: {}\n{}",
            o.stdout,
            o.stderr
        );
        server.assert_no_panic();
    }
}
