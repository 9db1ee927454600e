//! `/admin/console/clients`: the OAuth2 clients (apps), registering one (type, scopes,
//! redirect URIs, public keys), disabling one, and a new secret for a client with a secret.
//! A new client's secret, or a rotated one, is shown once on the page answering the post.
//!
//! The service checks what is registered (names, scopes, redirect URIs: https or loopback
//! http, keys only for `confidential-jwt`); its refusals are shown as they say.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phivault_auth::{Authenticated, ClientRegistration, ClientType, ServiceError};
use phivault_fhir::Id;
use serde::Serialize;

use super::{
    CLIENTS, Problem, admin_post, can_change, done_notice, done_path, failed, field, problem,
    render, when,
};
use crate::AppState;
use crate::audit_sink::RequestSink;
use crate::edge::AuditSlot;
use crate::web::Form;
use crate::web::session::{Area, see_other, signed_in};

/// The navigation item.
const ACTIVE: &str = "clients";

/// A client type as offered, and how the page explains it.
#[derive(Serialize)]
struct TypeChoice {
    value: &'static str,
    label: &'static str,
}

const TYPES: &[TypeChoice] = &[
    TypeChoice {
        value: "public",
        label: "Public (browser or phone app, PKCE, no secret)",
    },
    TypeChoice {
        value: "confidential-secret",
        label: "Confidential with a secret",
    },
    TypeChoice {
        value: "confidential-jwt",
        label: "Confidential with its own keys (private_key_jwt)",
    },
];

/// One client as listed.
#[derive(Serialize)]
struct ClientItem {
    client_id: String,
    name: String,
    client_type: &'static str,
    scopes: Vec<String>,
    redirect_uris: Vec<String>,
    launch_patient: Option<String>,
    created: String,
    disabled: Option<String>,
    /// It has a secret that can be replaced (enabled `confidential-secret`).
    has_secret: bool,
}

/// A client just registered, or whose secret was replaced: the secret is shown once.
#[derive(Serialize)]
struct Issued<'a> {
    client_id: &'a str,
    name: &'a str,
    secret: Option<&'a str>,
    /// `true`: the secret replaced an older one.
    rotated: bool,
}

/// The add form's values after a refused post (never a secret: the form has none).
#[derive(Serialize, Default)]
struct AddForm<'a> {
    name: &'a str,
    client_type: &'a str,
    scope: &'a str,
    redirect_uri: &'a str,
    jwks: &'a str,
    launch_patient: &'a str,
}

/// `console/clients.html`.
#[derive(Serialize)]
struct ClientsView<'a> {
    can_change: bool,
    clients: Vec<ClientItem>,
    types: &'static [TypeChoice],
    notice: Option<&'a str>,
    error: Option<&'a str>,
    issued: Option<Issued<'a>>,
    form: AddForm<'a>,
}

/// What a page answering a post adds to the list.
#[derive(Default)]
struct Extra<'a> {
    notice: Option<&'a str>,
    error: Option<&'a str>,
    issued: Option<Issued<'a>>,
    form: AddForm<'a>,
}

/// The apps page with `extra`, as `who` sees it.
async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    who: &Authenticated,
    status: StatusCode,
    extra: Extra<'_>,
) -> Response {
    let clients = match state.accounts.list_clients().await {
        Ok(c) => c,
        Err(e) => return failed(state, headers, ACTIVE, CLIENTS, &e),
    };
    let clients = clients
        .into_iter()
        .map(|c| ClientItem {
            has_secret: c.client_type == ClientType::ConfidentialSecret && c.disabled_at.is_none(),
            client_type: c.client_type.as_str(),
            scopes: c
                .scopes
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            redirect_uris: c.redirect_uris,
            launch_patient: c.launch_patient.map(|p| format!("Patient/{p}")),
            created: when(c.created_at),
            disabled: c.disabled_at.map(when),
            client_id: c.client_id,
            name: c.name,
        })
        .collect();
    let view = ClientsView {
        can_change: can_change(who),
        clients,
        types: TYPES,
        notice: extra.notice,
        error: extra.error,
        issued: extra.issued,
        form: extra.form,
    };
    render(
        state,
        headers,
        status,
        "console/clients.html",
        ACTIVE,
        &view,
    )
}

