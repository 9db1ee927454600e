//! `_sort` over the API, on SQLite and (when `PHIVAULT_TEST_DATABASE_URL` is set) PostgreSQL:
//! dates, strings, `_lastUpdated` and `_id` in both directions, missing values last, paging
//! that keeps the order, refusals (unsupported keys, too many matches), and what a principal
//! may not read never showing, counting or moving anything.

use super::*;

/// One context per backend (see [`backend_contexts`]).
async fn contexts() -> Vec<(&'static str, Ctx)> {
    backend_contexts("sort").await
}

fn person(family: &str, birth: Option<&str>) -> Value {
    let mut p = json!({ "resourceType": "Patient", "name": [{ "family": family }] });
    if let Some(b) = birth {
        p["birthDate"] = json!(b);
    }
    p
}

fn dated(pid: &str, date: &str) -> Value {
    let mut o = observation(pid);
    o["effectiveDateTime"] = json!(date);
    o
}

/// The ids of the match entries, in order.
fn match_ids(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn v(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

fn next_link(a: &Answer) -> Option<String> {
    a.json()["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

/// Follows `next` links from `uri` as `token`; every page's ids in order.
async fn all_pages(c: &Ctx, token: &str, uri: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut a = c.get_as(token, uri).await;
    loop {
        ids.extend(match_ids(&a));
        let Some(next) = next_link(&a) else {
            return ids;
        };
        assert!(next.contains("_sort="), "{next}");
        a = c.get_as(token, &fhir_path(&next)).await;
        if ids.len() > 100 {
            panic!("paging does not end");
        }
    }
}

fn fhir_path(next: &str) -> String {
    format!("/fhir{}", next.strip_prefix(BASE).unwrap())
}

#[tokio::test]
async fn sorts_dates_strings_last_updated_and_ids_in_both_directions() {
    for (backend, c) in contexts().await {
        let (b, _) = c.create(&person("Brown", Some("1980-05-01"))).await;
        let (a, _) = c.create(&person("adams", Some("1975"))).await;
        let (e, _) = c.create(&person("Émile", None)).await;
        let (d, _) = c.create(&person("Dupont", Some("1990-01-01"))).await;
        let (z, _) = c.create(&person("zed", Some("1975-06"))).await;

        let get = |q: &'static str| {
            let c = &c;
            async move { match_ids(&c.get(&format!("/fhir/Patient?{q}")).await) }
        };
        // birthDate: 1975 starts before 1975-06; descending, 1975-06 ends before 1975 does.
        assert_eq!(
            get("_sort=birthdate").await,
            v(&[&a, &z, &b, &d, &e]),
            "{backend}"
        );
        assert_eq!(
            get("_sort=-birthdate").await,
            v(&[&d, &b, &a, &z, &e]),
            "{backend}: missing values last whatever the direction"
        );
        // Strings: case- and accent-insensitive.
        assert_eq!(
            get("_sort=family").await,
            v(&[&a, &b, &d, &e, &z]),
            "{backend}"
        );
        assert_eq!(
            get("_sort=-name").await,
            v(&[&z, &e, &d, &b, &a]),
            "{backend}"
        );
        // _id, both ways.
        let mut by_id = v(&[&a, &b, &d, &e, &z]);
        by_id.sort();
        assert_eq!(get("_sort=_id").await, by_id, "{backend}");
        by_id.reverse();
        assert_eq!(get("_sort=-_id").await, by_id, "{backend}");

        // _lastUpdated: the latest write first; an update moves a resource to the front.
        let mut body = person("Brown", Some("1980-05-01"));
        body["id"] = json!(b);
        let u = c
            .json(Method::PUT, &format!("/fhir/Patient/{b}"), &body)
            .await;
        assert_eq!(u.status, StatusCode::OK, "{u:?}");
        let newest = c.get("/fhir/Patient?_sort=-_lastUpdated").await;
        assert_eq!(match_ids(&newest)[0], b, "{backend}");
        let stamps: Vec<(String, String)> = newest.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["resource"]["meta"]["lastUpdated"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    e["resource"]["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        for w in stamps.windows(2) {
            // UTC instants compare as text to the second.
            assert!(w[0].0[..19] >= w[1].0[..19], "{backend}: {stamps:?}");
        }
        let oldest = match_ids(&c.get("/fhir/Patient?_sort=_lastUpdated").await);
        assert_eq!(oldest.last(), Some(&b), "{backend}");

        // Several keys: the second breaks the first's ties.
        let (f, _) = c.create(&person("BROWN", Some("1999-01-01"))).await;
        assert_eq!(
            get("_sort=family,-birthdate&family=brown").await,
            v(&[&f, &b]),
            "{backend}"
        );
        assert_eq!(
            get("_sort=family,birthdate&family=brown").await,
            v(&[&b, &f]),
            "{backend}"
        );

        // Observation dates, descending; the total is the search's, sorted or not.
        for day in ["2021-03-01", "2023-01-01T10:00:00Z", "2022-07"] {
            c.create(&dated(&a, day)).await;
        }
        c.create(&observation(&a)).await;
        let sorted = c.get("/fhir/Observation?_sort=-date").await;
        assert_eq!(total(&sorted), 4);
        let dates: Vec<Value> = sorted.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["effectiveDateTime"].clone())
            .collect();
        assert_eq!(
            dates,
            vec![
                json!("2023-01-01T10:00:00Z"),
                json!("2022-07"),
                json!("2021-03-01"),
                Value::Null
            ],
            "{backend}"
        );
    }
}

#[tokio::test]
async fn pages_keep_the_order_and_include_still_works() {
    for (backend, c) in contexts().await {
        let mut expected = Vec::new();
        for (i, family) in ["Kim", "Abe", "Ng", "Lee", "Ito", "Fox", "Roe"]
            .iter()
            .enumerate()
        {
            let (id, _) = c
                .create(&person(
                    family,
                    Some(format!("19{}0-01-01", 9 - i).as_str()),
                ))
                .await;
            expected.push((family.to_lowercase(), id));
        }
        expected.sort();
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
        let paged = all_pages(&c, &c.token, "/fhir/Patient?_sort=family&_count=2").await;
        assert_eq!(paged, expected, "{backend}");
        // The next link repeats _sort, and an explicit page is the same slice.
        let first = c.get("/fhir/Patient?_sort=family&_count=3").await;
        assert_eq!(total(&first), 7);
        let next = next_link(&first).unwrap();
        assert!(next.contains("_sort=family"), "{next}");
        let second = c.get(&fhir_path(&next)).await;
        assert_eq!(match_ids(&second), expected[3..6].to_vec(), "{backend}");
        assert_eq!(total(&second), 7);
        let a = c.get("/fhir/Patient?_sort=family&_count=2&_offset=5").await;
        assert_eq!(match_ids(&a), expected[5..7].to_vec(), "{backend}");
        // _count=0: the total only.
        let a = c.get("/fhir/Patient?_sort=family&_count=0").await;
        assert_eq!(total(&a), 7);
        assert!(match_ids(&a).is_empty());

        // A batch's search entry sorts the same way; an unsupported key fails that entry only.
        let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "Patient?_sort=-family&_count=3" } },
            { "request": { "method": "GET", "url": "Patient?_sort=gender" } },
        ]});
        let a = c.json(Method::POST, "/fhir", &bundle).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let b = a.json();
        let found: Vec<&str> = b["entry"][0]["resource"]["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap())
            .collect();
        let last_three: Vec<&str> = expected.iter().rev().take(3).map(String::as_str).collect();
        assert_eq!(found, last_three, "{backend}: {b}");
        assert_eq!(b["entry"][0]["resource"]["total"], 7);
        assert!(
            b["entry"][1]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("400"),
            "{backend}: {b}"
        );

        // _include with _sort: the page's patients come along.
        let pid = &expected[0];
        for day in ["2020-01-01", "2024-01-01"] {
            c.create(&dated(pid, day)).await;
        }
        let a = c
            .get("/fhir/Observation?_sort=-date&_include=Observation:patient")
            .await;
        let entries = a.json()["entry"].as_array().unwrap().clone();
        assert_eq!(entries[0]["resource"]["effectiveDateTime"], "2024-01-01");
        assert_eq!(entries[1]["resource"]["effectiveDateTime"], "2020-01-01");
        assert!(
            entries
                .iter()
                .any(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == json!(pid)),
            "{backend}: {entries:?}"
        );
    }
}

