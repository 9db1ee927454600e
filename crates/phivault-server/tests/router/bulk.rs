//! Bulk Data export bounds: an export over the resource limit is refused with 400 and leaves
//! no job; exports held at once are capped (429); an expired job answers 404 like one that
//! never existed; the kick-off names its status URL and the manifest its files.

use super::*;
use phivault_server::BulkLimits;

fn kick_off(c: &Ctx, uri: &str) -> Request<Body> {
    c.req(Method::GET, uri)
        .header("prefer", "respond-async")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn exports_are_bounded_in_size_number_and_time() {
    let mut c = ctx().await;
    for family in ["Bulkone", "Bulktwo", "Bulkthree"] {
        let a = c
            .json(Method::POST, "/fhir/Patient", &patient(family))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    }
    let base = c.state.clone();

    // Over the resource limit: refused, with how to narrow it.
    c.state = base.clone().with_bulk_limits(BulkLimits {
        max_resources: 2,
        ..BulkLimits::default()
    });
    let a = c.send(kick_off(&c, "/fhir/$export?_type=Patient")).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    assert!(a.diagnostics().contains("limit of 2 resources"), "{a:?}");

    // Within it: 202 and a manifest with one file per type.
    c.state = base.clone().with_bulk_limits(BulkLimits {
        max_resources: 3,
        max_jobs: 1,
        ..BulkLimits::default()
    });
    let a = c.send(kick_off(&c, "/fhir/$export?_type=Patient")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let status = a.header("content-location").unwrap().to_owned();
    let path = status.strip_prefix(BASE).unwrap().to_owned();
    let m = c.get(&format!("/fhir{path}")).await;
    assert_eq!(m.status, StatusCode::OK, "{m:?}");
    let manifest = m.json();
    assert_eq!(manifest["output"][0]["type"], "Patient");
    assert_eq!(manifest["output"][0]["count"], 3);
    // One export at a time here: the next one waits.
    let a = c.send(kick_off(&c, "/fhir/$export?_type=Patient")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{a:?}");

    // Expired at once: the status is gone.
    c.state = base.with_bulk_limits(BulkLimits {
        expiry: std::time::Duration::ZERO,
        ..BulkLimits::default()
    });
    let a = c.send(kick_off(&c, "/fhir/$export?_type=Patient")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let status = a.header("content-location").unwrap().to_owned();
    let path = status.strip_prefix(BASE).unwrap().to_owned();
    c.get(&format!("/fhir{path}"))
        .await
        .assert_outcome(StatusCode::NOT_FOUND, "not-found");
}
