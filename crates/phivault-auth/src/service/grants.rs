//! The grants of apps acting for people: authorization codes (single-use, PKCE-bound),
//! their exchange, refresh-token rotation with reuse detection, revocation by the client and
//! introspection. See the `oauth` module for what holds.

use phivault_store::oauth::{AuthorizationRow, CodeRow, CodeTake};

use super::oauth::has_scope;
use super::*;
use crate::pkce;

impl Accounts {
    /// Issues an authorization code for what the person approved, and records (or renews)
    /// the person's authorization of the app. The code is shown once, to the redirect.
    pub async fn issue_code(&self, request: &CodeRequest) -> Result<IssuedToken, ServiceError> {
        if !pkce::is_valid_challenge(&request.code_challenge) {
            return Err(ServiceError::Invalid(
                "code_challenge must be an S256 challenge".to_owned(),
            ));
        }
        let now = self.now();
        let code = IssuedToken::generate(TokenKind::AuthorizationCode).map_err(internal)?;
        let lifetime = TokenKind::AuthorizationCode
            .default_lifetime()
            .whole_seconds();
        self.store
            .insert_code(&CodeRow {
                code_hash: code.hash().as_bytes().to_vec(),
                client_id: request.client_id.clone(),
                user_id: request.user_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                scopes: request.scopes.clone(),
                code_challenge: request.code_challenge.clone(),
                launch_patient: request
                    .launch_patient
                    .as_ref()
                    .map(|p| p.as_str().to_owned()),
                launch_encounter: request.launch_encounter.clone(),
                nonce: request.nonce.clone(),
                family: uuid::Uuid::new_v4().to_string(),
                issued_at: now,
                expires_at: now.saturating_add(lifetime),
                used_at: None,
            })
            .await?;
        self.store
            .upsert_authorization(&AuthorizationRow {
                user_id: request.user_id.clone(),
                client_id: request.client_id.clone(),
                scopes: request.scopes.clone(),
                granted_at: now,
                last_used_at: now,
                revoked_at: None,
            })
            .await?;
        tracing::info!(target: "phivault::auth", client_id = %request.client_id, "authorization code issued");
        Ok(code)
    }

