//! The portal over the router: a patient signed in by cookie reads their record, changes
//! their consents (and a research app's next request follows them), revokes an app, sends
//! requests, downloads their package and reads who looked at their record, break-the-glass
//! highlighted; the pages refuse whoever is not such a patient, and posts without the CSRF
//! token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use phivault_auth::CodeRequest;
use phivault_fhir::Id;
use phivault_policy::Role;
use phivault_store::NoAudit;
use serde_json::{Value, json};

use crate::web::test_support::{Ctx, ctx};

impl Ctx {
    /// A patient account linked to `patient`, signed in: (user id, session).
    async fn patient_session(&self, username: &str, patient: &str) -> (String, String) {
        let user_id = self.user(username, Role::Patient).await;
        self.state
            .accounts
            .link_patient(username, &Id::parse(patient).unwrap(), &NoAudit)
            .await
            .unwrap();
        (user_id, self.session(username).await)
    }
}

fn weight(patient: &str, when: &str, kg: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}], "text": "Body weight"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    })
}

/// A patient with a condition, a medication and three weights: (patient id, an
/// observation id).
async fn record(c: &Ctx) -> (String, String) {
    let pid = c
        .create(json!({
            "resourceType": "Patient",
            "name": [{"family": "Quillfeather", "given": ["Alex"]}],
            "birthDate": "1970-01-02",
            "gender": "female",
        }))
        .await;
    c.create(json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active",
        }]},
        "code": {"text": "Seasonal hay fever"},
        "subject": {"reference": format!("Patient/{pid}")},
        "onsetDateTime": "2019-04-01",
    }))
    .await;
    c.create(json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Cetirizine 10 mg tablet"},
        "subject": {"reference": format!("Patient/{pid}")},
        "authoredOn": "2024-04-01",
        "dosageInstruction": [{"text": "One a day"}],
    }))
    .await;
    let oid = c.create(weight(&pid, "2024-01-05T09:00:00Z", 71.5)).await;
    c.create(weight(&pid, "2024-02-05T09:00:00Z", 70.0)).await;
    c.create(weight(&pid, "2024-03-05T09:00:00Z", 69.25)).await;
    (pid, oid)
}

#[tokio::test]
async fn pages_are_for_signed_in_patients_and_posts_need_the_token() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    // Not signed in: the sign-in page, coming back here.
    let req = Request::get("/portal/consents")
        .body(Body::empty())
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/signin?next=%2Fportal%2Fconsents");
    // A clinician is refused.
    c.user("doc", Role::Clinician).await;
    let doc = c.session("doc").await;
    let a = c.page(&doc, "/portal").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    // A patient's post without the CSRF field, or with another value: refused, nothing
    // written.
    let (_, me) = c.patient_session("pat", &pid).await;
    let req = Request::post("/portal/consents")
        .header(header::COOKIE, Ctx::cookies(&me))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("purpose=HRESCH&decision=grant"))
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert!(a.text().contains("This form has expired"));
    let req = Request::post("/portal/consents")
        .header(header::COOKIE, Ctx::cookies(&me))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            "csrf=zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz&purpose=HRESCH&decision=grant",
        ))
        .unwrap();
    assert_eq!(c.send(req).await.status, StatusCode::FORBIDDEN);
    let consents = c.api(&c.sys, Method::GET, "/fhir/Consent", None, &[]).await;
    assert!(consents.text().contains("\"total\":0"), "{consents:?}");
    // Unknown choices are refused with a page, not guessed.
    for fields in [
        [("purpose", "ETREAT"), ("decision", "grant")],
        [("purpose", "HRESCH"), ("decision", "maybe")],
    ] {
        let a = c.post(&me, "/portal/consents", &fields).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    }
}

