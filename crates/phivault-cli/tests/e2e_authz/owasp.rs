//! The OWASP access-control cases: another patient's id in the URL, in a transaction, in a
//! history, search totals, `_include`.

use super::*;

/// OWASP access-control cases, as the care clinician (P1 on their care team, not P2).
pub(crate) async fn owasp_cases(w: &World) {
    let care = Who::Care;
    let t = Purpose::Treat;
    let forbidden = |r: &Resp, what: &str| {
        assert_eq!(r.status, 403, "{what}: {r:?}");
        r.assert_outcome(403, &[]);
    };
    let o2_before = w.apis[&Who::System].get(&w.path(Res::O2)).await.json();

    // Another patient's id in the URL: read, vread, update (even claiming P1 in the body),
    // moving one's own resource to P2, delete, history.
    let r = Api::send(w.request(care, t, Method::GET, &w.path(Res::O2))).await;
    forbidden(&r, "read of P2's Observation by id");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history/1", w.path(Res::O2)),
    ))
    .await;
    forbidden(&r, "vread of P2's Observation");
    let mut claims_p1 = o2_before.clone();
    claims_p1["subject"]["reference"] = json!(format!("Patient/{}", w.p1));
    let r = Api::send(w.json_request(care, t, Method::PUT, &w.path(Res::O2), &claims_p1)).await;
    forbidden(&r, "update of P2's Observation with a body naming P1");
    let mut to_p2 = w.current(Res::O1).await;
    to_p2["subject"]["reference"] = json!(format!("Patient/{}", w.p2));
    let r = Api::send(w.json_request(care, t, Method::PUT, &w.path(Res::O1), &to_p2)).await;
    forbidden(&r, "moving P1's Observation into P2's compartment");
    let r = Api::send(w.request(care, t, Method::DELETE, &w.path(Res::O2))).await;
    forbidden(&r, "delete of P2's Observation");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history", w.path(Res::O2)),
    ))
    .await;
    forbidden(&r, "history of P2's Observation");
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &format!("{}/_history", w.path(Res::P2)),
    ))
    .await;
    forbidden(&r, "history of P2");

    // Transactions that read or update P2's Observation among allowed entries: refused as a
    // whole, nothing applied.
    let mut b = BundleBuilder::transaction();
    b.get(&w.path(Res::O1)).get(&w.path(Res::O2));
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    forbidden(&r, "transaction reading P2's Observation");
    let mut changed = o2_before.clone();
    changed["status"] = json!("amended");
    let mut b = BundleBuilder::transaction();
    b.post(observation(&w.p1, &w.copy_code, false));
    b.put(&w.path(Res::O2), changed, None);
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    forbidden(&r, "transaction updating P2's Observation");
    // A batch answers per entry: P2's entry is refused, P1's served.
    let mut b = BundleBuilder::batch();
    b.get(&w.path(Res::O1)).get(&w.path(Res::O2));
    let r = Api::send(w.json_request(care, t, Method::POST, "", &b.build())).await;
    r.assert_status(200);
    let v = r.json();
    let status = |i: usize| {
        v["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status(0).starts_with("200"), "batch entry for P1: {r:?}");
    assert!(status(1).starts_with("403"), "batch entry for P2: {r:?}");
    assert!(
        v["entry"][1]["resource"].is_null(),
        "no resource for a refused entry: {r:?}"
    );
    let o2_after = w.apis[&Who::System].get(&w.path(Res::O2)).await.json();
    assert_eq!(o2_after, o2_before, "P2's Observation is unchanged");

    // Search totals count only what may be read: O1 (P1, unlabelled), not O2 nor the PSY one.
    let r = Api::send(w.request(
        care,
        t,
        Method::GET,
        &query("Observation", &[("code", w.code.text())]),
    ))
    .await;
    r.assert_status(200);
    let b = r.json();
    assert_eq!(
        b["total"], 1,
        "total counts only P1's unlabelled Observation: {r:?}"
    );
    let ids: Vec<&str> = phivault_testkit::search_matches(&b, "Observation")
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default())
        .map(|s| if s == w.o1 { "O1" } else { "other" })
        .collect();
    assert_eq!(ids, ["O1"], "{r:?}");
    // The same for the form-encoded search.
    let r = Api::send(
        w.apis[&care]
            .form_request("Observation/_search", &[("code", w.code.text())])
            .header("X-Purpose-Of-Use", "TREAT"),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.json()["total"], 1, "POST _search counts the same: {r:?}");

    // _include and _revinclude return only what the principal may read: an Observation of P1
    // derived from P2's Observation, P1's PSY Observation and O1 includes, for each principal,
    // the ones it could read itself, never the others, and never counts them in the total.
    let mut derived = observation(&w.p1, &w.copy_code, false);
    derived["derivedFrom"] = json!([
        { "reference": w.path(Res::O2) },
        { "reference": w.path(Res::Psy) },
        { "reference": w.path(Res::O1) },
    ]);
    let derived = w.apis[&Who::System].create(&derived).await;
    let include_query = query(
        "Observation",
        &[("_id", &derived), ("_include", "Observation:derived-from")],
    );
    for (who, purpose, readable) in [
        (care, t, vec![Res::O1]),
        (Who::AppP1, t, vec![Res::O1]),
        (
            Who::PatientP1,
            Purpose::PatientRequest,
            vec![Res::O1, Res::Psy],
        ),
        (Who::System, t, vec![Res::O1, Res::O2]),
        (Who::CarePsy, t, vec![Res::O1, Res::Psy]),
    ] {
        let r = Api::send(w.request(who, purpose, Method::GET, &include_query)).await;
        r.assert_status(200);
        let bundle = r.json();
        assert_eq!(
            bundle["total"], 1,
            "{who:?}: includes are not counted: {bundle}"
        );
        let mut included = mode_ids(&bundle, "include");
        included.sort();
        let mut expected: Vec<String> = readable.iter().map(|res| w.id(*res).to_owned()).collect();
        expected.sort();
        assert_eq!(included, expected, "{who:?}: included Observations");
        assert_eq!(mode_ids(&bundle, "match"), vec![derived.clone()], "{who:?}");
    }
    // The reverse: P1's Observations that name P1, as far as each may read them.
    let rev_query = query(
        "Patient",
        &[("_id", &w.p1), ("_revinclude", "Observation:subject")],
    );
    for (who, psy_visible) in [(care, false), (Who::CarePsy, true)] {
        let r = Api::send(w.request(who, t, Method::GET, &rev_query)).await;
        r.assert_status(200);
        let bundle = r.json();
        assert_eq!(bundle["total"], 1, "{who:?}: {bundle}");
        let included = mode_ids(&bundle, "include");
        assert!(
            included.contains(&w.o1) && included.contains(&derived),
            "{who:?}"
        );
        assert_eq!(
            included.contains(&w.psy),
            psy_visible,
            "{who:?}: the PSY Observation"
        );
        assert!(!included.contains(&w.o2), "{who:?}: P2's Observation");
    }
    // A clinician without P1 on the care team gets nothing, includes included.
    let r = Api::send(w.request(Who::Other, t, Method::GET, &rev_query)).await;
    r.assert_status(200);
    assert_eq!(r.json()["total"], 0);
    assert!(mode_ids(&r.json(), "include").is_empty());
    // The forms not served are refused, whoever asks.
    for q in [
        query(
            "Observation",
            &[("_include:iterate", "Observation:patient")],
        ),
        query("Observation", &[("_include", "*")]),
        query("Observation", &[("_include", "Patient:organization")]),
    ] {
        let r = Api::send(w.request(Who::System, t, Method::GET, &q)).await;
        r.assert_outcome(400, &["_include"]);
    }

    // Chains and _has look up the other type as the caller: P1 and P2 share a family name and
    // O1, O2 and the PSY Observation a code, so each principal finds exactly what it could
    // read itself, and the chain never reaches a patient or an Observation out of reach.
    let chained = query(
        "Observation",
        &[
            ("code", w.code.text()),
            ("subject:Patient.family", w.family.text()),
        ],
    );
    let has = query(
        "Patient",
        &[("_has:Observation:subject:code", w.code.text())],
    );
    for (who, purpose, observations, patients) in [
        (care, t, vec![Res::O1], vec![Res::P1]),
        (Who::CarePsy, t, vec![Res::O1, Res::Psy], vec![Res::P1]),
        (
            Who::System,
            t,
            vec![Res::O1, Res::O2],
            vec![Res::P1, Res::P2],
        ),
        (
            Who::PatientP2,
            Purpose::PatientRequest,
            vec![Res::O2],
            vec![Res::P2],
        ),
        (Who::Other, t, vec![], vec![]),
    ] {
        for (q, expected) in [(&chained, &observations), (&has, &patients)] {
            let r = Api::send(w.request(who, purpose, Method::GET, q)).await;
            r.assert_status(200);
            let bundle = r.json();
            let mut found = mode_ids(&bundle, "match");
            found.sort();
            let mut want: Vec<String> = expected.iter().map(|res| w.id(*res).to_owned()).collect();
            want.sort();
            assert_eq!(found, want, "{who:?} {q}");
            assert_eq!(bundle["total"], want.len(), "{who:?} {q}");
            let link = bundle["link"][0]["url"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(link.contains("_has") || link.contains("family"), "{link}");
        }
    }
    for (q, says) in [
        (
            query("Observation", &[("subject.organization.name", "x")]),
            "one level",
        ),
        (
            query("Observation", &[("subject.family", "x")]),
            "several types",
        ),
    ] {
        let r = Api::send(w.request(Who::System, t, Method::GET, &q)).await;
        r.assert_outcome(400, &[says]);
    }

    // Existence never leaks: a missing id is refused like one out of reach, unless the
    // principal could reach it.
    let missing = "Observation/no-such-observation-authz";
    let r = Api::send(w.request(Who::Other, t, Method::GET, missing)).await;
    forbidden(
        &r,
        "a missing Observation, for a clinician without patients",
    );
    let out_of_reach = Api::send(w.request(Who::Other, t, Method::GET, &w.path(Res::O2))).await;
    assert_eq!(
        r.issue_text(),
        out_of_reach.issue_text(),
        "same refusal for missing and existing"
    );
    let r = Api::send(w.request(Who::System, t, Method::GET, missing)).await;
    r.assert_outcome(404, &[]);

    // Purpose of use and reason headers are parsed strictly.
    let r = Api::send(
        w.apis[&care]
            .request(Method::GET, &w.path(Res::O1))
            .header("X-Purpose-Of-Use", "treat"),
    )
    .await;
    r.assert_outcome(400, &["X-Purpose-Of-Use"]);
    let r = Api::send(
        w.apis[&care]
            .request(Method::GET, &w.path(Res::O1))
            .header("X-Purpose-Of-Use", "TREAT")
            .header("X-Break-Glass-Reason", "not an emergency"),
    )
    .await;
    r.assert_outcome(400, &["X-Break-Glass-Reason"]);
    // Without a purpose header a clinician acts for TREAT (the role's default).
    w.apis[&care].get(&w.path(Res::O1)).await.assert_status(200);
    w.apis[&care]
        .get(&w.path(Res::O2))
        .await
        .assert_outcome(403, &[]);
}