    /// Exchanges an authorization code (with its redirect URI and PKCE verifier) for tokens.
    /// A replayed code revokes what the first exchange issued (committed with `audit`).
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
        audit: &dyn AccountSink,
    ) -> Result<TokenGrant, GrantError> {
        let (kind, hash) =
            token::parse(code).map_err(|_| GrantError::InvalidGrant("the code is not valid"))?;
        if kind != TokenKind::AuthorizationCode {
            return Err(GrantError::InvalidGrant("the code is not valid"));
        }
        let now = self.now();
        let row = match self.store.take_code(hash.as_bytes(), now).await? {
            CodeTake::Taken(row) => row,
            CodeTake::Unknown => return Err(GrantError::InvalidGrant("the code is not valid")),
            CodeTake::Replayed(row) => {
                // Someone else may hold the tokens of the first exchange: revoke them.
                self.store
                    .revoke_family(
                        &row.family,
                        now,
                        audit,
                        &AccountChange::new(AccountChangeKind::TokenFamilyRevoked),
                    )
                    .await?;
                tracing::warn!(target: "phivault::auth", client_id = %row.client_id, "authorization code replayed; its tokens are revoked");
                return Err(GrantError::InvalidGrant("the code was already used"));
            }
        };
        if row.client_id != client.client_id {
            return Err(GrantError::InvalidGrant(
                "the code was issued to another client",
            ));
        }
        if now >= row.expires_at {
            return Err(GrantError::InvalidGrant("the code has expired"));
        }
        if row.redirect_uri != redirect_uri {
            return Err(GrantError::InvalidGrant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        if !pkce::verifier_matches(code_verifier, &row.code_challenge) {
            return Err(GrantError::InvalidGrant(
                "the code_verifier does not match the code_challenge",
            ));
        }
        let user = match self.store.user_by_id(&row.user_id).await? {
            Some(u) if u.disabled_at.is_none() => u,
            _ => return Err(GrantError::InvalidGrant("the account is disabled")),
        };
        let refresh_expires = if has_scope(&row.scopes, "offline_access") {
            Some(now.saturating_add(TokenKind::Refresh.default_lifetime().whole_seconds()))
        } else if has_scope(&row.scopes, "online_access") {
            Some(now.saturating_add(ONLINE_REFRESH_SECS))
        } else {
            None
        };
        let grant = self
            .issue_grant(IssueGrant {
                user_id: &user.user_id,
                client_id: &client.client_id,
                scopes: &row.scopes,
                patient: row.launch_patient.as_deref(),
                encounter: row.launch_encounter.as_deref(),
                family: &row.family,
                refresh_expires,
                now,
            })
            .await?;
        self.store
            .insert_tokens(&grant.rows)
            .await
            .map_err(GrantError::from)?;
        self.store
            .touch_authorization(&user.user_id, &client.client_id, now)
            .await?;
        tracing::info!(target: "phivault::auth", client_id = %client.client_id, "authorization code exchanged");
        Ok(TokenGrant {
            nonce: row.nonce,
            ..grant.grant
        })
    }

    /// Rotates a refresh token: its successor and a new access token, optionally with fewer
    /// scopes. A rotated token presented again revokes its whole family (committed with
    /// `audit`, as the request's entry) and answers [`GrantError::RefreshReuse`].
    pub async fn refresh(
        &self,
        client: &OAuthClient,
        refresh_token: &str,
        scope: Option<&str>,
        audit: &dyn AccountSink,
    ) -> Result<TokenGrant, GrantError> {
        let invalid = GrantError::InvalidGrant("the refresh token is not valid");
        let (kind, hash) = token::parse(refresh_token)
            .map_err(|_| GrantError::InvalidGrant("the refresh token is not valid"))?;
        if kind != TokenKind::Refresh {
            return Err(invalid);
        }
        let now = self.now();
        let Some(row) = self.store.token(hash.as_bytes()).await? else {
            return Err(invalid);
        };
        if row.kind != TokenKind::Refresh.as_str() {
            return Err(invalid);
        }
        if row.client_id.as_deref() != Some(client.client_id.as_str()) {
            return Err(GrantError::InvalidGrant(
                "the refresh token was issued to another client",
            ));
        }
        let family = row
            .family
            .clone()
            .ok_or_else(|| internal("a refresh token without a family"))?;
        // A person's revocation of the app revoked this token too: that is not a theft.
        let authorization = self
            .store
            .authorization(&row.principal_id, &client.client_id)
            .await?;
        if authorization
            .as_ref()
            .is_none_or(|a| a.revoked_at.is_some())
        {
            return Err(GrantError::InvalidGrant(
                "the person revoked this app's access",
            ));
        }
        if row.revoked_at.is_some() {
            return Err(self.refresh_reused(&family, now, audit).await);
        }
        if now >= row.expires_at {
            return Err(GrantError::InvalidGrant("the refresh token has expired"));
        }
        match self.store.user_by_id(&row.principal_id).await? {
            Some(u) if u.disabled_at.is_none() => {}
            _ => return Err(GrantError::InvalidGrant("the account is disabled")),
        }
        let scopes = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => row.scopes.clone(),
            Some(s) => {
                let requested =
                    ScopeSet::parse(s).map_err(|e| GrantError::InvalidScope(e.to_string()))?;
                let held = ScopeSet::parse(&row.scopes).map_err(internal)?;
                if !scopes_within(&requested, &held) {
                    return Err(GrantError::InvalidScope(
                        "a refresh cannot add scopes to the grant".to_owned(),
                    ));
                }
                requested.to_string()
            }
        };
        // An offline grant gets a fresh 90 days; an online one keeps its sign-in's end.
        let refresh_expires = if has_scope(&scopes, "offline_access") {
            now.saturating_add(TokenKind::Refresh.default_lifetime().whole_seconds())
        } else {
            row.expires_at
        };
        let grant = self
            .issue_grant(IssueGrant {
                user_id: &row.principal_id,
                client_id: &client.client_id,
                scopes: &scopes,
                patient: row.launch_patient.as_deref(),
                encounter: row.encounter.as_deref(),
                family: &family,
                refresh_expires: Some(refresh_expires),
                now,
            })
            .await?;
        if !self
            .store
            .rotate_refresh(hash.as_bytes(), now, &grant.rows)
            .await?
        {
            // Revoked between the read and the rotation: another presentation won the race.
            return Err(self.refresh_reused(&family, now, audit).await);
        }
        self.store
            .touch_authorization(&row.principal_id, &client.client_id, now)
            .await?;
        tracing::info!(target: "phivault::auth", client_id = %client.client_id, "refresh token rotated");
        Ok(grant.grant)
    }

    /// A revoked refresh token was presented. When tokens of its family are still in force,
    /// someone else holds a successor (or the token itself was copied): every one of them is
    /// revoked, with `audit`'s entry, and the answer is [`GrantError::RefreshReuse`]. When the
    /// whole family is already dead (revoked by its client, a person, or an earlier reuse),
    /// there is nothing to protect and nothing to raise: a plain `invalid_grant`.
    async fn refresh_reused(&self, family: &str, now: i64, audit: &dyn AccountSink) -> GrantError {
        match self
            .store
            .revoke_family(
                family,
                now,
                audit,
                &AccountChange::new(AccountChangeKind::TokenFamilyRevoked),
            )
            .await
        {
            Ok(0) => GrantError::InvalidGrant("the refresh token was revoked"),
            Ok(_) => {
                tracing::warn!(target: "phivault::auth", "a rotated refresh token was presented again: its family is revoked (probable theft)");
                GrantError::RefreshReuse
            }
            Err(e) => GrantError::from(e),
        }
    }

    /// The access (and refresh) token rows of a grant, not yet stored.
    async fn issue_grant(&self, g: IssueGrant<'_>) -> Result<IssuedGrant, GrantError> {
        let (access, mut access_record) = TokenRecord::issue(
            TokenKind::Access,
            g.user_id,
            Some(g.client_id.to_owned()),
            g.scopes,
            g.now,
        )
        .map_err(internal)?;
        let mut rows = Vec::with_capacity(2);
        let refresh = match g.refresh_expires {
            Some(expires_at) => {
                let (refresh, mut record) = TokenRecord::issue(
                    TokenKind::Refresh,
                    g.user_id,
                    Some(g.client_id.to_owned()),
                    g.scopes,
                    g.now,
                )
                .map_err(internal)?;
                record.expires_at = expires_at;
                // An access token never outlives the refresh token of its grant.
                access_record.expires_at = access_record.expires_at.min(expires_at);
                rows.push(self.grant_row(&record, &g));
                Some(refresh)
            }
            None => None,
        };
        rows.insert(0, self.grant_row(&access_record, &g));
        let patient = g.patient.map(parse_id).transpose()?;
        Ok(IssuedGrant {
            grant: TokenGrant {
                access,
                expires_in: access_record.expires_at.saturating_sub(g.now),
                scope: g.scopes.to_owned(),
                refresh,
                patient,
                encounter: g.encounter.map(str::to_owned),
                user_id: g.user_id.to_owned(),
                client_id: g.client_id.to_owned(),
                nonce: None,
            },
            rows,
        })
    }

    fn grant_row(&self, record: &TokenRecord, g: &IssueGrant<'_>) -> TokenRow {
        let mut row = token_row(record, g.patient.map(str::to_owned));
        row.family = Some(g.family.to_owned());
        row.encounter = g.encounter.map(str::to_owned);
        row
    }

    /// Revokes a token presented to the revocation endpoint by `client`: a refresh token
    /// revokes its whole family, an access token itself. Tokens of other clients and unknown
    /// tokens are ignored (RFC 7009 answers 200 either way). True when something was revoked.
    pub async fn revoke_client_token(
        &self,
        client: &OAuthClient,
        token: &str,
        audit: &dyn AccountSink,
    ) -> Result<bool, ServiceError> {
        let Ok((kind, hash)) = token::parse(token) else {
            return Ok(false);
        };
        if !matches!(kind, TokenKind::Access | TokenKind::Refresh) {
            return Ok(false);
        }
        let Some(row) = self.store.token(hash.as_bytes()).await? else {
            return Ok(false);
        };
        if row.client_id.as_deref() != Some(client.client_id.as_str()) {
            return Ok(false);
        }
        let change = AccountChange::new(AccountChangeKind::TokenRevoked);
        let now = self.now();
        match (kind, row.family.as_deref()) {
            (TokenKind::Refresh, Some(family)) => Ok(self
                .store
                .revoke_family(family, now, audit, &change)
                .await?
                > 0),
            _ => Ok(self
                .store
                .revoke_token(hash.as_bytes(), now, audit, &change)
                .await?),
        }
    }

    /// RFC 7662 introspection: what an active access or refresh token stands for, else `None`
    /// (unknown, expired, revoked, of a disabled client or account, or not an OAuth2 token).
    pub async fn introspect(&self, token: &str) -> Result<Option<TokenRow>, ServiceError> {
        let Ok((kind, hash)) = token::parse(token) else {
            return Ok(None);
        };
        if !matches!(kind, TokenKind::Access | TokenKind::Refresh) {
            return Ok(None);
        }
        let now = self.now();
        let Some(row) = self.store.token(hash.as_bytes()).await? else {
            return Ok(None);
        };
        if row.kind != kind.as_str() || row.revoked_at.is_some() || now >= row.expires_at {
            return Ok(None);
        }
        if let Some(client_id) = row.client_id.as_deref() {
            match self.store.client(client_id).await? {
                Some(c) if c.disabled_at.is_none() => {}
                _ => return Ok(None),
            }
        }
        if row.client_id.as_deref() != Some(row.principal_id.as_str()) {
            match self.store.user_by_id(&row.principal_id).await? {
                Some(u) if u.disabled_at.is_none() => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(row))
    }
}

/// What one grant issues.
struct IssueGrant<'a> {
    user_id: &'a str,
    client_id: &'a str,
    scopes: &'a str,
    patient: Option<&'a str>,
    encounter: Option<&'a str>,
    family: &'a str,
    refresh_expires: Option<i64>,
    now: i64,
}

struct IssuedGrant {
    grant: TokenGrant,
    rows: Vec<TokenRow>,
}
