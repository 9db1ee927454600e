//! Password logins: one step (the JSON API, with the code in the same request) or two (the
//! sign-in pages: password, then a ticket redeemed with the TOTP or recovery code).

use super::*;

impl Accounts {
    /// A refused credential on a known account (the attempt was already counted when it
    /// was claimed): the one answer for all.
    fn refuse<T>(&self, user: &UserRow, why: &'static str) -> Result<T, ServiceError> {
        tracing::info!(target: "phivault::auth", user_id = %user.user_id, why, "login refused");
        Err(ServiceError::CredentialFailure)
    }

    /// Password (+ TOTP or recovery code) login with lockout and per-address limits.
    pub async fn login(&self, request: LoginRequest) -> Result<LoginOutcome, ServiceError> {
        match self.login_step(request, false).await? {
            LoginStep::Done(outcome) => Ok(outcome),
            LoginStep::SecondFactor(_) => Err(internal("a one-step login asked for a second step")),
        }
    }

    /// A login in two steps (the sign-in pages): with a password only, an account with a
    /// second factor answers [`LoginStep::SecondFactor`] with a ticket that
    /// [`Accounts::login_second_factor`] redeems once, within 5 minutes, with a TOTP or
    /// recovery code. Otherwise as [`Accounts::login`].
    pub async fn login_first_factor(
        &self,
        request: LoginRequest,
    ) -> Result<LoginStep, ServiceError> {
        self.login_step(request, true).await
    }

    async fn login_step(
        &self,
        request: LoginRequest,
        second_step: bool,
    ) -> Result<LoginStep, ServiceError> {
        let now = self.now();
        let LoginRequest {
            username,
            password,
            totp,
            recovery_code,
            address,
        } = request;
        self.check_address(address).await?;
        // Every attempt is counted as a failure before the password is checked, in the same
        // step as the lock is checked, and the count is cleared only by a complete login: so
        // parallel guesses get at most the allowed number of password checks.
        let Some(user) = self.store.user_by_username(&username).await? else {
            // A name without an account is claimed like an account, in the store (shared by
            // every server), so the two answer alike.
            if let LoginClaim::Locked { until } = self
                .store
                .claim_unknown_login(&username, now, &self.lockout, UNKNOWN_NAME_KEEP_SECS)
                .await?
            {
                return Err(ServiceError::Throttled {
                    retry_after: LockedUntil { until }.retry_after(now),
                });
            }
            self.verify_password(password, None).await?;
            return Err(ServiceError::CredentialFailure);
        };
        match self
            .store
            .claim_login_attempt(&user.user_id, now, &self.lockout)
            .await?
        {
            LoginClaim::Admitted => {}
            LoginClaim::Locked { until } => {
                return Err(ServiceError::Throttled {
                    retry_after: LockedUntil { until }.retry_after(now),
                });
            }
            LoginClaim::NoSuchUser => {
                self.verify_password(password, None).await?;
                return Err(ServiceError::CredentialFailure);
            }
        }
        if user.disabled_at.is_some() {
            self.verify_password(password, None).await?;
            tracing::info!(target: "phivault::auth", user_id = %user.user_id, "login to a disabled account refused");
            return Err(ServiceError::CredentialFailure);
        }
        let (ok, password) = self
            .verify_password(password, Some(user.password_hash.clone()))
            .await?;
        if !ok {
            return self.refuse(&user, "wrong password");
        }
        let role = Role::parse(&user.role).map_err(internal)?;
        if user.totp_enabled {
            if totp.is_none() && recovery_code.is_none() && second_step {
                // The password was right: a ticket for the second step. The attempt stays
                // counted as a failure until the second factor passes, so guesses of the
                // password are limited by the lockout whatever the ticket reveals.
                let (ticket, record) =
                    TokenRecord::issue(TokenKind::Mfa, &user.user_id, None, "", now)
                        .map_err(internal)?;
                self.store.insert_token(&token_row(&record, None)).await?;
                return Ok(LoginStep::SecondFactor(ticket));
            }
            self.check_second_factor(&user, totp.as_deref(), recovery_code.as_deref(), now)
                .await?;
        }
        let outcome = self
            .finish_login(&user, role, Some(password), address, now)
            .await?;
        Ok(LoginStep::Done(outcome))
    }

