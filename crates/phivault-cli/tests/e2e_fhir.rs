//! End-to-end FHIR interactions over HTTPS against the real binary, on every backend:
//! CRUD, vread, history, conditional update, delete, transactions (urn:uuid references,
//! rollback), batches, every search parameter, paging, lenient handling, metadata.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{
    self, BundleBuilder, CONDITION_CLINICAL, LOINC, MRN_SYSTEM, SNOMED, coding,
};
use phivault_testkit::{Api, Backend, Marker, Server, backends, next_link, query, search_matches};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

async fn start(backend: &Backend) -> Server {
    Server::start(BIN, backend, &[]).await
}

fn version_of(v: &Value) -> String {
    v["meta"]["versionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The `Type/id` of a transaction/batch response entry, from its location.
fn entry_ref(entry: &Value) -> String {
    let loc = entry["response"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("entry without response.location: {entry}"));
    let parts: Vec<&str> = loc.split('/').collect();
    let i = parts
        .iter()
        .position(|p| *p == "_history")
        .unwrap_or(parts.len());
    assert!(i >= 2, "location is not Type/id/_history/v: {loc}");
    format!("{}/{}", parts[i - 2], parts[i - 1])
}

fn status_of(entry: &Value) -> String {
    entry["response"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_vread_history_delete() {
    for backend in backends() {
        let s = start(&backend).await;
        let family = Marker::name();
        let given = Marker::name();
        let p = fixtures::patient(family.text(), given.text());

        // create
        let r = s.post_json("Patient", &p).await;
        r.assert_status(201);
        let created = r.json();
        let id = created["id"]
            .as_str()
            .expect("created resource has an id")
            .to_owned();
        assert_eq!(version_of(&created), "1", "{r:?}");
        assert!(created["meta"]["lastUpdated"].is_string(), "{r:?}");
        for field in ["identifier", "name", "gender", "birthDate", "active"] {
            assert_eq!(created[field], p[field], "{field} as sent: {r:?}");
        }
        let loc = r.header("location").unwrap_or_default();
        assert!(
            loc.contains(&format!("Patient/{id}/_history/1")),
            "Location header names the new version: {loc:?}"
        );
        assert_eq!(r.header("etag"), Some("W/\"1\""), "{r:?}");

        // read
        let r = s.get(&format!("Patient/{id}")).await;
        r.assert_status(200);
        assert_eq!(r.json(), created, "read answers what create stored");
        assert_eq!(r.header("etag"), Some("W/\"1\""), "{r:?}");
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .contains("json"),
            "{r:?}"
        );

        // update
        let given2 = Marker::name();
        let mut p2 = created.clone();
        p2["name"][0]["given"] = json!([given2.text()]);
        p2["gender"] = json!("male");
        let r = s.put_json(&format!("Patient/{id}"), &p2).await;
        r.assert_status(200);
        let updated = r.json();
        assert_eq!(version_of(&updated), "2", "{r:?}");
        assert_eq!(updated["name"][0]["given"][0], given2.text());
        assert_eq!(r.header("etag"), Some("W/\"2\""), "{r:?}");
        let r = s.get(&format!("Patient/{id}")).await;
        r.assert_status(200);
        assert_eq!(r.json(), updated);

        // vread
        let r = s.get(&format!("Patient/{id}/_history/1")).await;
        r.assert_status(200);
        assert_eq!(r.json(), created, "version 1 is kept as it was");
        let r = s.get(&format!("Patient/{id}/_history/2")).await;
        r.assert_status(200);
        assert_eq!(r.json(), updated);

        // conditional update: the right version passes, a stale one is refused
        let r = s.put_json_if_match(&format!("Patient/{id}"), &p2, 1).await;
        r.assert_outcome(412, &[]);
        let r = s.put_json_if_match(&format!("Patient/{id}"), &p2, 2).await;
        r.assert_status(200);
        assert_eq!(version_of(&r.json()), "3");

        // history: newest first
        let r = s.get(&format!("Patient/{id}/_history")).await;
        r.assert_status(200);
        let h = r.json();
        assert_eq!(h["resourceType"], "Bundle", "{r:?}");
        assert_eq!(h["type"], "history", "{r:?}");
        let entries = h["entry"].as_array().expect("history entries");
        assert_eq!(entries.len(), 3, "{r:?}");
        let versions: Vec<String> = entries.iter().map(|e| version_of(&e["resource"])).collect();
        assert_eq!(versions, ["3", "2", "1"], "{r:?}");
        if let Some(total) = h["total"].as_u64() {
            assert_eq!(total, 3, "{r:?}");
        }

        // delete
        let r = s.delete(&format!("Patient/{id}")).await;
        assert!(matches!(r.status, 200 | 204), "delete: {r:?}");
        let r = s.get(&format!("Patient/{id}")).await;
        r.assert_outcome(410, &[]);
        // older versions stay readable; history shows the deletion first
        let r = s.get(&format!("Patient/{id}/_history/2")).await;
        r.assert_status(200);
        assert_eq!(r.json(), updated);
        let r = s.get(&format!("Patient/{id}/_history")).await;
        r.assert_status(200);
        let h = r.json();
        let entries = h["entry"].as_array().expect("history entries");
        assert_eq!(entries.len(), 4, "{r:?}");
        assert!(
            entries[0]["resource"].is_null(),
            "the newest history entry is the deletion, without a resource: {r:?}"
        );
        // deleting again is not an error
        let r = s.delete(&format!("Patient/{id}")).await;
        assert!(matches!(r.status, 200 | 204), "second delete: {r:?}");
        // a deleted resource is not found by search
        let ids = s.search_ids(&query("Patient", &[("_id", &id)])).await;
        assert!(ids.is_empty(), "search must not return a deleted resource");

        // update as create, with a client-chosen id
        let cid = format!("e2e-{}", Marker::code("").core());
        let mut p3 = fixtures::patient(family.text(), "Client");
        p3["id"] = json!(cid);
        let r = s.put_json(&format!("Patient/{cid}"), &p3).await;
        r.assert_status(201);
        assert_eq!(r.json()["id"], cid.as_str());
        assert_eq!(version_of(&r.json()), "1");
        s.get(&format!("Patient/{cid}")).await.assert_status(200);

        // non-Patient types work the same
        let obs = fixtures::observation(
            &format!("Patient/{cid}"),
            coding(Some(LOINC), "8867-4", "Heart rate"),
            "2021-03-04T10:00:00Z",
        );
        let oid = s.create(&obs).await;
        let r = s.get(&format!("Observation/{oid}")).await;
        r.assert_status(200);
        assert_eq!(r.json()["subject"], obs["subject"]);
        let pr = fixtures::practitioner(family.text());
        let prid = s.create(&pr).await;
        s.get(&format!("Practitioner/{prid}"))
            .await
            .assert_status(200);

        s.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_resolves_urn_uuid_references() {
    for backend in backends() {
        let s = start(&backend).await;
        let family = Marker::name();
        let code = Marker::code("zc-");
        let mut b = BundleBuilder::transaction();
        let pref = b.post(fixtures::patient(family.text(), "Tx"));
        b.post(fixtures::observation(
            &pref,
            coding(Some(LOINC), code.text(), "Heart rate"),
            "2021-03-04T10:00:00Z",
        ));
        b.post(fixtures::condition(
            &pref,
            "38341003",
            "active",
            "2019-05-01",
        ));
        let r = s.post_json("", &b.build()).await;
        r.assert_status(200);
        let resp = r.json();
        assert_eq!(resp["resourceType"], "Bundle", "{r:?}");
        assert_eq!(resp["type"], "transaction-response", "{r:?}");
        let entries = resp["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 3, "{r:?}");
        for e in entries {
            assert!(status_of(e).starts_with("201"), "each entry created: {r:?}");
        }
        let patient = entry_ref(&entries[0]);
        let observation = entry_ref(&entries[1]);
        let condition = entry_ref(&entries[2]);
        assert!(patient.starts_with("Patient/"), "{patient}");

        let r = s.get(&observation).await;
        r.assert_status(200);
        assert_eq!(
            r.json()["subject"]["reference"],
            patient.as_str(),
            "urn:uuid reference rewritten to the new id"
        );
        let r = s.get(&condition).await;
        r.assert_status(200);
        assert_eq!(r.json()["subject"]["reference"], patient.as_str());
        assert!(!r.text.contains("urn:uuid:"), "no urn:uuid left: {r:?}");

        // the reference is searchable under the new id
        let found = s
            .search_ids(&query("Observation", &[("subject", &patient)]))
            .await;
        assert_eq!(found, [observation.trim_start_matches("Observation/")]);
        let found = s
            .search_ids(&query("Patient", &[("family", family.text())]))
            .await;
        assert_eq!(found, [patient.trim_start_matches("Patient/")]);
        s.assert_no_panic();
    }
}

/// Asserts that no Patient with `family` exists.
async fn assert_no_family(s: &Api, family: &Marker, why: &str) {
    let found = s
        .search_ids(&query("Patient", &[("family", family.text())]))
        .await;
    assert!(found.is_empty(), "{why}: {found:?} exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_rolls_back_when_an_entry_fails() {
    for backend in backends() {
        let s = start(&backend).await;
        let seed = fixtures::patient(Marker::name().text(), "Seed");
        let seed_id = s.create(&seed).await;
        let seed_path = format!("Patient/{seed_id}");
        let seed_before = s.get(&seed_path).await.json();

        // 1. the third entry is invalid (fails validation)
        let (fa, fb) = (Marker::name(), Marker::name());
        let mut b = BundleBuilder::transaction();
        let pa = b.post(fixtures::patient(fa.text(), "A"));
        b.post(fixtures::patient(fb.text(), "B"));
        let mut bad = fixtures::observation(&pa, coding(Some(LOINC), "8867-4", "HR"), "2021");
        bad["status"] = json!("not-a-status");
        b.post(bad);
        let r = s.post_json("", &b.build()).await;
        assert!(
            matches!(r.status, 400 | 422),
            "an invalid entry fails the transaction with 400/422: {r:?}"
        );
        r.assert_outcome(r.status, &["entry[2]"]);
        assert_no_family(&s, &fa, "invalid 3rd entry: entry 0 must not be stored").await;
        assert_no_family(&s, &fb, "invalid 3rd entry: entry 1 must not be stored").await;

        // 2. the third entry fails while running (stale If-Match) after two creates
        let (fa, fb) = (Marker::name(), Marker::name());
        let mut b = BundleBuilder::transaction();
        b.post(fixtures::patient(fa.text(), "A"));
        b.post(fixtures::patient(fb.text(), "B"));
        let mut changed = seed_before.clone();
        changed["name"][0]["given"] = json!(["Changed"]);
        b.put(&seed_path, changed.clone(), Some(7));
        let r = s.post_json("", &b.build()).await;
        r.assert_outcome(412, &["entry[2]"]);
        assert_no_family(&s, &fa, "stale If-Match: entry 0 must be rolled back").await;
        assert_no_family(&s, &fb, "stale If-Match: entry 1 must be rolled back").await;
        assert_eq!(
            s.get(&seed_path).await.json(),
            seed_before,
            "seed unchanged"
        );

        // 3. an update and a create that succeeded inside the transaction are undone when an
        //    entry processed after them fails (FHIR order: DELETE, POST, PUT, GET; PUTs in
        //    entry order)
        let fc = Marker::name();
        let mut b = BundleBuilder::transaction();
        b.put(&seed_path, changed, Some(1));
        b.post(fixtures::patient(fc.text(), "C"));
        let mut missing = fixtures::patient(Marker::name().text(), "Missing");
        missing["id"] = json!("no-such-patient-e2e");
        b.put("Patient/no-such-patient-e2e", missing, Some(3));
        let r = s.post_json("", &b.build()).await;
        r.assert_outcome(412, &["entry[2]"]);
        assert_no_family(&s, &fc, "late failure: the create must be rolled back").await;
        s.get("Patient/no-such-patient-e2e")
            .await
            .assert_outcome(404, &[]);
        let r = s.get(&seed_path).await;
        assert_eq!(
            r.json(),
            seed_before,
            "the update must be rolled back: {r:?}"
        );
        let r = s.get(&format!("{seed_path}/_history")).await;
        assert_eq!(
            r.json()["entry"].as_array().map(Vec::len),
            Some(1),
            "no version was added: {r:?}"
        );
        s.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_reports_each_entry() {
    for backend in backends() {
        let s = start(&backend).await;
        let seed = fixtures::patient(Marker::name().text(), "Seed");
        let seed_id = s.create(&seed).await;
        let seed_path = format!("Patient/{seed_id}");
        let seed_before = s.get(&seed_path).await.json();

        let (fa, fb) = (Marker::name(), Marker::name());
        let mut b = BundleBuilder::batch();
        b.post(fixtures::patient(fa.text(), "A"));
        let mut changed = seed_before.clone();
        changed["gender"] = json!("other");
        b.put(&seed_path, changed, Some(9));
        b.get("Patient/no-such-patient-e2e");
        b.post(fixtures::patient(fb.text(), "B"));
        let r = s.post_json("", &b.build()).await;
        r.assert_status(200);
        let resp = r.json();
        assert_eq!(resp["type"], "batch-response", "{r:?}");
        let entries = resp["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 4, "one response per entry, in order: {r:?}");
        let statuses: Vec<String> = entries.iter().map(status_of).collect();
        assert!(statuses[0].starts_with("201"), "{statuses:?}");
        assert!(statuses[1].starts_with("412"), "{statuses:?}");
        assert!(statuses[2].starts_with("404"), "{statuses:?}");
        assert!(statuses[3].starts_with("201"), "{statuses:?}");
        for failed in [&entries[1], &entries[2]] {
            assert_eq!(
                failed["response"]["outcome"]["resourceType"], "OperationOutcome",
                "a failed batch entry carries an OperationOutcome: {failed}"
            );
        }
        assert_eq!(
            s.search_ids(&query("Patient", &[("family", fa.text())]))
                .await
                .len(),
            1
        );
        assert_eq!(
            s.search_ids(&query("Patient", &[("family", fb.text())]))
                .await
                .len(),
            1
        );
        assert_eq!(
            s.get(&seed_path).await.json(),
            seed_before,
            "seed unchanged"
        );
        s.assert_no_panic();
    }
}

/// Asserts that `q` (built with [`query`]) finds exactly `expected` ids.
async fn expect(s: &Api, rtype: &str, pairs: &[(&str, &str)], expected: &[&String]) {
    let q = query(rtype, pairs);
    let found = s.search_ids(&q).await;
    let mut want: Vec<String> = expected.iter().map(|s| (*s).clone()).collect();
    want.sort();
    assert_eq!(found, want, "search {q}");
}

/// Lower-case, accents stripped, as the server's normalization does (for the accented
/// capitals used here).
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'É' | 'é' => 'e',
            'Ü' | 'ü' => 'u',
            'Ö' | 'ö' => 'o',
            'Å' | 'å' => 'a',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_search_parameter() {
    for backend in backends() {
        let s = start(&backend).await;
        let f1 = Marker::name_starting("Ézo");
        let g1 = Marker::name_starting("Åli");
        let f2 = Marker::name_starting("Üna");
        let g2 = Marker::name_starting("Öst");
        let m1 = fixtures::mrn();
        let m2 = fixtures::mrn();
        let p1 = s
            .create(&fixtures::patient_with(
                f1.text(),
                g1.text(),
                &m1,
                "female",
                "1987-06-15",
            ))
            .await;
        let p2 = s
            .create(&fixtures::patient_with(
                f2.text(),
                g2.text(),
                &m2,
                "male",
                "1990-01-20",
            ))
            .await;
        let none: &[&String] = &[];
        let (pr1, pr2) = (format!("Patient/{p1}"), format!("Patient/{p2}"));

        // _id
        expect(&s, "Patient", &[("_id", &p1)], &[&p1]).await;
        expect(
            &s,
            "Patient",
            &[("_id", &format!("{p1},{p2}"))],
            &[&p1, &p2],
        )
        .await;
        expect(&s, "Patient", &[("_id", "no-such-id")], none).await;

        // identifier: system|value, value; wrong system or value
        let sys_m1 = format!("{MRN_SYSTEM}|{m1}");
        expect(&s, "Patient", &[("identifier", &sys_m1)], &[&p1]).await;
        expect(&s, "Patient", &[("identifier", &m1)], &[&p1]).await;
        expect(&s, "Patient", &[("identifier", &m2)], &[&p2]).await;
        let wrong_sys = format!("urn:oid:1.2.3.4|{m1}");
        expect(&s, "Patient", &[("identifier", &wrong_sys)], none).await;
        let wrong_val = format!("{MRN_SYSTEM}|{m1}0");
        expect(&s, "Patient", &[("identifier", &wrong_val)], none).await;

        // name: prefix >= 3 chars, case- and accent-insensitive, of family or given
        let f1_norm = fold(f1.text());
        let g1_norm = fold(g1.text());
        expect(&s, "Patient", &[("name", "ezo")], &[&p1]).await;
        expect(&s, "Patient", &[("name", "ÉZO")], &[&p1]).await;
        expect(&s, "Patient", &[("name", "Ezo")], &[&p1]).await;
        expect(&s, "Patient", &[("name", &g1_norm[..6])], &[&p1]).await;
        expect(&s, "Patient", &[("name", f1.text())], &[&p1]).await;
        expect(&s, "Patient", &[("name", &f1_norm.to_uppercase())], &[&p1]).await;
        expect(&s, "Patient", &[("name:exact", f1.text())], &[&p1]).await;
        expect(&s, "Patient", &[("name:exact", &f1.text()[..6])], none).await;
        expect(&s, "Patient", &[("name", "zzqxv")], none).await;
        // a prefix only matches at the start
        expect(&s, "Patient", &[("name", &f1_norm[3..9])], none).await;

        // family
        expect(&s, "Patient", &[("family", &f1_norm)], &[&p1]).await;
        expect(&s, "Patient", &[("family", &f1_norm[..4])], &[&p1]).await;
        expect(&s, "Patient", &[("family", "üna")], &[&p2]).await;
        expect(&s, "Patient", &[("family", g1.text())], none).await;
        expect(&s, "Patient", &[("family:exact", f1.text())], &[&p1]).await;
        expect(&s, "Patient", &[("family:exact", &f1_norm[..5])], none).await;

        // given
        expect(&s, "Patient", &[("given", &g1_norm[..3])], &[&p1]).await;
        expect(&s, "Patient", &[("given", g2.text())], &[&p2]).await;
        expect(&s, "Patient", &[("given", f1.text())], none).await;
        expect(&s, "Patient", &[("given:exact", g1.text())], &[&p1]).await;
        expect(&s, "Patient", &[("given:exact", &g1_norm[..5])], none).await;

        // birthdate at day, month, year
        expect(&s, "Patient", &[("birthdate", "1987-06-15")], &[&p1]).await;
        expect(&s, "Patient", &[("birthdate", "1987-06")], &[&p1]).await;
        expect(&s, "Patient", &[("birthdate", "1987")], &[&p1]).await;
        expect(&s, "Patient", &[("birthdate", "1990-01")], &[&p2]).await;
        expect(&s, "Patient", &[("birthdate", "1987-06-16")], none).await;
        expect(&s, "Patient", &[("birthdate", "1987-07")], none).await;
        expect(&s, "Patient", &[("birthdate", "1988")], none).await;

        // gender
        expect(&s, "Patient", &[("gender", "female")], &[&p1]).await;
        expect(&s, "Patient", &[("gender", "male")], &[&p2]).await;
        expect(&s, "Patient", &[("gender", "other")], none).await;

        // parameters AND together
        expect(
            &s,
            "Patient",
            &[("family", &f1_norm), ("gender", "female")],
            &[&p1],
        )
        .await;
        expect(
            &s,
            "Patient",
            &[("family", &f1_norm), ("gender", "male")],
            none,
        )
        .await;

        // POST _search (form) equals GET
        let r = Api::send(s.form_request("Patient/_search", &[("family", f1_norm.as_str())])).await;
        r.assert_status(200);
        let ids: Vec<String> = search_matches(&r.json(), "Patient")
            .iter()
            .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(ids, std::slice::from_ref(&p1), "POST _search: {r:?}");

        // Observation: subject/patient, code, status, date
        let c1 = Marker::code("zc-");
        let c2 = Marker::code("zd-");
        let o1 = s
            .create(&fixtures::observation(
                &pr1,
                coding(Some(LOINC), c1.text(), "Heart rate"),
                "2021-03-04T10:00:00Z",
            ))
            .await;
        let mut obs2 =
            fixtures::observation(&pr2, coding(None, c2.text(), "No system"), "2022-11-30");
        obs2["status"] = json!("preliminary");
        let o2 = s.create(&obs2).await;

        expect(&s, "Observation", &[("_id", &o1)], &[&o1]).await;
        expect(&s, "Observation", &[("subject", &pr1)], &[&o1]).await;
        expect(&s, "Observation", &[("subject", &p1)], &[&o1]).await;
        expect(&s, "Observation", &[("patient", &pr1)], &[&o1]).await;
        expect(&s, "Observation", &[("patient", &pr2)], &[&o2]).await;
        expect(
            &s,
            "Observation",
            &[("subject", "Patient/no-such-id")],
            none,
        )
        .await;

        let loinc_c1 = format!("{LOINC}|{}", c1.text());
        let snomed_c1 = format!("{SNOMED}|{}", c1.text());
        let nosys_c1 = format!("|{}", c1.text());
        let nosys_c2 = format!("|{}", c2.text());
        let loinc_c2 = format!("{LOINC}|{}", c2.text());
        expect(&s, "Observation", &[("code", &loinc_c1)], &[&o1]).await;
        expect(&s, "Observation", &[("code", c1.text())], &[&o1]).await;
        expect(&s, "Observation", &[("code", &nosys_c1)], none).await;
        expect(&s, "Observation", &[("code", &snomed_c1)], none).await;
        expect(&s, "Observation", &[("code", &nosys_c2)], &[&o2]).await;
        expect(&s, "Observation", &[("code", c2.text())], &[&o2]).await;
        expect(&s, "Observation", &[("code", &loinc_c2)], none).await;

        expect(&s, "Observation", &[("status", "final")], &[&o1]).await;
        expect(&s, "Observation", &[("status", "preliminary")], &[&o2]).await;
        expect(&s, "Observation", &[("status", "amended")], none).await;

        expect(&s, "Observation", &[("date", "2021-03-04")], &[&o1]).await;
        expect(&s, "Observation", &[("date", "2021-03")], &[&o1]).await;
        expect(&s, "Observation", &[("date", "2021")], &[&o1]).await;
        expect(&s, "Observation", &[("date", "2022-11-30")], &[&o2]).await;
        expect(&s, "Observation", &[("date", "2021-03-05")], none).await;
        expect(&s, "Observation", &[("date", "2021-04")], none).await;
        expect(&s, "Observation", &[("date", "2020")], none).await;

        expect(
            &s,
            "Observation",
            &[("patient", &pr1), ("code", c2.text())],
            none,
        )
        .await;
        expect(
            &s,
            "Observation",
            &[("patient", &pr1), ("code", c1.text())],
            &[&o1],
        )
        .await;

        // Condition: patient/subject, code, clinical-status
        let sc1 = Marker::code("zs-");
        let k1 = s
            .create(&fixtures::condition(
                &pr1,
                sc1.text(),
                "active",
                "2019-05-01",
            ))
            .await;
        let k2 = s
            .create(&fixtures::condition(
                &pr2,
                "38341003",
                "resolved",
                "2018-01-01",
            ))
            .await;
        expect(&s, "Condition", &[("patient", &pr1)], &[&k1]).await;
        expect(&s, "Condition", &[("subject", &pr2)], &[&k2]).await;
        let snomed_sc1 = format!("{SNOMED}|{}", sc1.text());
        expect(&s, "Condition", &[("code", &snomed_sc1)], &[&k1]).await;
        expect(&s, "Condition", &[("code", sc1.text())], &[&k1]).await;
        expect(&s, "Condition", &[("code", "no-such-code")], none).await;
        expect(&s, "Condition", &[("clinical-status", "active")], &[&k1]).await;
        let sys_active = format!("{CONDITION_CLINICAL}|active");
        expect(&s, "Condition", &[("clinical-status", &sys_active)], &[&k1]).await;
        expect(&s, "Condition", &[("clinical-status", "resolved")], &[&k2]).await;
        expect(&s, "Condition", &[("clinical-status", "inactive")], none).await;

        // AllergyIntolerance: patient, code, clinical-status
        let ac1 = Marker::code("za-");
        let a1 = s
            .create(&fixtures::allergy(&pr1, ac1.text(), "active"))
            .await;
        let a2 = s
            .create(&fixtures::allergy(&pr2, "91936005", "inactive"))
            .await;
        expect(&s, "AllergyIntolerance", &[("patient", &pr2)], &[&a2]).await;
        expect(&s, "AllergyIntolerance", &[("code", ac1.text())], &[&a1]).await;
        expect(
            &s,
            "AllergyIntolerance",
            &[("clinical-status", "active")],
            &[&a1],
        )
        .await;
        expect(
            &s,
            "AllergyIntolerance",
            &[("clinical-status", "inactive")],
            &[&a2],
        )
        .await;
        expect(
            &s,
            "AllergyIntolerance",
            &[("clinical-status", "resolved")],
            none,
        )
        .await;

        // an update re-indexes: the old value no longer matches, the new one does
        let mut p1_body = s.get(&pr1).await.json();
        p1_body["gender"] = json!("other");
        s.put_json(&pr1, &p1_body).await.assert_status(200);
        expect(&s, "Patient", &[("gender", "female")], none).await;
        expect(&s, "Patient", &[("gender", "other")], &[&p1]).await;

        s.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn count_and_next_links_page_through_everything() {
    for backend in backends() {
        let s = start(&backend).await;
        let family = Marker::name();
        let mut created = Vec::new();
        for i in 0..7 {
            created.push(
                s.create(&fixtures::patient(family.text(), &format!("Page{i}")))
                    .await,
            );
        }
        // another family, not to be returned
        s.create(&fixtures::patient(Marker::name().text(), "Other"))
            .await;
        created.sort();

        let mut url = query("Patient", &[("family", family.text()), ("_count", "3")]);
        let mut pages = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let b = s.search_bundle(&url).await;
            if let Some(total) = b["total"].as_u64() {
                assert_eq!(total, 7, "total counts every match: {b}");
            }
            let ids: Vec<String> = search_matches(&b, "Patient")
                .iter()
                .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            pages.push(ids.len());
            seen.extend(ids);
            match next_link(&b) {
                Some(next) => {
                    assert!(
                        next.starts_with(s.base()),
                        "next link {next} is under the base URL {}",
                        s.base()
                    );
                    url = next;
                }
                None => break,
            }
        }
        assert_eq!(pages, [3, 3, 1], "pages of 3, the last one without next");
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "no resource twice across pages");
        assert_eq!(seen, created, "every match, once");

        // _offset directly
        let ids = s
            .search_ids(&query(
                "Patient",
                &[("family", family.text()), ("_count", "3"), ("_offset", "6")],
            ))
            .await;
        assert_eq!(ids.len(), 1);
        s.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_parameters_strict_and_lenient() {
    for backend in backends() {
        let s = start(&backend).await;
        let family = Marker::name();
        let id = s.create(&fixtures::patient(family.text(), "Lenient")).await;
        let q = query(
            "Patient",
            &[("family", family.text()), ("favourite-colour", "blue")],
        );

        let r = s.get(&q).await;
        r.assert_outcome(400, &["favourite-colour"]);
        let r = Api::send(
            s.request(Method::GET, &q)
                .header("Prefer", "handling=strict"),
        )
        .await;
        r.assert_outcome(400, &["favourite-colour"]);

        let r = Api::send(
            s.request(Method::GET, &q)
                .header("Prefer", "handling=lenient"),
        )
        .await;
        r.assert_status(200);
        let b = r.json();
        let ids: Vec<String> = search_matches(&b, "Patient")
            .iter()
            .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            ids,
            [id],
            "lenient: the unknown parameter is ignored: {r:?}"
        );
        if let Some(self_link) = b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "self"))
        {
            assert!(
                !self_link["url"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("favourite-colour"),
                "the self link shows the parameters used, not the ignored one: {self_link}"
            );
        }
        s.assert_no_panic();
    }
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_describes_the_server() {
    for backend in backends() {
        let s = start(&backend).await;
        let r = s.get("metadata").await;
        r.assert_status(200);
        let cs = r.json();
        assert_eq!(cs["resourceType"], "CapabilityStatement", "{r:?}");
        assert_eq!(cs["fhirVersion"], "4.0.1", "{r:?}");
        assert_eq!(cs["kind"], "instance", "{r:?}");
        assert!(
            cs["format"].as_array().is_some_and(|f| f
                .iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains("json")))),
            "format lists JSON: {r:?}"
        );
        let rest = &cs["rest"][0];
        assert_eq!(rest["mode"], "server", "{r:?}");
        let system = names(&rest["interaction"], "code");
        for i in ["transaction", "batch"] {
            assert!(
                system.contains(&i.to_owned()),
                "system interaction {i}: {system:?}"
            );
        }
        let resources = rest["resource"].as_array().expect("rest.resource");
        let expected: &[(&str, &[&str])] = &[
            (
                "Patient",
                &[
                    "identifier",
                    "name",
                    "family",
                    "given",
                    "birthdate",
                    "gender",
                ],
            ),
            (
                "Observation",
                &["patient", "subject", "code", "status", "date"],
            ),
            (
                "Condition",
                &["patient", "subject", "code", "clinical-status"],
            ),
            (
                "AllergyIntolerance",
                &["patient", "code", "clinical-status"],
            ),
        ];
        for (rtype, params) in expected {
            let res = resources
                .iter()
                .find(|x| x["type"] == *rtype)
                .unwrap_or_else(|| panic!("{rtype} is in the CapabilityStatement: {r:?}"));
            let declared = names(&res["searchParam"], "name");
            for p in *params {
                assert!(
                    declared.contains(&(*p).to_owned()),
                    "{rtype} declares search parameter {p}: {declared:?}"
                );
            }
            let interactions = names(&res["interaction"], "code");
            for i in [
                "read",
                "vread",
                "update",
                "delete",
                "history-instance",
                "create",
                "search-type",
            ] {
                assert!(
                    interactions.contains(&i.to_owned()),
                    "{rtype} declares interaction {i}: {interactions:?}"
                );
            }
        }
        s.assert_no_panic();
    }
}
