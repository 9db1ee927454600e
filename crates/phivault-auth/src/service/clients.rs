//! OAuth2 clients: registration, credential checks and the client-credentials grant.

use super::*;

impl Accounts {
    /// Registers an OAuth2 client with its allowed scopes, committed with `audit`'s entry;
    /// returns (client_id, secret).
    pub async fn create_client(
        &self,
        name: &str,
        scopes: &str,
        launch_patient: Option<&Id>,
        audit: &dyn AccountSink,
    ) -> Result<(String, IssuedToken), ServiceError> {
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_CLIENT_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(format!(
                "a client name has 1 to {MAX_CLIENT_NAME_CHARS} characters, no control characters"
            )));
        }
        let set = ScopeSet::parse(scopes).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if set.data_scopes().is_empty() && set.other_scopes().is_empty() {
            return Err(ServiceError::Invalid(
                "a client needs at least one scope".to_owned(),
            ));
        }
        let client_id = format!("pvcl_{}", uuid::Uuid::new_v4());
        let secret = IssuedToken::generate(TokenKind::ClientSecret).map_err(internal)?;
        self.store
            .insert_client(
                &ClientRow {
                    client_id: client_id.clone(),
                    name: name.to_owned(),
                    secret_hash: secret.hash().as_bytes().to_vec(),
                    scopes: set.to_string(),
                    launch_patient: launch_patient.map(|p| p.as_str().to_owned()),
                    created_at: self.now(),
                    disabled_at: None,
                },
                audit,
                &AccountChange::new(AccountChangeKind::ClientRegistered),
            )
            .await?;
        tracing::info!(target: "phivault::auth", client_id, "OAuth2 client registered");
        Ok((client_id, secret))
    }

    /// The enabled client `client_id` whose secret is `secret` (compared in constant time; an
    /// unknown client compares a stand-in hash), else a credential failure.
    async fn client_by_credentials(
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

    /// Checks an OAuth2 client's credentials (e.g. of a revocation request) without issuing
    /// or changing anything.
    pub async fn verify_client(&self, client_id: &str, secret: &str) -> Result<(), ServiceError> {
        self.client_by_credentials(client_id, secret)
            .await
            .map(|_| ())
    }

    /// OAuth2 client credentials grant: (access token, lifetime seconds, granted scopes).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<(IssuedToken, i64, String), ServiceError> {
        let now = self.now();
        let client = self.client_by_credentials(client_id, secret).await?;
        let allowed = ScopeSet::parse(&client.scopes).map_err(internal)?;
        let granted = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => allowed,
            Some(s) => {
                let requested =
                    ScopeSet::parse(s).map_err(|e| ServiceError::Invalid(e.to_string()))?;
                if !scopes_within(&requested, &allowed) {
                    return Err(ServiceError::Invalid(
                        "the requested scope exceeds what the client is registered for".to_owned(),
                    ));
                }
                requested
            }
        };
        let granted = granted.to_string();
        let (token, record) = TokenRecord::issue(
            TokenKind::Access,
            &client.client_id,
            Some(client.client_id.clone()),
            granted.clone(),
            now,
        )
        .map_err(internal)?;
        self.store
            .insert_token(&token_row(&record, client.launch_patient.clone()))
            .await?;
        Ok((token, record.expires_at.saturating_sub(now), granted))
    }
}
