//! Integrity of stored data (DESIGN.md invariant 4), on every backend: rows altered directly
//! in the database (a flipped ciphertext byte, a ciphertext copied from another resource, an
//! older version replayed, the current pointer rolled back) are detected and reported as an
//! integrity failure (500 OperationOutcome), and none of the content is served, by read,
//! vread or search.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{self, LOINC, coding};
use phivault_testkit::{Api, Marker, Resp, Server, backends, query, scan_bytes, search_matches};
use serde_json::json;
use sqlx::{AnyPool, Row};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

async fn sealed(db: &AnyPool, rtype: &str, id: &str, version: i64) -> Vec<u8> {
    sqlx::query(
        "SELECT sealed FROM resource_versions WHERE rtype = $1 AND id = $2 AND version = $3",
    )
    .bind(rtype)
    .bind(id)
    .bind(version)
    .fetch_one(db)
    .await
    .unwrap_or_else(|e| panic!("no version row {rtype}/{id}/{version}: {e}"))
    .get::<Vec<u8>, _>("sealed")
}

async fn set_sealed(db: &AnyPool, rtype: &str, id: &str, version: i64, bytes: Vec<u8>) {
    let done = sqlx::query(
        "UPDATE resource_versions SET sealed = $1 WHERE rtype = $2 AND id = $3 AND version = $4",
    )
    .bind(bytes)
    .bind(rtype)
    .bind(id)
    .bind(version)
    .execute(db)
    .await
    .unwrap_or_else(|e| panic!("cannot tamper with {rtype}/{id}/{version}: {e}"));
    assert_eq!(done.rows_affected(), 1, "exactly one row altered");
}

async fn current_version(db: &AnyPool, rtype: &str, id: &str) -> i64 {
    sqlx::query("SELECT version FROM current_resources WHERE rtype = $1 AND id = $2")
        .bind(rtype)
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("no current row for {rtype}/{id}: {e}"))
        .get::<i64, _>("version")
}

/// The answer reports an integrity failure and shows none of `hidden`.
fn assert_integrity_failure(r: &Resp, hidden: &[&Marker], what: &str) {
    let hidden: Vec<Marker> = hidden.iter().map(|m| (*m).clone()).collect();
    let leaked = scan_bytes("response", r.text.as_bytes(), &hidden);
    assert!(
        leaked.is_empty(),
        "{what}: tampered content served: {leaked:?}: {r:?}"
    );
    assert_eq!(
        r.status, 500,
        "{what}: an integrity failure is a 500: {r:?}"
    );
    r.assert_outcome(500, &["integrity"]);
}

/// A search touching a tampered resource does not serve it: either the whole search fails
/// with an integrity failure, or the resource is left out and an OperationOutcome entry says
/// why. Either way none of `hidden` is in the answer.
fn assert_search_not_served(r: &Resp, tampered_id: &str, hidden: &[&Marker], what: &str) {
    let hidden_owned: Vec<Marker> = hidden.iter().map(|m| (*m).clone()).collect();
    let leaked = scan_bytes("response", r.text.as_bytes(), &hidden_owned);
    assert!(
        leaked.is_empty(),
        "{what}: tampered content served: {leaked:?}: {r:?}"
    );
    if r.status == 500 {
        r.assert_outcome(500, &["integrity"]);
        return;
    }
    assert_eq!(r.status, 200, "{what}: {r:?}");
    let b = r.json();
    let rtype = b["entry"][0]["resource"]["resourceType"]
        .as_str()
        .unwrap_or("Patient");
    assert!(
        search_matches(&b, rtype)
            .iter()
            .all(|x| x["id"] != tampered_id),
        "{what}: the tampered resource is served by search: {r:?}"
    );
    let reported = b["entry"].as_array().is_some_and(|entries| {
        entries.iter().any(|e| {
            e["resource"]["resourceType"] == "OperationOutcome"
                && e["resource"]
                    .to_string()
                    .to_lowercase()
                    .contains("integrity")
        })
    });
    assert!(
        reported,
        "{what}: a search that leaves out a tampered resource must report it: {r:?}"
    );
}