#[tokio::test]
async fn the_summary_shows_the_record_and_a_chart_of_numbers() {
    let c = ctx().await;
    let (pid, oid) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    let a = c.page(&me, "/portal").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    // A new CSRF cookie is only set when the browser had none.
    assert!(a.headers.get(header::SET_COOKIE).is_none());
    let html = a.text();
    for expected in [
        "Alex Quillfeather",
        "2 January 1970",
        "Female",
        "Seasonal hay fever",
        "Cetirizine 10 mg tablet",
        "One a day",
        "69.25 kg",
        "Body weight over time",
        "<polyline class=\"portal-chart-line\" points=\"64,20 ",
        "aria-current=\"page\">My record",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
    assert!(
        html.contains(&format!("target=Observation&#x2f;{oid}")),
        "{html}"
    );
    assert!(!html.contains("<script"));
    // A correction of one of those results names it on the requests page.
    let a = c
        .page(&me, &format!("/portal/requests?target=Observation/{oid}"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(
        a.text()
            .contains("A correction of a test result or measurement")
    );
}

#[tokio::test]
async fn consents_decide_what_a_research_app_gets_on_its_next_request() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    let (_, study) = c.client_token("Study App", "system/*.rs").await;
    let read = format!("/fhir/Patient/{pid}");
    let as_study = |purpose: &'static str| {
        let (c, study, read) = (&c, study.clone(), read.clone());
        async move {
            c.api(
                &study,
                Method::GET,
                &read,
                None,
                &[("x-purpose-of-use", purpose)],
            )
            .await
            .status
        }
    };
    let (research, treat) = ("HRESCH", "TREAT");

    // Research is denied by default.
    assert_eq!(as_study(research).await, StatusCode::FORBIDDEN);
    let a = c.page(&me, "/portal/consents").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let html = a.text();
    assert!(html.contains("name=\"purpose\" value=\"HRESCH\""), "{html}");
    assert!(html.contains("name=\"decision\" value=\"withdraw\""));
    assert!(html.contains("Not allowed unless you agree (the standard setting)"));

    let a = c
        .post(
            &me,
            "/portal/consents",
            &[("purpose", "HRESCH"), ("decision", "grant")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/portal/consents?done=granted");
    assert_eq!(as_study(research).await, StatusCode::OK);
    let html = c.page(&me, "/portal/consents?done=granted").await.text();
    assert!(html.contains("Your consent has been recorded"));
    assert!(html.contains("Allowed: you agreed"));

    let a = c
        .post(
            &me,
            "/portal/consents",
            &[("purpose", "HRESCH"), ("decision", "withdraw")],
        )
        .await;
    assert_eq!(a.location(), "/portal/consents?done=withdrawn");
    assert_eq!(as_study(research).await, StatusCode::FORBIDDEN);

    // Treatment: permitted by default; withdrawn with a denial, granted again.
    assert_eq!(as_study(treat).await, StatusCode::OK);
    let a = c
        .post(
            &me,
            "/portal/consents",
            &[("purpose", "TREAT"), ("decision", "withdraw")],
        )
        .await;
    assert_eq!(a.location(), "/portal/consents?done=withdrawn");
    assert_eq!(as_study(treat).await, StatusCode::FORBIDDEN);
    let html = c.page(&me, "/portal/consents").await.text();
    assert!(html.contains("Not allowed: you said no"));
    let a = c
        .post(
            &me,
            "/portal/consents",
            &[("purpose", "TREAT"), ("decision", "grant")],
        )
        .await;
    assert_eq!(a.location(), "/portal/consents?done=granted");
    assert_eq!(as_study(treat).await, StatusCode::OK);
    // Research stays withdrawn.
    assert_eq!(as_study(research).await, StatusCode::FORBIDDEN);
    // An unknown confirmation shows nothing.
    let html = c.page(&me, "/portal/consents?done=%3Cb%3Ehi").await.text();
    assert!(!html.contains("<b>hi") && !html.contains("role=\"status\""));

    // The access log shows the study app's refused and allowed reads, with their purpose.
    let a = c.page(&me, "/portal/access?show=others").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let html = a.text();
    for expected in ["Study App", "Research", "Refused", "Treatment"] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
    assert!(!html.contains(">You<"), "{html}");
}

#[tokio::test]
async fn the_access_log_highlights_break_the_glass_and_names_the_patient_you() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    c.user("er.doc", Role::Clinician).await;
    let doc = c.session("er.doc").await;
    let a = c
        .api(
            &doc,
            Method::GET,
            &format!("/fhir/Patient/{pid}"),
            None,
            &[
                ("x-purpose-of-use", "ETREAT"),
                ("x-break-glass-reason", "unconscious in the emergency room"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    c.page(&me, "/portal").await;
    let a = c.page(&me, "/portal/access").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let html = a.text();
    let highlighted: Vec<&str> = html.split("<tr class=\"highlight\">").skip(1).collect();
    assert_eq!(highlighted.len(), 1, "{html}");
    let row = highlighted[0].split("</tr>").next().unwrap();
    for expected in [
        "er.doc",
        "Clinician",
        "Emergency treatment",
        "Emergency access",
    ] {
        assert!(row.contains(expected), "{expected}: {row}");
    }
    // The patient's own visit of the summary: "You", searches included.
    assert!(html.contains(">You<"), "{html}");
    assert!(html.contains("Searched conditions"), "{html}");
    // The reason is not shown to the patient here (only that it was an emergency).
    assert!(!html.contains("unconscious"));
}

#[tokio::test]
async fn apps_are_listed_and_revoked() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    let (user_id, me) = c.patient_session("pat", &pid).await;
    let (client_id, _) = c
        .state
        .accounts
        .create_client(
            "Heart Diary",
            "openid patient/Observation.rs",
            None,
            &NoAudit,
        )
        .await
        .unwrap();
    c.state
        .accounts
        .issue_code(&CodeRequest {
            client_id: client_id.clone(),
            user_id,
            redirect_uri: "https://app.example/cb".to_owned(),
            scopes: "openid patient/Observation.rs".to_owned(),
            code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
            launch_patient: Some(Id::parse(&pid).unwrap()),
            launch_encounter: None,
            nonce: None,
        })
        .await
        .unwrap();
    let a = c.page(&me, "/portal/apps").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let html = a.text();
    assert!(html.contains("Heart Diary"), "{html}");
    assert!(html.contains(&format!("name=\"client_id\" value=\"{client_id}\"")));
    assert!(html.contains(">Revoke</button>"));
    let a = c
        .post(&me, "/portal/apps/revoke", &[("client_id", &client_id)])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/portal/apps?done=revoked");
    let html = c.page(&me, "/portal/apps?done=revoked").await.text();
    assert!(!html.contains("Heart Diary"), "{html}");
    assert!(html.contains("No apps have access"));
    assert!(html.contains("access was taken away"));
    // Again: it no longer had access.
    let a = c
        .post(&me, "/portal/apps/revoke", &[("client_id", &client_id)])
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
    assert!(a.text().contains("no longer had access"));
}

#[tokio::test]
async fn requests_are_sent_and_listed() {
    let c = ctx().await;
    let (pid, oid) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    let target = format!("Observation/{oid}");
    let a = c
        .post(
            &me,
            "/portal/requests",
            &[
                ("kind", "correction"),
                ("text", "My weight was 61.5 kg"),
                ("target", &target),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/portal/requests?done=sent");
    // About the personal details, without a target.
    let a = c
        .post(
            &me,
            "/portal/requests",
            &[("kind", "correction"), ("text", "Wrong birth date")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    let a = c
        .post(
            &me,
            "/portal/requests",
            &[("kind", "erasure"), ("text", "")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    let html = c.page(&me, "/portal/requests?done=sent").await.text();
    for expected in [
        "Your request has been sent",
        "My weight was 61.5 kg",
        "Wrong birth date",
        "your personal details",
        "a test result or measurement",
        "Erasure",
        "Waiting for review",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
    // Refused before the API: no words for a correction, an unknown kind; by the API: a
    // target that is not the patient's.
    let other = c
        .create(json!({"resourceType": "Patient", "name": [{"family": "Other"}]}))
        .await;
    for (fields, status) in [
        (
            vec![("kind", "correction"), ("text", " ")],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![("kind", "complaint"), ("text", "x")],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![
                ("kind", "correction"),
                ("text", "x"),
                ("target", &format!("Patient/{other}")),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let a = c.post(&me, "/portal/requests", &fields).await;
        assert_eq!(a.status, status, "{fields:?}: {a:?}");
        assert!(a.text().contains("role=\"alert\""));
    }
}

#[tokio::test]
async fn the_package_downloads_plain_or_encrypted() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    let a = c.page(&me, "/portal/download").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.text().contains(">Download</button>"));
    let a = c.post(&me, "/portal/download", &[("recipient", "")]).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(
        a.header(header::CONTENT_DISPOSITION)
            .starts_with("attachment")
    );
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    assert!(a.text().contains("Quillfeather"));
    let identity = age::x25519::Identity::generate();
    let key = identity.to_public().to_string();
    let a = c
        .post(&me, "/portal/download", &[("recipient", &key)])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header(header::CONTENT_TYPE), "application/octet-stream");
    assert!(a.header(header::CONTENT_DISPOSITION).contains(".age"));
    assert!(!a.text().contains("Quillfeather"));
    // A key of the right shape that is not a key: the page again, the field kept.
    let bad = "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq";
    let a = c.post(&me, "/portal/download", &[("recipient", bad)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let html = a.text();
    assert!(html.contains("That key was not accepted"), "{html}");
    assert!(html.contains(bad));
}

#[tokio::test]
async fn the_privacy_page_explains_the_register() {
    let c = ctx().await;
    let (pid, _) = record(&c).await;
    let (_, me) = c.patient_session("pat", &pid).await;
    let a = c.page(&me, "/portal/privacy").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let html = a.text();
    for expected in [
        "Caring for you",
        "Health research",
        "Your whole health record",
        "Only if you agree",
        "Allowed unless you say no",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
}
