//! The admin console (`/admin`, pages under `/admin/console/`): users, apps, break-the-glass
//! review, alerts and breach reports ([`people`]); the audit chain, keys, backups and
//! settings, and the overview ([`system`]); for administrators and auditors signed in with
//! their second factor (see `crate::web`).

use axum::Router;

use crate::AppState;

pub(crate) mod people;
pub(crate) mod system;

/// The console's base template (each part lists its own pages).
pub(crate) const TEMPLATES: &[(&str, &str)] = &[(
    "console/base.html",
    include_str!("../../../templates/console/base.html"),
)];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .merge(people::routes())
        .merge(system::routes())
}
