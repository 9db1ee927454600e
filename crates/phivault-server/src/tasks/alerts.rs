//! The alert task of a serving process ([`phivault_alerts::AlertEngine`]), answering the
//! rules' questions about care relationships and grants from the accounts.

use std::sync::Arc;

use phivault_alerts::{AlertEngine, Grantee, LookupFuture, Lookups, Rule, Webhook};
use phivault_auth::Accounts;
use phivault_fhir::Id;

use crate::AppState;

/// The detection rules and the webhook of a serving process.
#[derive(Debug)]
pub struct Alerting {
    /// The checked rules.
    pub rules: Vec<Rule>,
    /// Where alerts are POSTed (none: they are only in the trail).
    pub webhook: Option<Arc<Webhook>>,
}

impl Default for Alerting {
    /// The default rules ([`phivault_alerts::default_rules`]), no webhook.
    fn default() -> Alerting {
        Alerting {
            // The defaults are checked by the crate's own tests; should they ever fail to
            // check, no rule runs rather than a half set.
            rules: phivault_alerts::check_rules(None).unwrap_or_default(),
            webhook: None,
        }
    }
}

/// The engine of `state`'s rules over its trail.
pub(crate) fn engine(state: &AppState) -> AlertEngine {
    AlertEngine::new(
        state.alerting.rules.clone(),
        state.alerting.webhook.clone(),
        state.audit.clone(),
        Arc::new(AccountLookups(state.accounts.clone())),
    )
}

struct AccountLookups(Accounts);

fn patient_id(text: &str) -> Result<Id, String> {
    Id::parse(text).map_err(|_| "an audit entry names a malformed patient id".to_owned())
}

impl Lookups for AccountLookups {
    fn has_care<'a>(&'a self, user: &'a str, patient: &'a str) -> LookupFuture<'a, bool> {
        Box::pin(async move {
            let patient = patient_id(patient)?;
            self.0
                .user_has_care(user, &patient)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn grantees<'a>(&'a self, patient: &'a str) -> LookupFuture<'a, Vec<Grantee>> {
        Box::pin(async move {
            let patient = patient_id(patient)?;
            let grantees = self.0.grantees(&patient).await.map_err(|e| e.to_string())?;
            Ok(grantees
                .into_iter()
                .map(|(user_id, created, granted)| Grantee {
                    user_id,
                    user_created_ms: created.saturating_mul(1000),
                    granted_ms: granted.saturating_mul(1000),
                })
                .collect())
        })
    }
}
