//! `GET /admin/alerts`: the alerts the detection rules raised, for administrators and
//! auditors (the same alerts as `phivault alerts list`, read from the audit trail).
//!
//! Query: `since` (an RFC 3339 instant; default seven days ago) and `_count` (1 to 1000,
//! default 100). Answer: `{"alerts": [...]}`, newest first, each with its id, seq, time,
//! rule, kind, subject, counts, window, evidence seqs and whether the webhook took it. Ids
//! and counts only.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use phivault_policy::Action;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth_routes::json_response;
use crate::fhir_routes::Access;
use crate::fhir_routes::parse_pairs;
use crate::{ApiError, AppState};

/// The routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/admin/alerts", get(list))
}

const WEEK_MS: i64 = 7 * 24 * 3_600_000;

async fn list(
    State(state): State<AppState>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if access.require(Action::ReadAudit).is_err() {
        access.require(Action::ManageUsers)?;
    }
    let now = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX);
    let (mut since, mut count) = (now - WEEK_MS, 100u32);
    for (name, value) in parse_pairs(query.as_deref().unwrap_or(""))? {
        match name.as_str() {
            "since" => {
                let t = OffsetDateTime::parse(&value, &Rfc3339).map_err(|_| {
                    ApiError::BadRequest(
                        "`since` must be an RFC 3339 instant such as 2026-12-01T00:00:00Z"
                            .to_owned(),
                    )
                })?;
                since = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            }
            "_count" => {
                count = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::BadRequest("`_count` must be 1 to 1000".to_owned()))?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{}` (since, _count)",
                    other.escape_debug()
                )));
            }
        }
    }
    let alerts = phivault_alerts::list_alerts(&state.store, since, count)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(json_response(StatusCode::OK, &json!({ "alerts": alerts })))
}