    /// Redeems a second-step ticket of [`Accounts::login_first_factor`] with a TOTP or
    /// recovery code: the session. The ticket is spent by the attempt, right or wrong, and the
    /// attempt counts against the account's lockout like a password attempt.
    pub async fn login_second_factor(
        &self,
        ticket: &str,
        totp: Option<&str>,
        recovery_code: Option<&str>,
        address: IpAddr,
    ) -> Result<LoginOutcome, ServiceError> {
        self.check_address(address).await?;
        let now = self.now();
        let Ok((TokenKind::Mfa, hash)) = token::parse(ticket) else {
            return Err(ServiceError::CredentialFailure);
        };
        let row = self
            .store
            .token(hash.as_bytes())
            .await?
            .filter(|r| r.kind == TokenKind::Mfa.as_str() && r.revoked_at.is_none())
            .filter(|r| now < r.expires_at)
            .ok_or(ServiceError::CredentialFailure)?;
        // Spent whatever happens next (no audit entry of its own: the request's entry says
        // what happened).
        if !self
            .store
            .revoke_token(
                hash.as_bytes(),
                now,
                &phivault_store::NoAudit,
                &AccountChange::new(AccountChangeKind::TokenRevoked),
            )
            .await?
        {
            return Err(ServiceError::CredentialFailure);
        }
        let user = match self.store.user_by_id(&row.principal_id).await? {
            Some(u) if u.disabled_at.is_none() => u,
            _ => return Err(ServiceError::CredentialFailure),
        };
        match self
            .store
            .claim_login_attempt(&user.user_id, now, &self.lockout)
            .await?
        {
            LoginClaim::Admitted => {}
            LoginClaim::Locked { until } => {
                return Err(ServiceError::Throttled {
                    retry_after: LockedUntil { until }.retry_after(now),
                });
            }
            LoginClaim::NoSuchUser => return Err(ServiceError::CredentialFailure),
        }
        let role = Role::parse(&user.role).map_err(internal)?;
        self.check_second_factor(&user, totp, recovery_code, now)
            .await?;
        self.finish_login(&user, role, None, address, now).await
    }

    /// A complete login: failures cleared, the password rehashed when its parameters are
    /// old (when the password is at hand), a session issued.
    async fn finish_login(
        &self,
        user: &UserRow,
        role: Role,
        password: Option<Password>,
        address: IpAddr,
        now: i64,
    ) -> Result<LoginOutcome, ServiceError> {
        self.store.clear_login_failures(&user.user_id).await?;
        self.forgive_address(address).await;
        if let (Some(hasher), Some(password)) = (&self.hasher, password)
            && hasher.needs_rehash(&user.password_hash)
        {
            let phc = self.hash_password(password).await?;
            self.store.set_password_hash(&user.user_id, &phc).await?;
        }
        let (token, record) = TokenRecord::issue(TokenKind::Session, &user.user_id, None, "", now)
            .map_err(internal)?;
        self.store.insert_token(&token_row(&record, None)).await?;
        let enrolment_only = self.second_factor_required(role) && !user.totp_enabled;
        tracing::info!(target: "phivault::auth", user_id = %user.user_id, enrolment_only, "login");
        Ok(LoginOutcome {
            token,
            expires_at: record.expires_at,
            enrolment_only,
            role,
        })
    }

    /// Checks a TOTP or recovery code of `user` (each usable once); a missing one is refused
    /// like a wrong one.
    async fn check_second_factor(
        &self,
        user: &UserRow,
        totp: Option<&str>,
        recovery_code: Option<&str>,
        now: i64,
    ) -> Result<(), ServiceError> {
        let user = user.clone();
        if let Some(code) = totp {
            let secret = self
                .store
                .user_totp_secret(&user)
                .await?
                .ok_or_else(|| internal("TOTP enabled without a secret"))?;
            let secret = TotpSecret::from_bytes(&secret).map_err(internal)?;
            let checker = Totp::new(&secret, &user.user_id).map_err(internal)?;
            let last = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
            let step = match checker.verify(code, now, last) {
                Ok(step) => step,
                Err(TotpError::Replayed) => {
                    return self.refuse(&user, "TOTP code replayed");
                }
                Err(_) => return self.refuse(&user, "wrong TOTP code"),
            };
            let step = i64::try_from(step).map_err(internal)?;
            if !self.store.advance_totp_step(&user.user_id, step).await? {
                return self.refuse(&user, "TOTP code replayed concurrently");
            }
        } else if let Some(code) = recovery_code {
            let hashes: Vec<RecoveryCodeHash> = self
                .store
                .unused_recovery_codes(&user.user_id)
                .await?
                .into_iter()
                .map(RecoveryCodeHash::from_bytes)
                .collect();
            let Some(hash) = RecoveryCodes::verify(code, &hashes).and_then(|i| hashes.get(i))
            else {
                return self.refuse(&user, "wrong recovery code");
            };
            if !self
                .store
                .use_recovery_code(&user.user_id, hash.as_bytes(), now)
                .await?
            {
                return self.refuse(&user, "recovery code used concurrently");
            }
            tracing::info!(target: "phivault::auth", user_id = %user.user_id, "recovery code used");
        } else {
            // Answered like a wrong password (and counted like one): a distinct answer
            // would tell a guesser that the password was right.
            return self.refuse(&user, "second factor missing");
        }
        Ok(())
    }

    /// Whether the signed-in user has a confirmed second factor.
    pub async fn totp_enabled(&self, who: &Authenticated) -> Result<bool, ServiceError> {
        Ok(self.user_of(who).await?.totp_enabled)
    }
}
