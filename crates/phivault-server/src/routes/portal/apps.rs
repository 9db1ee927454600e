//! `GET /portal/apps`: the apps the patient let into their record (`GET /auth/apps`), what
//! each may do in plain words, when it was allowed and last used; `POST /portal/apps/revoke`
//! (`client_id`) takes an app's access away (`DELETE /auth/apps/{client_id}`: its tokens die
//! at once, its next request is refused).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::text::unix_text;
use super::{
    Connect, Query, Visit, checked_form, done_message, not_shown, render, unavailable, visit,
};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::ScopeItem;
use crate::web::session::see_other;

/// The confirmations of this page.
const DONE: &[(&str, &str)] = &[(
    "revoked",
    "The app's access was taken away. It can no longer read or change your record.",
)];

/// One app as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct AppRow {
    /// The client id (the form's `client_id`).
    pub(super) client_id: String,
    /// Its registered name ("An app without a name" when empty).
    pub(super) name: String,
    /// What it may do, in words, each once.
    pub(super) may: Vec<String>,
    /// When it was allowed.
    pub(super) allowed: String,
    /// When it last connected ("" for never).
    pub(super) last_used: String,
}

/// The rows of a `GET /auth/apps` answer.
pub(super) fn app_rows(answer: &Value) -> Vec<AppRow> {
    answer
        .get("apps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let client_id = a.get("client_id").and_then(Value::as_str)?.to_owned();
            let name = a
                .get("name")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or("An app without a name")
                .to_owned();
            let mut may: Vec<String> = Vec::new();
            for scope in a
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split_whitespace()
            {
                let words = ScopeItem::new(scope, false).description;
                if !may.contains(&words) {
                    may.push(words);
                }
            }
            let time = |key: &str| a.get(key).and_then(Value::as_i64).map(unix_text);
            Some(AppRow {
                client_id,
                name,
                may,
                allowed: time("authorized_at").unwrap_or_default(),
                last_used: time("last_used_at").unwrap_or_default(),
            })
        })
        .collect()
}

/// The page with the patient's apps, with `done` or `error`.
async fn show(
    state: &AppState,
    headers: &HeaderMap,
    v: &Visit<'_>,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let answer = match v.json("/auth/apps").await {
        Ok(a) => a,
        Err(s) => return not_shown(state, headers, "apps", s),
    };
    let mut context = json!({ "apps": app_rows(&answer) });
    if let Some(d) = done {
        context["done"] = json!(d);
    }
    if let Some(e) = error {
        context["error"] = json!(e);
    }
    render(state, headers, status, "portal/apps.html", "apps", context)
}

/// `GET /portal/apps`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal/apps").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let done = done_message(&Query::of(raw.as_deref()), DONE);
    show(&state, &headers, &v, StatusCode::OK, done, None).await
}

/// Whether `id` can be a client id (the path segment is encoded anyway).
fn plausible_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// `POST /portal/apps/revoke` `client_id`.
pub(super) async fn revoke(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body, "apps").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let v = match visit(&state, &slot, connect, &headers, "/portal/apps").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(client_id) = form.one("client_id").filter(|c| plausible_client_id(c)) else {
        let error = "Please choose an app to take access away from.";
        return show(
            &state,
            &headers,
            &v,
            StatusCode::BAD_REQUEST,
            None,
            Some(error),
        )
        .await;
    };
    let path = format!("/auth/apps/{}", urlencoding::encode(client_id));
    match v.api.call(Method::DELETE, &path, None).await {
        Ok(a) if a.ok() => see_other("/portal/apps?done=revoked"),
        Ok(a) if a.status == StatusCode::NOT_FOUND => {
            let error = "That app no longer had access to your record.";
            show(
                &state,
                &headers,
                &v,
                StatusCode::NOT_FOUND,
                None,
                Some(error),
            )
            .await
        }
        Ok(a) => not_shown(&state, &headers, "apps", a.status),
        Err(_) => unavailable(&state, &headers, "apps"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_are_listed_with_their_scopes_in_words() {
        let answer = json!({"apps": [
            {
                "client_id": "c1",
                "name": " Heart Diary ",
                "scope": "openid fhirUser patient/Observation.rs launch/patient",
                "authorized_at": 1_715_000_000,
                "last_used_at": 1_715_000_060,
            },
            {"client_id": "c2", "name": "", "scope": "", "authorized_at": 0, "last_used_at": 0},
            {"name": "no id"},
        ]});
        let rows = app_rows(&answer);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "Heart Diary");
        assert_eq!(rows[0].allowed, "6 May 2024, 12:53 UTC");
        assert_eq!(rows[0].last_used, "6 May 2024, 12:54 UTC");
        // openid and fhirUser say the same thing: once.
        assert_eq!(rows[0].may.len(), 3, "{:?}", rows[0].may);
        assert!(rows[0].may.iter().any(|m| m.contains("observations")));
        assert_eq!(rows[1].name, "An app without a name");
        assert!(rows[1].may.is_empty());
        assert_eq!(rows[1].last_used, "");
        assert!(app_rows(&json!({})).is_empty());
    }

    #[test]
    fn client_ids_are_bounded() {
        assert!(plausible_client_id("c-1"));
        assert!(!plausible_client_id(""));
        assert!(!plausible_client_id("a\nb"));
        assert!(!plausible_client_id(&"x".repeat(129)));
    }
}