async fn new_patient(s: &Api) -> (String, Marker, Marker) {
    let family = Marker::name();
    let given = Marker::name();
    let id = s
        .create(&fixtures::patient(family.text(), given.text()))
        .await;
    (id, family, given)
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_ciphertext_byte_is_detected() {
    for backend in backends() {
        let mut server = Server::start(BIN, &backend, &[]).await;
        let (a, fa, ga) = new_patient(server.api()).await;
        let (b, _, _) = new_patient(server.api()).await;

        // altered while the server is down, found after the restart
        server.kill();
        let db = server.db().await;
        let v = current_version(&db, "Patient", &a).await;
        let mut bytes = sealed(&db, "Patient", &a, v).await;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        set_sealed(&db, "Patient", &a, v, bytes).await;
        db.close().await;
        server.restart().await;
        let s = server.api();

        let hidden = [&fa, &ga];
        let r = s.get(&format!("Patient/{a}")).await;
        assert_integrity_failure(&r, &hidden, "read");
        let r = s.get(&format!("Patient/{a}/_history/{v}")).await;
        assert_integrity_failure(&r, &hidden, "vread");
        let r = s.get(&format!("Patient/{a}/_history")).await;
        assert_integrity_failure(&r, &hidden, "history");
        let r = s.get(&query("Patient", &[("_id", &a)])).await;
        assert_search_not_served(&r, &a, &hidden, "search by _id");
        let r = s.get(&query("Patient", &[("family", fa.text())])).await;
        assert_search_not_served(&r, &a, &hidden, "search by family");
        // other data is served as before
        s.get(&format!("Patient/{b}")).await.assert_status(200);
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ciphertext_copied_from_another_resource_is_detected() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api();
        let db = server.db().await;

        // two patients: different data keys
        let (a, fa, ga) = new_patient(s).await;
        let (b, fb, gb) = new_patient(s).await;
        let a_body = s.get(&format!("Patient/{a}")).await.json();
        let va = current_version(&db, "Patient", &a).await;
        let vb = current_version(&db, "Patient", &b).await;
        let a_sealed = sealed(&db, "Patient", &a, va).await;
        set_sealed(&db, "Patient", &b, vb, a_sealed).await;

        let hidden = [&fa, &ga, &fb, &gb];
        let r = s.get(&format!("Patient/{b}")).await;
        assert_integrity_failure(&r, &hidden, "read of B holding A's ciphertext");
        let r = s.get(&query("Patient", &[("_id", &b)])).await;
        assert_search_not_served(&r, &b, &hidden, "search B by _id");
        let r = s.get(&query("Patient", &[("family", fb.text())])).await;
        assert_search_not_served(&r, &b, &hidden, "search B by family");
        let r = s.get(&format!("Patient/{a}")).await;
        r.assert_status(200);
        assert_eq!(r.json(), a_body, "A still reads fine");

        // two Observations of the same patient: same data key, only the binding of the
        // ciphertext to its id tells them apart
        let note1 = Marker::name();
        let note2 = Marker::name();
        let mut o = fixtures::observation(
            &format!("Patient/{a}"),
            coding(Some(LOINC), "8867-4", "Heart rate"),
            "2021-03-04T10:00:00Z",
        );
        o["note"] = json!([{ "text": note1.text() }]);
        let o1 = s.create(&o).await;
        o["note"] = json!([{ "text": note2.text() }]);
        let o2 = s.create(&o).await;
        let o1_sealed = sealed(&db, "Observation", &o1, 1).await;
        set_sealed(&db, "Observation", &o2, 1, o1_sealed).await;
        let hidden = [&note1, &note2];
        let r = s.get(&format!("Observation/{o2}")).await;
        assert_integrity_failure(&r, &hidden, "read of O2 holding O1's ciphertext");
        let r = s
            .get(&query(
                "Observation",
                &[("patient", &format!("Patient/{a}"))],
            ))
            .await;
        assert_search_not_served(&r, &o2, &[&note2], "search of A's observations");
        let r = s.get(&format!("Observation/{o1}")).await;
        r.assert_status(200);
        assert_eq!(r.json()["note"][0]["text"], note1.text());

        db.close().await;
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn older_version_replayed_as_current_is_detected() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api();
        let db = server.db().await;

        let (c, fc, g1) = new_patient(s).await;
        let path = format!("Patient/{c}");
        let v1 = s.get(&path).await.json();
        let g2 = Marker::name();
        let mut body = v1.clone();
        body["name"][0]["given"] = json!([g2.text()]);
        s.put_json(&path, &body).await.assert_status(200);
        assert_eq!(current_version(&db, "Patient", &c).await, 2);

        // version 1's ciphertext copied into version 2's row
        let old = sealed(&db, "Patient", &c, 1).await;
        set_sealed(&db, "Patient", &c, 2, old).await;
        let hidden = [&fc, &g1, &g2];
        let r = s.get(&path).await;
        assert_integrity_failure(&r, &hidden, "read of a replayed version");
        let r = s.get(&format!("{path}/_history/2")).await;
        assert_integrity_failure(&r, &hidden, "vread of a replayed version");
        let r = s.get(&query("Patient", &[("given", g2.text())])).await;
        assert_search_not_served(&r, &c, &hidden, "search by the current given name");
        let r = s.get(&format!("{path}/_history/1")).await;
        r.assert_status(200);
        assert_eq!(r.json(), v1, "the untouched version 1 still reads");
        db.close().await;
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn current_pointer_rolled_back_is_detected() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api();
        let db = server.db().await;

        let (d, fd, g1) = new_patient(s).await;
        let path = format!("Patient/{d}");
        let mut body = s.get(&path).await.json();
        let g2 = Marker::name();
        body["name"][0]["given"] = json!([g2.text()]);
        s.put_json(&path, &body).await.assert_status(200);

        // the current pointer set back to version 1 while version 2 still exists
        let done =
            sqlx::query("UPDATE current_resources SET version = 1 WHERE rtype = $1 AND id = $2")
                .bind("Patient")
                .bind(d.as_str())
                .execute(&db)
                .await
                .unwrap();
        assert_eq!(done.rows_affected(), 1);
        let hidden = [&fd, &g1, &g2];
        let r = s.get(&path).await;
        assert_integrity_failure(&r, &hidden, "read with a rolled-back pointer (not v1)");
        let r = s.get(&query("Patient", &[("_id", &d)])).await;
        assert_search_not_served(&r, &d, &hidden, "search with a rolled-back pointer");
        db.close().await;
        server.assert_no_panic();
    }
}