/// `GET /admin/console/clients`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let who = match signed_in(&state, &slot, &headers, Area::Console, CLIENTS).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let extra = Extra {
        notice: done_notice(query.as_deref()),
        ..Extra::default()
    };
    respond(&state, &headers, &who, StatusCode::OK, extra).await
}

/// The redirect URIs of the form: one per line (or separated by spaces) in `redirect_uri`,
/// which may also be repeated.
fn redirect_uris(form: &Form) -> Vec<String> {
    form.all("redirect_uri")
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect()
}

/// The scopes of the form, one space between each (they may be typed on several lines).
fn scopes(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The registration the add form describes, or what is wrong with it (in words for the
/// page). The service checks the rest.
fn registration(form: &Form) -> Result<ClientRegistration, &'static str> {
    let client_type = ClientType::parse(field(form, "type")).ok_or("Choose the app's type.")?;
    let jwks = Some(field(form, "jwks")).filter(|j| !j.is_empty());
    let launch_patient = match field(form, "launch_patient").trim_start_matches("Patient/") {
        "" => None,
        id => Some(Id::parse(id).map_err(
            |_| "The launch patient must be a Patient id (letters, digits, - and ., at most 64).",
        )?),
    };
    Ok(ClientRegistration {
        name: field(form, "name").to_owned(),
        client_type,
        scopes: scopes(field(form, "scope")),
        redirect_uris: redirect_uris(form),
        jwks: jwks.map(str::to_owned),
        jwks_url: None,
        launch_patient,
    })
}

/// `POST /admin/console/clients` `name`, `type`, `scope`, `redirect_uri`, `jwks`,
/// `launch_patient`: registers the client (with the request's audit entry); a secret client's
/// secret is shown once.
pub(super) async fn add(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, who) = match admin_post(&state, &slot, &headers, body, ACTIVE, CLIENTS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let redirect_text = form.all("redirect_uri").collect::<Vec<_>>().join("\n");
    let typed = AddForm {
        name: field(&form, "name"),
        client_type: field(&form, "type"),
        scope: field(&form, "scope"),
        redirect_uri: &redirect_text,
        jwks: field(&form, "jwks"),
        launch_patient: field(&form, "launch_patient"),
    };
    let registration = match registration(&form) {
        Ok(r) => r,
        Err(message) => {
            let extra = Extra {
                error: Some(message),
                form: typed,
                ..Extra::default()
            };
            return respond(&state, &headers, &who, StatusCode::BAD_REQUEST, extra).await;
        }
    };
    let sink = RequestSink::account_change(&state, slot);
    match state.accounts.register_client(&registration, &sink).await {
        Ok((client_id, secret)) => {
            sink.committed();
            tracing::info!(client = %client_id, "client registered from the console");
            let extra = Extra {
                issued: Some(Issued {
                    client_id: &client_id,
                    name: registration.name.trim(),
                    secret: secret.as_ref().map(|s| s.expose()),
                    rotated: false,
                }),
                ..Extra::default()
            };
            respond(&state, &headers, &who, StatusCode::OK, extra).await
        }
        Err(ServiceError::Invalid(message)) => {
            let message = format!("The app was not registered: {message}.");
            let extra = Extra {
                error: Some(&message),
                form: typed,
                ..Extra::default()
            };
            respond(&state, &headers, &who, StatusCode::BAD_REQUEST, extra).await
        }
        Err(e) => failed(&state, &headers, ACTIVE, CLIENTS, &e),
    }
}

/// The page saying the client of a post was not found (or, for a rotation, has no secret
/// or is disabled).
fn not_found(state: &AppState, headers: &HeaderMap, message: &str) -> Response {
    problem(
        state,
        headers,
        StatusCode::NOT_FOUND,
        ACTIVE,
        &Problem {
            title: "No such app",
            message,
            back: CLIENTS,
        },
    )
}

/// `POST /admin/console/clients/disable` `client_id`: disables the client (with the
/// request's audit entry); its credentials and tokens stop working.
pub(super) async fn disable(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, _) = match admin_post(&state, &slot, &headers, body, ACTIVE, CLIENTS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let client_id = field(&form, "client_id");
    let sink = RequestSink::account_change(&state, slot);
    match state.accounts.disable_client(client_id, &sink).await {
        Ok(()) => {
            sink.committed();
            tracing::info!(client = %client_id, "client disabled from the console");
            see_other(&done_path(CLIENTS, "client-disabled"))
        }
        Err(ServiceError::NotFound(_)) => {
            not_found(&state, &headers, "The app to disable was not found.")
        }
        Err(e) => failed(&state, &headers, ACTIVE, CLIENTS, &e),
    }
}

/// `POST /admin/console/clients/rotate` `client_id`: a new secret for an enabled
/// `confidential-secret` client (with the request's audit entry), shown once; the old one
/// stops working at once.
pub(super) async fn rotate(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, who) = match admin_post(&state, &slot, &headers, body, ACTIVE, CLIENTS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let client_id = field(&form, "client_id");
    let sink = RequestSink::account_change(&state, slot);
    match state.accounts.rotate_client_secret(client_id, &sink).await {
        Ok(secret) => {
            sink.committed();
            tracing::info!(client = %client_id, "client secret rotated from the console");
            let name = match state.accounts.client_name(client_id).await {
                Ok(name) => name.unwrap_or_default(),
                Err(e) => return failed(&state, &headers, ACTIVE, CLIENTS, &e),
            };
            let extra = Extra {
                issued: Some(Issued {
                    client_id,
                    name: &name,
                    secret: Some(secret.expose()),
                    rotated: true,
                }),
                ..Extra::default()
            };
            respond(&state, &headers, &who, StatusCode::OK, extra).await
        }
        Err(ServiceError::NotFound(_) | ServiceError::Invalid(_)) => not_found(
            &state,
            &headers,
            "No enabled app with a secret has this id: only an enabled app of the type \
             \"confidential with a secret\" gets a new secret.",
        ),
        Err(e) => failed(&state, &headers, ACTIVE, CLIENTS, &e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_add_form_becomes_a_registration() {
        let form = Form::parse(
            b"name=Chart+app&type=public&scope=launch%2Fpatient%0D%0Apatient%2F*.rs++openid\
              &redirect_uri=https%3A%2F%2Fapp.example%2Fcb%0D%0Ahttp%3A%2F%2F127.0.0.1%3A8080%2Fcb\
              &jwks=&launch_patient=",
        )
        .unwrap();
        let r = registration(&form).unwrap();
        assert_eq!(r.name, "Chart app");
        assert_eq!(r.client_type, ClientType::Public);
        assert_eq!(r.scopes, "launch/patient patient/*.rs openid");
        assert_eq!(
            r.redirect_uris,
            ["https://app.example/cb", "http://127.0.0.1:8080/cb"]
        );
        assert_eq!(r.jwks, None);
        assert_eq!(r.launch_patient, None);

        let form = Form::parse(
            b"name=Backend&type=confidential-jwt&scope=system%2F*.rs&jwks=%7B%22keys%22%3A%5B%5D%7D\
              &launch_patient=Patient%2Fp-1",
        )
        .unwrap();
        let r = registration(&form).unwrap();
        assert_eq!(r.client_type, ClientType::ConfidentialJwt);
        assert_eq!(r.jwks.as_deref(), Some("{\"keys\":[]}"));
        assert!(r.redirect_uris.is_empty());
        assert_eq!(r.launch_patient.unwrap().as_str(), "p-1");
    }

    #[test]
    fn a_form_without_a_type_or_with_a_bad_patient_is_refused_here() {
        for body in [
            &b"name=x&scope=openid"[..],
            b"name=x&type=private&scope=openid",
            b"name=x&type=public&scope=openid&launch_patient=a%2Fb",
        ] {
            assert!(registration(&Form::parse(body).unwrap()).is_err());
        }
    }
}
