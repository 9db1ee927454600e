//! Bulk Data export over HTTPS against the real binary, on every backend: a backend service
//! (`system/*.cruds`) kicks off `$export` (`Prefer: respond-async` required), polls the
//! status URL, reads the manifest and downloads one NDJSON file per type whose counts equal
//! what its searches find; `_type`, `_since`, `_outputFormat` and unknown parameters;
//! `Patient/$export` and `Group/{id}/$export` cover the compartment types (a Group: its
//! members only); clinicians, patients, researchers (the default policies let them search
//! nothing) and apps launched for one patient are refused at kick-off; a job is its owner's
//! (others get 404 on status, files and cancel); `DELETE` cancels; files are deleted once
//! downloaded; a research app's export (HRESCH) leaves out the patients whose consent does
//! not permit research; no marker reaches the data directory; an exported patient's access
//! log shows the export.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use phivault_testkit::fixtures::{self, LOINC, coding};
use phivault_testkit::{Api, Marker, Resp, Server, backends, query, random_username, scan_dir};
use reqwest::Method;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// A kick-off request (with `Prefer: respond-async` when `prefer`).
async fn kick_off_with(api: &Api, path: &str, prefer: bool, purpose: Option<&str>) -> Resp {
    let mut rb = api.request(Method::GET, path);
    if prefer {
        rb = rb.header("Prefer", "respond-async");
    }
    if let Some(p) = purpose {
        rb = rb.header("X-Purpose-Of-Use", p);
    }
    Api::send(rb).await
}

/// Kicks off an export and returns its status URL (asserting 202).
async fn kick_off(api: &Api, path: &str, purpose: Option<&str>) -> String {
    let r = kick_off_with(api, path, true, purpose).await;
    assert_eq!(r.status, 202, "kick-off {path}: {r:?}");
    r.header("content-location")
        .expect("Content-Location names the status URL")
        .to_owned()
}

/// Polls until the export is complete; the manifest.
async fn manifest(api: &Api, status_url: &str) -> Value {
    loop {
        let r = api.get(status_url).await;
        match r.status {
            200 => {
                assert_eq!(r.header("content-type"), Some("application/json"));
                return r.json();
            }
            202 => {
                assert!(r.header("x-progress").is_some(), "{r:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => panic!("status {status_url}: {r:?}"),
        }
    }
}

/// Downloads every output file of a manifest: the resources by type (checking the declared
/// counts and that each line is one resource of the file's type).
async fn download_all(api: &Api, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["transactionTime"].as_str().is_some());
    assert!(manifest["request"].as_str().unwrap().contains("$export"));
    assert_eq!(manifest["error"], json!([]));
    let mut out = BTreeMap::new();
    for file in manifest["output"].as_array().unwrap() {
        let rtype = file["type"].as_str().unwrap().to_owned();
        let url = file["url"].as_str().unwrap();
        let r = api.get(url).await;
        assert_eq!(r.status, 200, "{url}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
        let lines: Vec<Value> = r
            .text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len() as u64,
            file["count"].as_u64().unwrap(),
            "{rtype}"
        );
        assert!(lines.iter().all(|l| l["resourceType"] == rtype.as_str()));
        // Deleted once downloaded.
        api.get(url).await.assert_status(404);
        out.insert(rtype, lines);
    }
    out
}

/// Kick-off, poll, download.
async fn export(api: &Api, path: &str, purpose: Option<&str>) -> BTreeMap<String, Vec<Value>> {
    let status = kick_off(api, path, purpose).await;
    let m = manifest(api, &status).await;
    download_all(api, &m).await
}

fn ids(resources: Option<&Vec<Value>>) -> BTreeSet<String> {
    resources
        .into_iter()
        .flatten()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn observation(patient: &str, code: &Marker) -> Value {
    fixtures::observation(
        &format!("Patient/{patient}"),
        coding(Some(LOINC), code.text(), "Bulk test"),
        "2024-05-06T07:08:09Z",
    )
}

fn consent(patient: &str, scope: &str, kind: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": scope}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"type": kind, "purpose": [{"system": PURPOSE_SYSTEM, "code": "HRESCH"}]},
    })
}

/// A user with `role` (linked to `patient`, granted `grant`), signed in.
async fn person(server: &Server, role: &str, patient: Option<&str>, grant: Option<&str>) -> Api {
    let username = random_username();
    let password = server.create_user(&username, role).await;
    if let Some(p) = patient {
        server.link_patient(&username, p).await;
    }
    if let Some(p) = grant {
        server.grant(&username, p, &[], None).await;
    }
    let account = server.sign_in(&username, role, &password, false).await;
    server.api_as(&account.token)
}

