//! OAuth2 clients: registration, credential checks and the client-credentials grant.

use super::*;

impl Accounts {
    /// Registers a `confidential-secret` OAuth2 client (client credentials grant) with its
    /// allowed scopes, committed with `audit`'s entry; returns (client_id, secret).
    pub async fn create_client(
        &self,
        name: &str,
        scopes: &str,
        launch_patient: Option<&Id>,
        audit: &dyn AccountSink,
    ) -> Result<(String, IssuedToken), ServiceError> {
        let (client_id, secret) = self
            .register_client(
                &ClientRegistration {
                    name: name.to_owned(),
                    client_type: ClientType::ConfidentialSecret,
                    scopes: scopes.to_owned(),
                    redirect_uris: Vec::new(),
                    jwks: None,
                    jwks_url: None,
                    launch_patient: launch_patient.cloned(),
                },
                audit,
            )
            .await?;
        let secret = secret.ok_or_else(|| internal("a secret client without a secret"))?;
        Ok((client_id, secret))
    }

    /// The enabled client `client_id` whose secret is `secret` (compared in constant time; an
    /// unknown client compares a stand-in hash), else a credential failure.
    pub(super) async fn client_by_credentials(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<ClientRow, ServiceError> {
        let client = if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
            None
        } else {
            self.store.client(client_id).await?
        };
        let presented = TokenHash::of(secret);
        let stored = client
            .as_ref()
            .and_then(|c| <[u8; 32]>::try_from(c.secret_hash.as_slice()).ok())
            .unwrap_or(NO_CLIENT_SECRET);
        let matches = bool::from(presented.ct_eq(&TokenHash::from_bytes(stored)));
        match client {
            Some(c) if matches && c.disabled_at.is_none() => Ok(c),
            _ => {
                tracing::info!(target: "phivault::auth", "client credentials refused");
                Err(ServiceError::CredentialFailure)
            }
        }
    }

    /// OAuth2 client credentials grant of a `confidential-secret` client: (access token,
    /// lifetime seconds, granted scopes).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<(IssuedToken, i64, String), ServiceError> {
        let credentials = ClientCredentials::Secret {
            client_id: client_id.to_owned(),
            secret: zeroize::Zeroizing::new(secret.to_owned()),
        };
        // A secret needs no token endpoint URL (only assertions name it).
        let client = self
            .authenticate_client(&credentials, "")
            .await
            .map_err(GrantError::into_service)?;
        self.client_credentials_for(&client, scope)
            .await
            .map_err(GrantError::into_service)
    }
}
