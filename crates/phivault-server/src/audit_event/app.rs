//! The app of an entry: a person acting through an app they authorized is the entry's actor,
//! and the app (`AuditEntry::via_client`) is a second agent of its AuditEvent, so a patient's
//! access log says "Dr Smith, through Heart Diary".

use serde_json::{Value, json};

use super::{ApiError, AuditEntry, DCM_SYSTEM, Names, View, audit_event, coding};

impl Names<'_> {
    /// The AuditEvent of `entry` as `view` may see it, with its actor's name and, for a
    /// person acting through an app, the app as a second agent.
    pub(super) async fn event(
        &mut self,
        entry: &AuditEntry,
        view: &View,
    ) -> Result<Value, ApiError> {
        let name = self.of(entry).await?;
        let mut event = audit_event(entry, name.as_deref(), view);
        if let Some(client) = &entry.via_client {
            let app = match self.apps.get(client) {
                Some(name) => name.clone(),
                None => {
                    let name = self.accounts.client_name(client).await?;
                    self.apps.insert(client.clone(), name.clone());
                    name
                }
            };
            if let Some(agents) = event.get_mut("agent").and_then(Value::as_array_mut) {
                agents.push(app_agent(client, app.as_deref()));
            }
        }
        Ok(event)
    }
}

/// The app a person acted through: an agent that did not request on its own.
pub(super) fn app_agent(client_id: &str, name: Option<&str>) -> Value {
    json!({
        "type": { "coding": [coding(DCM_SYSTEM, "110150", "Application")] },
        "who": {
            "identifier": { "system": "urn:phivault:client", "value": client_id },
            "display": name.unwrap_or("unknown app"),
        },
        "requestor": false,
    })
}