/// The total a search of `path` finds for `api`.
async fn total(api: &Api, path: &str) -> u64 {
    api.search_bundle(path).await["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_export() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();

        // ---- Three patients with observations, a condition, a practitioner.
        let family = Marker::name();
        let code = Marker::code("bulk-");
        let a = sys.create(&fixtures::patient(family.text(), "Alpha")).await;
        let b = sys.create(&fixtures::patient(family.text(), "Beta")).await;
        let c = sys.create(&fixtures::patient(family.text(), "Gamma")).await;
        let mut obs: BTreeMap<String, String> = BTreeMap::new();
        for p in [&a, &a, &b, &c] {
            let o = sys.create(&observation(p, &code)).await;
            obs.insert(o, p.clone());
        }
        sys.create(&fixtures::condition(
            &format!("Patient/{a}"),
            "38341003",
            "active",
            "2020-01-01",
        ))
        .await;
        let practitioner = sys.create(&fixtures::practitioner(family.text())).await;

        // ---- The protocol's refusals.
        let r = kick_off_with(&sys, "$export", false, None).await;
        r.assert_outcome(400, &["Prefer: respond-async"]);
        for (q, mention) in [
            ("$export?_type=Nope", "_type"),
            ("$export?_outputFormat=text%2Fcsv", "_outputFormat"),
            ("$export?_since=2024-01-01", "_since"),
            ("$export?_typeFilter=Observation%3Fnope%3Dx", "_typeFilter"),
            (
                "$export?_typeFilter=Observation%3F_sort%3Ddate",
                "_typeFilter",
            ),
            (
                "$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal",
                "_typeFilter",
            ),
            ("Patient/$export?_type=Practitioner", "compartment"),
        ] {
            kick_off_with(&sys, q, true, None)
                .await
                .assert_outcome(400, &[mention]);
        }

        // ---- System export: every type, counts equal to what searches find.
        let all = export(
            &sys,
            "$export?_outputFormat=application%2Ffhir%2Bndjson",
            None,
        )
        .await;
        for (rtype, lines) in &all {
            assert_eq!(
                lines.len() as u64,
                total(&sys, &format!("{rtype}?_count=1")).await,
                "{label}: {rtype}"
            );
        }
        for t in ["Patient", "Observation", "Condition", "Practitioner"] {
            assert!(all.contains_key(t), "{label}: {t} in {:?}", all.keys());
        }
        assert!(ids(all.get("Patient")).is_superset(&BTreeSet::from([
            a.clone(),
            b.clone(),
            c.clone()
        ])));
        let obs_ids: BTreeSet<String> = obs.keys().cloned().collect();
        assert!(ids(all.get("Observation")).is_superset(&obs_ids));
        assert!(ids(all.get("Practitioner")).contains(&practitioner));

        // ---- _type.
        let only = export(&sys, "$export?_type=Observation,Patient", None).await;
        assert_eq!(
            only.keys().cloned().collect::<Vec<_>>(),
            ["Observation", "Patient"],
            "{label}"
        );

        // ---- _typeFilter: only the filtered type is narrowed; several filters are ORed.
        let filtered = export(
            &sys,
            &query(
                "$export",
                &[
                    ("_type", "Observation,Patient"),
                    ("_typeFilter", &format!("Observation?subject=Patient/{a}")),
                ],
            ),
            None,
        )
        .await;
        let of = |patients: &[&String]| -> BTreeSet<String> {
            obs.iter()
                .filter(|(_, p)| patients.contains(p))
                .map(|(o, _)| o.clone())
                .collect()
        };
        assert_eq!(ids(filtered.get("Observation")), of(&[&a]), "{label}");
        assert_eq!(
            ids(filtered.get("Patient")),
            ids(only.get("Patient")),
            "{label}"
        );
        let either = export(
            &sys,
            &query(
                "$export",
                &[(
                    "_typeFilter",
                    &format!("Observation?subject=Patient/{a},Observation?subject=Patient/{b}"),
                )],
            ),
            None,
        )
        .await;
        assert_eq!(ids(either.get("Observation")), of(&[&a, &b]), "{label}");

        // ---- _since: what changed after the newest resource exported so far.
        // Compared as instants: stamps drop trailing zeros of their fractions.
        let instant = |r: &Value| {
            let text = r["meta"]["lastUpdated"].as_str().unwrap().to_owned();
            let at = time::OffsetDateTime::parse(&text, &Rfc3339).unwrap();
            (at, text)
        };
        let (newest_at, newest) = all.values().flatten().map(instant).max().unwrap();
        let mut later = Vec::new();
        // Stamps may have coarse precision: create until one is strictly later.
        while later.is_empty() {
            let o = sys.create(&observation(&b, &code)).await;
            let (stamp, _) = instant(&sys.get(&format!("Observation/{o}")).await.json());
            if stamp > newest_at {
                later.push(o);
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        let since = export(&sys, &query("$export", &[("_since", &newest)]), None).await;
        assert_eq!(
            since.keys().cloned().collect::<Vec<_>>(),
            ["Observation"],
            "{label}: {since:?}"
        );
        assert!(ids(since.get("Observation")).contains(&later[0]));
        assert!(ids(since.get("Observation")).is_disjoint(&obs_ids));

        // ---- Patient/$export: compartment types only.
        let patients = export(&sys, "Patient/$export", None).await;
        assert!(!patients.contains_key("Practitioner"), "{label}");
        assert_eq!(ids(patients.get("Patient")), ids(all.get("Patient")));

        // ---- Group/{id}/$export: the members only.
        let group = sys
            .create(&json!({
                "resourceType": "Group",
                "type": "person",
                "actual": true,
                "member": [{"entity": {"reference": format!("Patient/{a}")}}],
            }))
            .await;
        let members = export(&sys, &format!("Group/{group}/$export"), None).await;
        assert_eq!(ids(members.get("Patient")), BTreeSet::from([a.clone()]));
        let a_obs: BTreeSet<String> = obs
            .iter()
            .filter(|(_, p)| **p == a)
            .map(|(o, _)| o.clone())
            .collect();
        assert_eq!(ids(members.get("Observation")), a_obs, "{label}");
        assert_eq!(members.get("Condition").map(Vec::len), Some(1));
        kick_off_with(&sys, "Group/nosuchgroup/$export", true, None)
            .await
            .assert_status(404);

        // ---- Who may start an export.
        let clinician = person(&server, "clinician", None, Some(&a)).await;
        let patient_a = person(&server, "patient", Some(&a), None).await;
        let researcher = person(&server, "researcher", None, None).await;
        let launched = server.api_as(&server.client_token("patient/*.rs", Some(a.as_str())).await);
        for (who, api) in [
            ("clinician", &clinician),
            ("patient", &patient_a),
            ("researcher", &researcher),
            ("launched app", &launched),
        ] {
            for path in ["$export", "Patient/$export"] {
                let r = kick_off_with(api, path, true, None).await;
                assert_eq!(r.status, 403, "{label}: {who} {path}: {r:?}");
            }
        }
        let r = kick_off_with(&researcher, "$export", true, Some("HRESCH")).await;
        assert_eq!(r.status, 403, "{label}: researcher under HRESCH: {r:?}");

        // ---- A job is its owner's; DELETE cancels.
        let status = kick_off(&sys, "$export?_type=Patient", None).await;
        let m = manifest(&sys, &status).await;
        let file = m["output"][0]["url"].as_str().unwrap().to_owned();
        let other = server.api_as(&server.client_token("system/*.rs", None).await);
        for api in [&other, &clinician, &patient_a] {
            api.get(&status).await.assert_status(404);
            api.get(&file).await.assert_status(404);
            Api::send(api.request(Method::DELETE, &status))
                .await
                .assert_status(404);
        }
        sys.get(&status).await.assert_status(200);
        Api::send(sys.request(Method::DELETE, &status))
            .await
            .assert_status(202);
        sys.get(&status).await.assert_status(404);
        sys.get(&file).await.assert_status(404);
        sys.get("$export-status/not-a-job").await.assert_status(404);

        // ---- A research export leaves out the patients whose consent does not permit it:
        // A permits research, B has no consent (research is denied by default), C denies.
        patient_a
            .post_json("Consent", &consent(&a, "research", "permit"))
            .await
            .assert_status(201);
        let patient_c = person(&server, "patient", Some(&c), None).await;
        patient_c
            .post_json("Consent", &consent(&c, "patient-privacy", "deny"))
            .await
            .assert_status(201);
        let research = server.api_as(&server.client_token("system/*.rs", None).await);
        let out = export(
            &research,
            "$export?_type=Patient,Observation",
            Some("HRESCH"),
        )
        .await;
        assert_eq!(
            ids(out.get("Patient")),
            BTreeSet::from([a.clone()]),
            "{label}"
        );
        assert_eq!(ids(out.get("Observation")), a_obs, "{label}");
        // The same app for treatment reaches everyone.
        let treat = export(&research, "$export?_type=Patient", Some("TREAT")).await;
        assert!(ids(treat.get("Patient")).contains(&c));

        // ---- An exported patient's access log shows the exports; no marker on disk.
        let log = patient_a
            .get(&format!("Patient/{a}/$access-log?_count=500"))
            .await;
        log.assert_status(200);
        let exports = phivault_testkit::search_matches(&log.json(), "AuditEvent")
            .into_iter()
            .filter(|e| e["type"]["code"] == "110106")
            .count();
        assert!(exports >= 5, "{label}: {exports} export events in A's log");
        let (scanned, findings) = scan_dir(server.data_dir(), &[family.clone(), code.clone()]);
        assert!(!scanned.is_empty());
        assert!(findings.is_empty(), "{label}: {findings:?}");
        server.assert_no_panic();
    }
}
