//! A populated phivault behind its router (no sockets), on a temporary SQLite database, and
//! a system app's token: the fixture of the router-level benchmarks. Patient `i` is
//! `Bench{i}` with one Observation (heart rate, effective on day `i % 365` of 2024), or with
//! `k` of them on consecutive days ([`setup_sized`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use phivault_auth::{Accounts, PasswordHasher};
use phivault_crypto::FileKeyProvider;
use phivault_fhir::{BundleRequest, Validator};
use phivault_server::AppState;
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Patients stored, each with one Observation.
pub(crate) const PATIENTS: usize = 500;
/// Patients per transaction Bundle while populating.
const PER_BUNDLE: usize = 50;

pub(crate) struct Bench {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    state: AppState,
    token: String,
    /// The Observations' ids (the attribution bench reads them by id; not every bench does).
    #[allow(dead_code)]
    pub(crate) observations: Vec<String>,
    /// The Patients' ids.
    #[allow(dead_code)]
    pub(crate) patients: Vec<String>,
}

/// Day `i % 365` of 2024 at 10:00 UTC, as a FHIR dateTime.
fn day_of_2024(i: usize) -> String {
    let date = time::Date::from_ordinal_date(2024, (i % 365) as u16 + 1).unwrap();
    format!("{date}T10:00:00Z")
}

fn bundle_of(first: usize, per_patient: usize) -> Value {
    let mut entries = Vec::new();
    for i in first..first + PER_BUNDLE {
        let urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        entries.push(json!({
            "fullUrl": urn,
            "resource": {
                "resourceType": "Patient",
                "name": [{ "family": format!("Bench{i}"), "given": ["Pat"] }],
                "birthDate": "1970-01-01",
            },
            "request": { "method": "POST", "url": "Patient" },
        }));
        for k in 0..per_patient {
            entries.push(json!({
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
                    "subject": { "reference": urn },
                    "effectiveDateTime": day_of_2024(i + k),
                    "valueQuantity": { "value": 72, "unit": "/min",
                        "system": "http://unitsofmeasure.org", "code": "/min" },
                },
                "request": { "method": "POST", "url": "Observation" },
            }));
        }
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

/// [`PATIENTS`] patients with one Observation each.
#[allow(dead_code)]
pub(crate) fn setup() -> Bench {
    setup_sized(PATIENTS, 1)
}

/// `patients` patients (a multiple of 50) with `per_patient` Observations each.
pub(crate) fn setup_sized(patients: usize, per_patient: usize) -> Bench {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyProvider::new(dir.path().join("master.key"));
    keys.create_if_missing().unwrap();
    let mut opts = StoreOptions::new(format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ));
    let per_bundle = PER_BUNDLE * (1 + per_patient);
    opts.max_bundle_entries = per_bundle;
    let (state, token, observations, patient_ids) = runtime.block_on(async {
        let store = Store::open(&opts, &keys).await.unwrap();
        let validator = Arc::new(Validator::new().unwrap());
        let mut observations = Vec::new();
        let mut patient_ids = Vec::new();
        for b in 0..patients / PER_BUNDLE {
            let request = BundleRequest::parse(
                &validator,
                bundle_of(b * PER_BUNDLE, per_patient),
                per_bundle,
            )
            .unwrap();
            let response = store
                .bundle(request, &phivault_store::NoAudit)
                .await
                .unwrap();
            for e in response["entry"].as_array().unwrap() {
                let location = e["response"]["location"].as_str().unwrap_or_default();
                if let Some(rest) = location.strip_prefix("Observation/") {
                    observations.push(rest.split('/').next().unwrap().to_owned());
                }
                if let Some(rest) = location.strip_prefix("Patient/") {
                    patient_ids.push(rest.split('/').next().unwrap().to_owned());
                }
            }
        }
        let mut state = AppState::new(
            store.clone(),
            validator,
            None,
            "https://127.0.0.1:8443/fhir",
            1024 * 1024,
        )
        .await
        .unwrap();
        state.accounts =
            Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap());
        let (id, secret) = state
            .accounts
            .create_client("bench", "system/*.rs", None, &NoAudit)
            .await
            .unwrap();
        let (token, _, _) = state
            .accounts
            .client_credentials(&id, secret.expose(), None)
            .await
            .unwrap();
        (state, token.expose().to_owned(), observations, patient_ids)
    });
    assert_eq!(observations.len(), patients * per_patient);
    assert_eq!(patient_ids.len(), patients);
    Bench {
        _dir: dir,
        runtime,
        state,
        token,
        observations,
        patients: patient_ids,
    }
}

impl Bench {
    /// One audited GET; returns the number of resources in a searchset (1 for a read).
    #[allow(dead_code)]
    pub(crate) fn get(&self, uri: &str) -> usize {
        self.get_as(&self.token, uri)
    }

