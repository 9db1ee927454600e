//! Keeps an OpenID Connect signing key in force while serving: at start (so the JWKS is
//! ready before the first sign-in) and then every [`CHECK_EVERY`], a key older than its
//! rotation age is replaced and replaced keys past their overlap are retired
//! (`Accounts::ensure_signing_key`). Several nodes may run this at once: each step is safe to
//! repeat, and a key created twice at the same moment only publishes one more key.

use std::time::Duration;

use phivault_auth::Accounts;

/// How often the keys are looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Runs until aborted.
pub(crate) async fn signing_key_loop(accounts: Accounts, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Sign-ins still work (an id_token creates a key when none is in force): logged, tried
        // again at the next tick.
        if let Err(e) = accounts.ensure_signing_key(false).await {
            tracing::warn!(error = %e, "checking the OpenID Connect signing keys failed");
        }
    }
}