#[tokio::test]
async fn unsupported_keys_and_too_many_matches_are_refused() {
    for (backend, mut c) in contexts().await {
        for q in [
            "Patient?_sort=gender",
            "Patient?_sort=-identifier",
            "Patient?_sort=general-practitioner",
            "Patient?_sort=shoe-size",
            "Observation?_sort=code",
            "Patient?_sort=family,",
        ] {
            for lenient in [false, true] {
                let mut req = c.req(Method::GET, &format!("/fhir/{q}"));
                if lenient {
                    req = req.header("prefer", "handling=lenient");
                }
                let a = c.send(req.body(Body::empty()).unwrap()).await;
                a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
                let d = a.diagnostics();
                assert!(d.contains("_sort"), "{backend} {q}: {d}");
                let key = q
                    .split('=')
                    .nth(1)
                    .unwrap()
                    .trim_start_matches('-')
                    .trim_end_matches(',');
                assert!(
                    d.contains(&format!("'{key}'")) || d.contains("empty sort key"),
                    "{backend} {q}: {d}"
                );
            }
        }

        c.state.max_sorted = 3;
        for family in ["Aa", "Bb", "Cc", "Dd"] {
            c.create(&person(family, None)).await;
        }
        let a = c.get("/fhir/Patient?_sort=family").await;
        a.assert_outcome(StatusCode::BAD_REQUEST, "too-costly");
        assert!(a.diagnostics().contains("narrow the search"), "{a:?}");
        // Narrowed to three it sorts; unsorted or total-only it was never bounded.
        let a = c.get("/fhir/Patient?_sort=-family&family=aa,bb,cc").await;
        assert_eq!(total(&a), 3, "{backend}");
        assert_eq!(match_ids(&a).len(), 3);
        assert_eq!(total(&c.get("/fhir/Patient").await), 4);
        assert_eq!(
            total(&c.get("/fhir/Patient?_sort=family&_count=0").await),
            4
        );
    }
}