    /// [`Bench::get`] with another bearer token.
    #[allow(dead_code)]
    pub(crate) fn get_as(&self, token: &str, uri: &str) -> usize {
        self.runtime.block_on(async {
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
            let resp = phivault_server::router(self.state.clone())
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            v["entry"].as_array().map_or(1, Vec::len)
        })
    }

    /// A session of a new patient account linked to patient `i` (password login; patients
    /// need no second factor by default).
    #[allow(dead_code)]
    pub(crate) fn patient_session(&self, i: usize) -> String {
        self.runtime.block_on(async {
            let accounts = &self.state.accounts;
            let username = format!("bench-patient-{i}");
            let password = "plum-orchard-lantern-47";
            accounts
                .create_user(
                    &username,
                    phivault_auth::Password::new(password),
                    phivault_policy::Role::Patient,
                    &NoAudit,
                )
                .await
                .unwrap();
            let patient = phivault_fhir::Id::parse(&self.patients[i]).unwrap();
            accounts
                .link_patient(&username, &patient, &NoAudit)
                .await
                .unwrap();
            let outcome = accounts
                .login(phivault_auth::LoginRequest {
                    username,
                    password: phivault_auth::Password::new(password),
                    totp: None,
                    recovery_code: None,
                    address: std::net::IpAddr::from([127, 0, 0, 1]),
                })
                .await
                .unwrap();
            assert!(!outcome.enrolment_only);
            outcome.token.expose().to_owned()
        })
    }

    /// One whole system-level Bulk Data export, as a client runs it: the asynchronous
    /// kick-off, the status request that returns the manifest, the download of every NDJSON
    /// file, then the `DELETE` that removes the job. Returns the resources exported.
    #[allow(dead_code)]
    pub(crate) fn bulk_export(&self) -> usize {
        self.export("/fhir/$export", None)
    }

    /// Adds a research project `bench` (the `safe-harbor` preset) and lets research proceed
    /// where no consent says otherwise (every patient takes part), for
    /// [`Bench::deidentified_export`].
    #[allow(dead_code)]
    pub(crate) fn with_research_project(mut self) -> Bench {
        let mut defaults = phivault_policy::ConsentDefaults::default();
        defaults.set(phivault_policy::Purpose::Research, true);
        let engine = phivault_deid::Deidentifier::new(
            phivault_deid::Config::preset("safe-harbor").unwrap(),
            phivault_deid::ProjectKey::from_bytes(&[7; 32]).unwrap(),
            2026,
        );
        let project = phivault_server::ResearchProject::new("bench", engine, None).unwrap();
        self.state = self
            .state
            .clone()
            .with_privacy(defaults, phivault_server::default_processing_activities())
            .with_research_projects(phivault_server::ResearchProjects::new(vec![project]).unwrap());
        self
    }

    /// [`Bench::bulk_export`] de-identified through the research project (purpose HRESCH).
    #[allow(dead_code)]
    pub(crate) fn deidentified_export(&self) -> usize {
        self.export("/fhir/$export?deidentification=bench", Some("HRESCH"))
    }

    fn export(&self, kick_off: &str, purpose: Option<&str>) -> usize {
        self.runtime.block_on(async {
            let kickoff = self
                .send_with(Method::GET, kick_off, Some("respond-async"), purpose)
                .await;
            assert_eq!(kickoff.0, StatusCode::ACCEPTED);
            let status = local_path(kickoff.1.as_deref().expect("Content-Location"));
            let (code, _, body) = self.send(Method::GET, &status, None).await;
            assert_eq!(code, StatusCode::OK, "the export runs during its kick-off");
            let manifest: Value = serde_json::from_slice(&body).unwrap();
            let mut resources = 0;
            for file in manifest["output"].as_array().unwrap() {
                let url = local_path(file["url"].as_str().unwrap());
                let (code, _, body) = self.send(Method::GET, &url, None).await;
                assert_eq!(code, StatusCode::OK, "{url}");
                resources += body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
            }
            let (code, _, _) = self.send(Method::DELETE, &status, None).await;
            assert!(code.is_success(), "{code}");
            resources
        })
    }

    /// One request with the app's token: (status, Content-Location, body).
    async fn send(
        &self,
        method: Method,
        uri: &str,
        prefer: Option<&str>,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        self.send_with(method, uri, prefer, None).await
    }

    /// [`Bench::send`] with a purpose of use.
    async fn send_with(
        &self,
        method: Method,
        uri: &str,
        prefer: Option<&str>,
        purpose: Option<&str>,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/fhir+json");
        if let Some(prefer) = prefer {
            req = req.header("prefer", prefer);
        }
        if let Some(purpose) = purpose {
            req = req.header("x-purpose-of-use", purpose);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
        let resp = phivault_server::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::CONTENT_LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, location, body)
    }
}

/// The path and query of one of the server's absolute URLs (the router sees no host).
#[allow(dead_code)]
fn local_path(url: &str) -> String {
    url.strip_prefix("https://127.0.0.1:8443")
        .unwrap_or_else(|| panic!("not this server's URL: {url}"))
        .to_owned()
}
