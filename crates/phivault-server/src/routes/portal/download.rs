//! `GET /portal/download`: how to take a copy of the record; `POST /portal/download`
//! (optional `recipient`: one or more age public keys, `age1...`, separated by spaces or
//! lines) answers the `$export` package of the API, read as the patient, as a file download
//! (`Content-Disposition: attachment`), encrypted to the keys when given.
//!
//! The package holds the whole record: the answer is never cached, and a key that is not
//! accepted shows the page again with the reason in plain words (the key is shown back in
//! the field so it can be corrected: it is public).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Connect, checked_form, not_shown, render, unavailable, visit};
use crate::AppState;
use crate::edge::AuditSlot;

/// Most keys one download is encrypted to.
const MAX_RECIPIENTS: usize = 10;

/// The page, with `error` and the field's value.
fn show(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
    recipient: &str,
) -> Response {
    let mut context = json!({ "recipient": recipient });
    if let Some(e) = error {
        context["error"] = json!(e);
    }
    render(
        state,
        headers,
        status,
        "portal/download.html",
        "download",
        context,
    )
}

/// `GET /portal/download`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = visit(&state, &slot, connect, &headers, "/portal/download").await {
        return r;
    }
    show(&state, &headers, StatusCode::OK, None, "")
}

/// Why a `recipient` field is refused, in words; the keys otherwise (none: not encrypted).
pub(super) fn recipients(field: &str) -> Result<Vec<&str>, &'static str> {
    let keys: Vec<&str> = field.split_whitespace().collect();
    if keys.len() > MAX_RECIPIENTS {
        return Err("Please give at most 10 keys.");
    }
    // The shape of an age X25519 recipient (Bech32, lower case); the API checks the rest.
    let shaped = |k: &str| {
        k.len() > 4
            && k.len() <= 100
            && k.starts_with("age1")
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if keys.iter().any(|k| !shaped(k)) {
        return Err(
            "That does not look like an age public key. A key starts with \"age1\" and has no \
             spaces or capital letters. Leave the field empty for a file that is not encrypted.",
        );
    }
    Ok(keys)
}

/// `POST /portal/download` `recipient?`.
pub(super) async fn download(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body, "download").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let v = match visit(&state, &slot, connect, &headers, "/portal/download").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let field = form.one("recipient").unwrap_or("").trim().to_owned();
    let keys = match recipients(&field) {
        Ok(k) => k,
        Err(e) => return show(&state, &headers, StatusCode::BAD_REQUEST, Some(e), &field),
    };
    let mut path = format!("/fhir/Patient/{}/$export", v.patient);
    for (i, k) in keys.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str("recipient=");
        path.push_str(&urlencoding::encode(k));
    }
    let answer = match v.api.get(&path).await {
        Ok(a) => a,
        Err(_) => return unavailable(&state, &headers, "download"),
    };
    if answer.status == StatusCode::BAD_REQUEST && !keys.is_empty() {
        let e = "That key was not accepted. Please check that you copied the whole public key \
                 (it starts with \"age1\"), or leave the field empty.";
        return show(&state, &headers, StatusCode::BAD_REQUEST, Some(e), &field);
    }
    if !answer.ok() {
        return not_shown(&state, &headers, "download", answer.status);
    }
    let media = answer
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let disposition = answer
        .headers
        .get(header::CONTENT_DISPOSITION)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("attachment; filename=\"my-record.ndjson\""));
    let mut response = (StatusCode::OK, answer.body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, media);
    h.insert(header::CONTENT_DISPOSITION, disposition);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_age_keys_or_nothing() {
        assert_eq!(recipients(""), Ok(vec![]));
        assert_eq!(recipients("  \n "), Ok(vec![]));
        let k = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert_eq!(recipients(k), Ok(vec![k]));
        let two = format!("{k}\r\n{k}");
        assert_eq!(recipients(&two).map(|v| v.len()), Ok(2));
        for bad in ["age", "AGE1ABC", "ssh-ed25519 AAAA", "age1<script>"] {
            assert!(recipients(bad).is_err(), "{bad}");
        }
        let many = [k; 11].join(" ");
        assert!(recipients(&many).is_err());
    }
}
