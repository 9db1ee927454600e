//! Rectification and the patient's own erasure request (issue 6), on every backend:
//! `POST /fhir/Patient/{id}/$request-correction` records a `Task` for staff and leaves the
//! target unchanged; the care clinician finds the Task by search, corrects the target with a
//! normal update (history keeps the first version) and completes the Task; other patients get
//! a 403, a target outside the patient's compartment a 422 that is the same whether it exists
//! or not, a missing parameter a 400 naming it. `$request-erasure` records a Task the care
//! team sees; the patient's own `$erase` is refused, the admin's erases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{self, LOINC, coding};
use phivault_testkit::{Api, Marker, Server, backends, random_username};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// A user with `role` (linked to `patient` when given), signed in.
async fn person(server: &Server, role: &str, patient: Option<&str>) -> (String, Api) {
    let username = random_username();
    let password = server.create_user(&username, role).await;
    if let Some(p) = patient {
        server.link_patient(&username, p).await;
    }
    let account = server.sign_in(&username, role, &password, false).await;
    (username, server.api_as(&account.token))
}

fn correction(target: Option<&str>, description: Option<&str>) -> Value {
    let mut parameter = Vec::new();
    if let Some(t) = target {
        parameter.push(json!({ "name": "target", "valueReference": { "reference": t } }));
    }
    if let Some(d) = description {
        parameter.push(json!({ "name": "description", "valueString": d }));
    }
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

/// The audit entries about `patient`: (action, outcome).
async fn entries_about(server: &Server, patient: &str) -> Vec<(String, String)> {
    let db = server.db().await;
    let rows = sqlx::query("SELECT body FROM audit_entries WHERE patient = $1 ORDER BY seq")
        .bind(patient)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| {
            let body: Vec<u8> = r.get("body");
            let v: Value = serde_json::from_slice(&body).unwrap();
            (
                v["action"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn correction_and_erasure_requests() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();

        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Ada"))
            .await;
        let subject = format!("Patient/{p}");
        let obs = sys
            .create(&fixtures::observation(
                &subject,
                coding(Some(LOINC), "8867-4", "heart rate"),
                "2024-03-01T10:00:00Z",
            ))
            .await;
        let obs_path = format!("Observation/{obs}");
        let q = sys
            .create(&fixtures::patient(Marker::name().text(), "Bo"))
            .await;
        let q_obs = sys
            .create(&fixtures::observation(
                &format!("Patient/{q}"),
                coding(Some(LOINC), "8867-4", "heart rate"),
                "2024-03-02T10:00:00Z",
            ))
            .await;

        let (_, own) = person(&server, "patient", Some(&p)).await;
        let (_, other_patient) = person(&server, "patient", Some(&q)).await;
        let (care_name, care) = person(&server, "clinician", None).await;
        server.grant(&care_name, &p, &[], None).await;
        let (_, admin) = person(&server, "admin", None).await;

        let before = own.get(&obs_path).await;
        assert_eq!(before.status, 200, "{label}: {before:?}");
        let before = before.json();
        assert_eq!(before["meta"]["versionId"], "1", "{label}");

        // ---- The patient asks for a correction: a Task, the Observation untouched.
        let op = format!("Patient/{p}/$request-correction");
        let what = "The heart rate was taken after running, not at rest";
        let r = own
            .post_json(&op, &correction(Some(&obs_path), Some(what)))
            .await;
        assert_eq!(r.status, 201, "{label}: {r:?}");
        assert!(r.header("location").is_some_and(|l| l.contains("/Task/")));
        let task = r.json();
        assert_eq!(task["resourceType"], "Task");
        assert_eq!(task["status"], "requested");
        assert_eq!(task["intent"], "proposal");
        assert_eq!(
            task["code"]["coding"][0]["system"],
            "http://hl7.org/fhir/CodeSystem/task-code"
        );
        assert_eq!(task["code"]["coding"][0]["code"], "change");
        assert_eq!(task["focus"]["reference"], obs_path);
        assert_eq!(task["for"]["reference"], subject);
        assert_eq!(task["requester"]["reference"], subject);
        assert_eq!(task["note"][0]["text"], what);
        assert_eq!(task["note"][0]["authorReference"]["reference"], subject);
        assert!(task["authoredOn"].is_string());
        let task_id = task["id"].as_str().unwrap().to_owned();
        let unchanged = own.get(&obs_path).await.json();
        assert_eq!(unchanged, before, "{label}: the target is not changed");

        // ---- The care clinician finds it, corrects the Observation, completes the Task.
        let found = care
            .search_ids(&format!("Task?patient={subject}&status=requested"))
            .await;
        assert_eq!(found, vec![task_id.clone()], "{label}");
        let by_focus = care.search_ids(&format!("Task?focus={obs_path}")).await;
        assert_eq!(by_focus, vec![task_id.clone()], "{label}");
        let by_code = care
            .search_ids("Task?code=http://hl7.org/fhir/CodeSystem/task-code|change")
            .await;
        assert!(by_code.contains(&task_id), "{label}");
        let mut corrected = before.clone();
        corrected["note"] = json!([{ "text": "measured after exercise" }]);
        let r = care.put_json(&obs_path, &corrected).await;
        assert_eq!(r.status, 200, "{label}: {r:?}");
        assert_eq!(r.json()["meta"]["versionId"], "2");
        let v1 = care.get(&format!("{obs_path}/_history/1")).await;
        assert_eq!(v1.status, 200, "{label}: {v1:?}");
        assert!(v1.json().get("note").is_none(), "{label}: version 1 kept");
        let mut done = care.get(&format!("Task/{task_id}")).await.json();
        done["status"] = json!("completed");
        let r = care.put_json(&format!("Task/{task_id}"), &done).await;
        assert_eq!(r.status, 200, "{label}: {r:?}");
        assert!(
            care.search_ids(&format!("Task?patient={subject}&status=requested"))
                .await
                .is_empty(),
            "{label}"
        );

        // ---- Refusals.
        // Another patient, on this patient's record: 403, nothing looked up.
        let r = other_patient
            .post_json(&op, &correction(Some(&obs_path), Some("wrong")))
            .await;
        r.assert_outcome(403, &[]);
        // Staff do not file requests in the patient's name.
        let r = care
            .post_json(&op, &correction(Some(&obs_path), Some("wrong")))
            .await;
        r.assert_outcome(403, &[]);
        // A target in another compartment and one that does not exist: the same 422.
        let foreign = own
            .post_json(
                &op,
                &correction(Some(&format!("Observation/{q_obs}")), Some("not mine")),
            )
            .await;
        let absent = own
            .post_json(
                &op,
                &correction(Some("Observation/does-not-exist"), Some("not mine")),
            )
            .await;
        foreign.assert_outcome(422, &["target"]);
        absent.assert_outcome(422, &["target"]);
        assert_eq!(foreign.text, absent.text, "{label}: no existence leak");
        assert!(!foreign.text.contains(&q_obs) && !foreign.text.contains(&q));
        // Missing parameters, a body that is not Parameters.
        own.post_json(&op, &correction(None, Some("x")))
            .await
            .assert_outcome(400, &["target"]);
        own.post_json(&op, &correction(Some(&obs_path), None))
            .await
            .assert_outcome(400, &["description"]);
        own.post_json(&op, &correction(Some(&obs_path), Some("  ")))
            .await
            .assert_outcome(400, &["description"]);
        own.post_json(&op, &json!({ "resourceType": "Patient" }))
            .await
            .assert_outcome(400, &["Parameters"]);
        // None of these created a Task.
        let tasks = care.search_ids(&format!("Task?patient={subject}")).await;
        assert_eq!(tasks, vec![task_id.clone()], "{label}");

        // ---- Erasure: the patient asks, the care team sees it, only the admin erases.
        let erase = format!("Patient/{p}/$erase");
        own.post_json(&erase, &json!({}))
            .await
            .assert_outcome(403, &[]);
        other_patient
            .post_json(
                &format!("Patient/{p}/$request-erasure"),
                &json!({"resourceType": "Parameters"}),
            )
            .await
            .assert_outcome(403, &[]);
        // No body needed; a body that is not Parameters is refused.
        own.post_json(
            &format!("Patient/{p}/$request-erasure"),
            &json!({"resourceType": "Patient"}),
        )
        .await
        .assert_outcome(400, &["Parameters"]);
        let r = Api::send(own.request(
            reqwest::Method::POST,
            &format!("Patient/{p}/$request-erasure"),
        ))
        .await;
        assert_eq!(r.status, 201, "{label}: {r:?}");
        let et = r.json();
        assert_eq!(et["status"], "requested");
        assert_eq!(et["code"]["coding"][0]["system"], "urn:phivault:task");
        assert_eq!(et["code"]["coding"][0]["code"], "erasure");
        assert_eq!(et["focus"]["reference"], subject);
        let et_id = et["id"].as_str().unwrap().to_owned();
        let seen = care
            .search_ids("Task?code=urn:phivault:task|erasure&status=requested")
            .await;
        assert_eq!(seen, vec![et_id.clone()], "{label}");
        // The Patient is still there: requesting changes nothing.
        assert_eq!(own.get(&subject).await.status, 200);
        // Every request, allowed or refused, is audited naming the patient of the path.
        let entries = entries_about(&server, &p).await;
        for (a, o) in [
            ("POST /fhir/Patient/{id}/$request-correction", "allowed"),
            ("POST /fhir/Patient/{id}/$request-correction", "denied"),
            ("POST /fhir/Patient/{id}/$request-erasure", "allowed"),
            ("POST /fhir/Patient/{id}/$request-erasure", "denied"),
            ("POST /fhir/Patient/{id}/$erase", "denied"),
        ] {
            assert!(
                entries.contains(&(a.to_owned(), o.to_owned())),
                "{label}: {a} {o} in {entries:?}"
            );
        }
        // Approved, the admin erases (admins read no clinical data; the Task goes with the
        // compartment, the erasure certificate is the record of completion).
        let r = admin.post_json(&erase, &json!({})).await;
        assert_eq!(r.status, 200, "{label}: {r:?}");
        assert_eq!(r.json()["resourceType"], "Parameters");
        let gone = care.get(&format!("Task/{et_id}")).await;
        assert!(matches!(gone.status, 403 | 404 | 410), "{label}: {gone:?}");

        server.assert_no_panic();
    }
}