#[tokio::test]
async fn what_may_not_be_read_never_shows_counts_or_moves() {
    for (backend, mut c) in contexts().await {
        let admin = c.person("admin", Role::Admin).await;
        let doc = c.person("doc", Role::Clinician).await;
        let (mine, _) = c.create(&patient("Mine")).await;
        let (theirs, _) = c.create(&patient("Theirs")).await;
        c.grant(&admin, "doc", &mine, &[]).await;
        let mut own = Vec::new();
        for day in ["2020-02-01", "2020-04-01", "2020-06-01"] {
            own.push(c.create(&dated(&mine, day)).await.0);
        }
        // Out of reach: dates before, between and after the readable ones.
        for day in ["2019-01-01", "2020-03-01", "2020-05-01", "2021-01-01"] {
            c.create(&dated(&theirs, day)).await;
        }
        assert_eq!(total(&c.get("/fhir/Observation?_sort=date").await), 7);

        let before = audit_count(&c).await;
        let a = c.get_as(&doc, "/fhir/Observation?_sort=date").await;
        assert_eq!(total(&a), 3, "{backend}");
        assert_eq!(match_ids(&a), own, "{backend}");
        // Every position of a paged walk is the readable ones' own.
        for (i, id) in own.iter().enumerate() {
            let a = c
                .get_as(
                    &doc,
                    &format!("/fhir/Observation?_sort=date&_count=1&_offset={i}"),
                )
                .await;
            assert_eq!(match_ids(&a), vec![id.clone()], "{backend} {i}");
            assert_eq!(total(&a), 3);
        }
        let mut desc = own.clone();
        desc.reverse();
        assert_eq!(
            all_pages(&c, &doc, "/fhir/Observation?_sort=-date&_count=2").await,
            desc,
            "{backend}"
        );
        // The cap counts what the caller may see only: three readable sort, whatever else
        // exists.
        c.state.max_sorted = 3;
        assert_eq!(
            match_ids(&c.get_as(&doc, "/fhir/Observation?_sort=-date").await),
            desc
        );
        c.get("/fhir/Observation?_sort=-date")
            .await
            .assert_outcome(StatusCode::BAD_REQUEST, "too-costly");

        // The clinician's sorted search named only the patient it read.
        let entries = audit_entries_after(&c, before).await;
        let search = &entries[0].0;
        assert_eq!(search.action, "GET /fhir/{type}");
        assert_eq!(search.patients_concerned(), vec![mine.clone()], "{backend}");
    }
}

#[tokio::test]
async fn the_audit_entry_names_every_patient_sorted() {
    for (backend, c) in contexts().await {
        let mut pids = Vec::new();
        for family in ["Ant", "Bee", "Cat"] {
            pids.push(c.create(&patient(family)).await.0);
        }
        for pid in &pids {
            c.create(&dated(pid, "2022-01-01")).await;
        }
        pids.sort();
        let before = audit_count(&c).await;
        // One resource on the page; all three patients' resources were decrypted to sort.
        let a = c.get("/fhir/Observation?_sort=date&_count=1").await;
        assert_eq!(match_ids(&a).len(), 1);
        let entries = audit_entries_after(&c, before).await;
        assert_eq!(entries.len(), 1, "{backend}: {entries:?}");
        assert_eq!(entries[0].0.patients_concerned(), pids, "{backend}");
        // Unsorted, the page's patient only.
        let before = audit_count(&c).await;
        c.get("/fhir/Observation?_count=1").await;
        let entries = audit_entries_after(&c, before).await;
        assert_eq!(entries[0].0.patients_concerned().len(), 1, "{backend}");
    }
}
