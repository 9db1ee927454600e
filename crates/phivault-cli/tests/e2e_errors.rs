//! End-to-end error answers, on every backend: each client mistake (and a database that is
//! down) answers an OperationOutcome with the contract's status and a diagnostics message
//! naming the problem, never a panic, and leaves the stored data unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use phivault_testkit::fixtures::{self, BundleBuilder};
use phivault_testkit::{Api, Backend, Forwarder, Marker, Server, backends, postgres_target, query};
use reqwest::Method;
use serde_json::{Map, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

const MAX_BODY: usize = 4096;
const MAX_ENTRIES: usize = 5;

/// What must not change: the ids of every resource per type, and each seed's current
/// body and number of versions.
async fn snapshot(s: &Api, seeds: &[String]) -> Value {
    let mut out = Map::new();
    for rtype in ["Patient", "Observation", "Condition", "AllergyIntolerance"] {
        let ids = s.search_ids(&query(rtype, &[("_count", "1000")])).await;
        out.insert(rtype.to_owned(), json!(ids));
    }
    for seed in seeds {
        let r = s.get(seed).await;
        let body = if r.status == 200 {
            r.json()
        } else {
            Value::Null
        };
        let h = s.get(&format!("{seed}/_history")).await;
        assert_eq!(h.status, 200, "history of {seed}: {h:?}");
        let versions = h.json()["entry"].as_array().map(Vec::len);
        out.insert(
            seed.clone(),
            json!({ "status": r.status, "body": body, "versions": versions }),
        );
    }
    Value::Object(out)
}

struct Fixture {
    server: Server,
    seeds: Vec<String>,
    before: Value,
    /// Patient, version 2.
    patient: String,
    /// Deleted Patient.
    deleted: String,
}

impl Fixture {
    async fn new(backend: &Backend) -> Fixture {
        let server = Server::start(
            BIN,
            backend,
            &[
                "--max-body-bytes",
                &MAX_BODY.to_string(),
                "--max-bundle-entries",
                &MAX_ENTRIES.to_string(),
            ],
        )
        .await;
        let s = server.api().clone();
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Seed"))
            .await;
        let patient = format!("Patient/{pid}");
        let mut body = s.get(&patient).await.json();
        body["gender"] = json!("male");
        s.put_json(&patient, &body).await.assert_status(200);
        let oid = s
            .create(&fixtures::observation(
                &patient,
                fixtures::coding(Some(fixtures::LOINC), "8867-4", "Heart rate"),
                "2021-03-04T10:00:00Z",
            ))
            .await;
        let did = s
            .create(&fixtures::patient(Marker::name().text(), "Deleted"))
            .await;
        let deleted = format!("Patient/{did}");
        let r = s.delete(&deleted).await;
        assert!(matches!(r.status, 200 | 204), "{r:?}");
        let seeds = vec![
            patient.clone(),
            format!("Observation/{oid}"),
            deleted.clone(),
        ];
        let before = snapshot(&s, &seeds).await;
        Fixture {
            server,
            seeds,
            before,
            patient,
            deleted,
        }
    }

    async fn unchanged(&self, case: &str) {
        let now = snapshot(self.server.api(), &self.seeds).await;
        assert_eq!(now, self.before, "{case}: stored data changed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_invalid_bodies() {
    for backend in backends() {
        let f = Fixture::new(&backend).await;
        let s = f.server.api();
        let fhir = "application/fhir+json";
        let broken = b"{\"resourceType\": \"Patient\", \"name\": [".to_vec();

        // malformed JSON: create, update, bundle
        let r = Api::send(s.raw_request(Method::POST, "Patient", fhir, broken.clone())).await;
        r.assert_outcome(400, &["json"]);
        let r = Api::send(s.raw_request(Method::PUT, &f.patient, fhir, broken.clone())).await;
        r.assert_outcome(400, &["json"]);
        let r = Api::send(s.raw_request(Method::POST, "", fhir, broken)).await;
        r.assert_outcome(400, &["json"]);
        f.unchanged("malformed JSON").await;

        // wrong resourceType (the contract does not name the status: 400 or 422)
        let obs = fixtures::observation(&f.patient, fixtures::coding(None, "x", "x"), "2021");
        let r = s.post_json("Patient", &obs).await;
        assert!(matches!(r.status, 400 | 422), "wrong resourceType: {r:?}");
        r.assert_outcome(r.status, &["resourceType", "Observation"]);
        let mut obs_put = obs.clone();
        obs_put["id"] = json!(f.patient.trim_start_matches("Patient/"));
        let r = s.put_json(&f.patient, &obs_put).await;
        assert!(matches!(r.status, 400 | 422), "wrong resourceType: {r:?}");
        r.assert_outcome(r.status, &["resourceType", "Observation"]);
        f.unchanged("wrong resourceType").await;

        // id in the body differs from the URL: 400 (FHIR R4)
        let mut body = s.get(&f.patient).await.json();
        body["id"] = json!("some-other-id");
        let r = s.put_json(&f.patient, &body).await;
        r.assert_outcome_any(
            400,
            &["some-other-id", "does not match", "mismatch", "differ"],
        );
        r.assert_outcome(400, &["id"]);
        f.unchanged("id mismatch").await;

        // bodies that fail FHIR validation: 422 naming the element, never echoing the value
        let secret = Marker::name();
        let cases = [
            (
                json!({ "resourceType": "Patient", "favouriteColour": "blue" }),
                "favouriteColour",
            ),
            (
                json!({ "resourceType": "Patient", "gender": secret.text() }),
                "gender",
            ),
            (
                json!({ "resourceType": "Patient", "birthDate": secret.text() }),
                "birthDate",
            ),
            (
                json!({ "resourceType": "Patient", "name": { "family": "x" } }),
                "name",
            ),
        ];
        for (body, element) in cases {
            let r = s.post_json("Patient", &body).await;
            r.assert_outcome(422, &[element]);
            assert!(
                !r.text.contains(secret.core()),
                "an error message must not echo element values (PHI): {r:?}"
            );
        }
        f.unchanged("invalid bodies").await;

        // body over the configured limit: 413
        let mut big = fixtures::patient(Marker::name().text(), "Big");
        big["name"][0]["given"] = json!(["A".repeat(MAX_BODY * 2)]);
        let r = s.post_json("Patient", &big).await;
        r.assert_outcome_any(
            413,
            &["limit", "too large", "exceeds", &MAX_BODY.to_string()],
        );
        let r = s.put_json(&f.patient, &big).await;
        r.assert_outcome_any(
            413,
            &["limit", "too large", "exceeds", &MAX_BODY.to_string()],
        );
        f.unchanged("body over the limit").await;

        // too many Bundle entries: 413, for transactions and batches
        let fam = Marker::name();
        for mut b in [BundleBuilder::transaction(), BundleBuilder::batch()] {
            for i in 0..=MAX_ENTRIES {
                b.post(json!({ "resourceType": "Patient", "name": [{ "family": fam.text(), "given": [format!("E{i}")] }] }));
            }
            let body = b.build();
            assert!(
                body.to_string().len() < MAX_BODY,
                "the bundle itself is small"
            );
            let r = s.post_json("", &body).await;
            r.assert_outcome(413, &["entries"]);
            assert!(
                r.diagnostics().contains(&MAX_ENTRIES.to_string()),
                "the message names the limit: {r:?}"
            );
        }
        f.unchanged("too many Bundle entries").await;

        // not JSON at all: 415
        let r = Api::send(s.raw_request(
            Method::POST,
            "Patient",
            "text/plain",
            b"family=Doe".to_vec(),
        ))
        .await;
        r.assert_outcome_any(415, &["content type", "content-type", "media type", "json"]);
        f.unchanged("unsupported media type").await;

        f.server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_missing_deleted_and_conflicts() {
    for backend in backends() {
        let f = Fixture::new(&backend).await;
        let s = f.server.api();
        let body = s.get(&f.patient).await.json();
        let pid = f.patient.trim_start_matches("Patient/").to_owned();

        // unknown type: 404 naming it
        s.get("Spaceship/1")
            .await
            .assert_outcome(404, &["Spaceship"]);
        s.get("Spaceship?name=x")
            .await
            .assert_outcome(404, &["Spaceship"]);
        let ship = json!({ "resourceType": "Spaceship", "name": "x" });
        s.post_json("Spaceship", &ship)
            .await
            .assert_outcome(404, &["Spaceship"]);
        // a Bundle entry of an unknown type
        let mut b = BundleBuilder::transaction();
        b.post(ship);
        let r = s.post_json("", &b.build()).await;
        assert!(matches!(r.status, 400 | 404), "{r:?}");
        // names the entry and the problem (the type name itself is optional here)
        r.assert_outcome(r.status, &["entry[0]", "type"]);
        f.unchanged("unknown type").await;

        // malformed id: 400
        s.get("Patient/bad_id!").await.assert_outcome(400, &["id"]);
        let mut no_id = body.clone();
        no_id.as_object_mut().expect("object").remove("id");
        let r = s.put_json("Patient/bad_id!", &no_id).await;
        r.assert_outcome(400, &["id"]);
        f.unchanged("malformed id").await;

        // unknown id / version: 404 naming it
        s.get("Patient/no-such-id")
            .await
            .assert_outcome(404, &["no-such-id"]);
        s.get("Patient/no-such-id/_history")
            .await
            .assert_outcome(404, &["no-such-id"]);
        s.get(&format!("{}/_history/99", f.patient))
            .await
            .assert_outcome(404, &[&pid]);
        s.delete("Patient/no-such-id")
            .await
            .assert_outcome(404, &["no-such-id"]);
        f.unchanged("unknown id").await;

        // deleted: 410
        let r = s.get(&f.deleted).await;
        r.assert_outcome(410, &["deleted"]);
        f.unchanged("deleted").await;

        // stale If-Match: 412 naming the versions
        let r = s.put_json_if_match(&f.patient, &body, 1).await;
        r.assert_outcome(412, &["version"]);
        let mut fresh = body.clone();
        fresh["id"] = json!("not-yet-there");
        let r = s
            .put_json_if_match("Patient/not-yet-there", &fresh, 1)
            .await;
        r.assert_outcome(412, &["version"]);
        f.unchanged("stale If-Match").await;

        // method not allowed: 405
        let r = Api::send(s.json_request(Method::PATCH, &f.patient, &body)).await;
        r.assert_outcome_any(405, &["patch", "method"]);
        f.unchanged("method not allowed").await;

        // search: unknown parameter, unknown modifier, malformed values: 400
        s.get(&query("Patient", &[("shoe-size", "42")]))
            .await
            .assert_outcome(400, &["shoe-size"]);
        let r = Api::send(s.form_request("Patient/_search", &[("shoe-size", "42")])).await;
        r.assert_outcome(400, &["shoe-size"]);
        s.get(&query("Patient", &[("family:contains", "abc")]))
            .await
            .assert_outcome(400, &["family"]);
        s.get(&query("Patient", &[("birthdate", "not-a-date")]))
            .await
            .assert_outcome(400, &["birthdate"]);
        s.get(&query("Observation", &[("date", "2021-13-45")]))
            .await
            .assert_outcome(400, &["date"]);
        s.get(&query("Patient", &[("_count", "many")]))
            .await
            .assert_outcome(400, &["_count"]);
        // lenient handling ignores unknown parameters, not malformed values
        let r = Api::send(
            s.request(
                Method::GET,
                &query("Patient", &[("birthdate", "not-a-date")]),
            )
            .header("Prefer", "handling=lenient"),
        )
        .await;
        r.assert_outcome(400, &["birthdate"]);
        f.unchanged("bad search").await;

        // version conflicts between concurrent writers: every answer is 200 or 409 (with an
        // OperationOutcome naming the resource), and the versions add up
        let writers: Vec<_> = (0..12)
            .map(|i| {
                let api = s.clone();
                let mut b = body.clone();
                let path = f.patient.clone();
                b["name"][0]["given"] = json!([format!("Writer{i}")]);
                tokio::spawn(async move { api.put_json(&path, &b).await })
            })
            .collect();
        let mut ok = 0;
        for w in writers {
            let r = w.await.expect("writer task");
            match r.status {
                200 => ok += 1,
                409 => {
                    r.assert_outcome(409, &[&pid]);
                }
                _ => panic!("a concurrent update answers 200 or 409: {r:?}"),
            }
        }
        eprintln!(
            "{}: concurrent updates: {ok} acknowledged, {} conflicts (409)",
            backend.name(),
            12 - ok
        );
        let h = s.get(&format!("{}/_history", f.patient)).await.json();
        assert_eq!(
            h["entry"].as_array().map(Vec::len),
            Some(2 + ok),
            "one new version per acknowledged update"
        );
        f.server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_is_required() {
    for backend in backends() {
        let f = Fixture::new(&backend).await;
        let s = f.server.api();
        let token = s.token().to_owned();
        let body = fixtures::patient(Marker::name().text(), "Anon");
        let bundle = {
            let mut b = BundleBuilder::transaction();
            b.post(body.clone());
            b.build()
        };
        let bad_headers: Vec<Option<String>> = vec![
            None,
            Some("Bearer wrong-token".to_owned()),
            Some(format!("Bearer {token}x")),
            Some(format!("Bearer {}", &token[..token.len() - 1])),
            Some(format!("Basic {token}")),
            Some(token.clone()),
            Some("Bearer".to_owned()),
        ];
        for h in &bad_headers {
            let requests = [
                s.anonymous(Method::GET, &f.patient),
                s.anonymous(Method::GET, &query("Patient", &[("gender", "male")])),
                s.anonymous(Method::POST, "Patient")
                    .header("Content-Type", "application/fhir+json")
                    .body(body.to_string()),
                s.anonymous(Method::PUT, &f.patient)
                    .header("Content-Type", "application/fhir+json")
                    .body(body.to_string()),
                s.anonymous(Method::DELETE, &f.patient),
                s.anonymous(Method::POST, "")
                    .header("Content-Type", "application/fhir+json")
                    .body(bundle.to_string()),
            ];
            for rb in requests {
                let rb = match h {
                    Some(v) => rb.header("Authorization", v),
                    None => rb,
                };
                let r = Api::send(rb).await;
                r.assert_outcome_any(401, &["token", "authoriz", "authent", "bearer"]);
                assert!(
                    !r.text.contains(&token),
                    "a 401 never echoes credentials: {r:?}"
                );
            }
        }
        // The CapabilityStatement is public (FHIR and SMART clients read it before they have
        // a token); every other route needs one.
        let r = Api::send(s.anonymous(Method::GET, "metadata")).await;
        r.assert_status(200);
        assert_eq!(r.json()["resourceType"], "CapabilityStatement", "{r:?}");
        f.unchanged("unauthenticated requests").await;
        assert!(
            !f.server.stderr_text().contains(&token),
            "the token never reaches the logs"
        );
        f.server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn database_down_answers_503_and_recovers() {
    for backend in backends() {
        let Backend::Postgres { url } = &backend else {
            continue; // SQLite is a file: it cannot go away like a server.
        };
        let mut fwd = Forwarder::start(&postgres_target(url)).await;
        let server = Server::start_proxied(BIN, &backend, &[], fwd.addr()).await;
        let s = server.api().clone();
        let family = Marker::name();
        let id = s.create(&fixtures::patient(family.text(), "Before")).await;
        let path = format!("Patient/{id}");
        let before = s.get(&path).await.json();

        fwd.stop().await;
        let started = Instant::now();
        let r = s.get(&path).await;
        r.assert_outcome(503, &["database"]);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "503 within the acquire timeout, not a hang: {:?}",
            started.elapsed()
        );
        let lost = Marker::name();
        let r = s
            .post_json("Patient", &fixtures::patient(lost.text(), "During"))
            .await;
        r.assert_outcome(503, &["database"]);
        let r = s.get(&query("Patient", &[("family", family.text())])).await;
        r.assert_outcome(503, &["database"]);

        fwd.resume().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.get(&path).await;
            if r.status == 200 {
                assert_eq!(r.json(), before, "data intact after the outage");
                break;
            }
            assert_eq!(r.status, 503, "while recovering: {r:?}");
            assert!(
                Instant::now() < deadline,
                "the server did not recover within 20 s: {r:?}\nstderr:\n{}",
                server.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let found = s
            .search_ids(&query("Patient", &[("family", lost.text())]))
            .await;
        assert!(found.is_empty(), "the refused create was not stored");
        s.create(&fixtures::patient(Marker::name().text(), "After"))
            .await;
        server.assert_no_panic();
    }
}
