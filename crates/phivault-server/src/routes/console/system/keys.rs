//! `GET /admin/console/keys` (the key hierarchy as `phivault keys status` shows it, and the
//! last rotation) and `POST /admin/console/keys/rotate` (rotate the key-encryption key).
//!
//! The rotation rewraps every data key under a new key-encryption key, in batches, while the
//! server keeps serving (`Store::rotate_keks`), then deletes the old key; it runs in the
//! background ([`super::jobs`]) and the page shows its progress on reload. Only
//! administrators may start it (an auditor gets a 403 page); one runs at a time. The post's
//! own entry says `started` or `already running`; when the rotation ends, its task appends a
//! `keys rotate` entry with the outcome, by the person who started it, under the post's
//! request id (as `phivault keys rotate` appends `cli keys rotate`).
//!
//! The master key is not handled here: it lives on the server host and is rotated there
//! (`phivault keys rotate-master`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phivault_policy::Role;
use serde::Serialize;

use super::jobs::{RotationView, jobs_of};
use super::text::{age, now_ms, when_secs};
use super::{checked_post, error_page, failed, show, username};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::{Area, see_other, signed_in};

/// The page's path.
const PATH: &str = "/admin/console/keys";

/// The action of the entry a finished rotation appends.
pub(super) const ROTATION_ACTION: &str = "keys rotate";

/// `GET /admin/console/keys`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
) -> Response {
    let who = match signed_in(&state, &slot, &headers, Area::Console, PATH).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let status = match state.store.key_status().await {
        Ok(s) => s,
        Err(e) => return failed(&state, "reading the key status", &e),
    };
    let now = now_ms() / 1000;
    let context = KeysPage {
        keks: status
            .keks
            .iter()
            .map(|k| KekLine {
                id: k.kek_id.clone(),
                created: when_secs(k.created_at),
                age: age(now - k.created_at),
                active: k.active,
                data_keys: k.data_keys,
            })
            .collect(),
        kinds: status
            .data_keys_by_kind
            .iter()
            .map(|(kind, n)| KindLine {
                kind: kind_words(kind),
                count: *n,
            })
            .collect(),
        pending: status.pending,
        residue: state.store.key_residue_pending(),
        rotation: jobs_of(&state.audit).rotation(),
        can_rotate: who.principal.role() == Role::Admin,
    };
    show(&state, &headers, "console/keys.html", "keys", context)
}

/// The keys page's values.
#[derive(Serialize)]
pub(super) struct KeysPage {
    /// The key-encryption keys, oldest first.
    pub(super) keks: Vec<KekLine>,
    /// Data keys by kind.
    pub(super) kinds: Vec<KindLine>,
    /// Data keys still under an old key-encryption key (an unfinished rotation).
    pub(super) pending: u64,
    /// Replaced wrappings still in the database files.
    pub(super) residue: bool,
    /// The last rotation of this process.
    pub(super) rotation: Option<RotationView>,
    /// The person may rotate (an administrator).
    pub(super) can_rotate: bool,
}

/// One key-encryption key (no key material).
#[derive(Serialize)]
pub(super) struct KekLine {
    /// The key's id.
    pub(super) id: String,
    /// When it was created (UTC).
    pub(super) created: String,
    /// How long ago, in words.
    pub(super) age: String,
    /// New data keys are wrapped under it.
    pub(super) active: bool,
    /// Data keys wrapped under it.
    pub(super) data_keys: u64,
}

/// Data keys of one kind.
#[derive(Serialize)]
pub(super) struct KindLine {
    /// What they protect, in words.
    pub(super) kind: String,
    /// How many.
    pub(super) count: u64,
}

/// What a kind of data key protects, in words.
fn kind_words(kind: &str) -> String {
    match kind {
        "patient" => "Patients' records (one key per patient)".to_owned(),
        "directory" => "Accounts and other records of no patient".to_owned(),
        "index" => "Search indexes".to_owned(),
        other => other.to_owned(),
    }
}

/// `POST /admin/console/keys/rotate` (`csrf`): starts a rotation of the key-encryption key
/// (administrators only), then shows the keys page with its progress.
pub(super) async fn rotate(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = checked_post(&state, &headers, body).await {
        return r;
    }
    let who = match signed_in(&state, &slot, &headers, Area::Console, PATH).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if who.principal.role() != Role::Admin {
        return error_page(
            &state,
            StatusCode::FORBIDDEN,
            "Only administrators can rotate keys",
            "Your account can see the key status but not change the keys. Ask an \
             administrator to rotate them.",
        );
    }
    let by = username(&state, &who).await;
    let record = slot.clone();
    let started = jobs_of(&state.audit).start_rotation(
        state.store.clone(),
        state.audit.clone(),
        by,
        move |outcome| record.entry(ROTATION_ACTION.to_owned(), None, None, None, outcome),
    );
    slot.note_action_detail(if started {
        "started"
    } else {
        "already running"
    });
    see_other(PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_in_words() {
        assert!(kind_words("patient").starts_with("Patients'"));
        assert_eq!(kind_words("index"), "Search indexes");
        assert_eq!(kind_words("other"), "other");
    }
}
