//! Launch contexts and a person's view of their apps: EHR launch ids, the patients a person
//! may put in an app's context, the apps they authorized and their revocation.

use phivault_store::oauth::LaunchRow;

use super::oauth::LAUNCH_LIFETIME_SECS;
use super::*;

impl Accounts {
    /// Mints an EHR launch id for a clinician's session: bound to the user, a patient they may
    /// reach and optionally an encounter, usable for 5 minutes.
    pub async fn mint_launch(
        &self,
        who: &Authenticated,
        patient: &Id,
        encounter: Option<&Id>,
    ) -> Result<IssuedToken, ServiceError> {
        if who.enrolment_only {
            return Err(ServiceError::EnrolmentRequired);
        }
        if who.principal.kind() != PrincipalKind::User || who.client_id.is_some() {
            return Err(ServiceError::Invalid(
                "a launch is minted for a person's own session, not an app's token".to_owned(),
            ));
        }
        if !self.may_pick(who, patient).await? {
            return Err(ServiceError::NotFound("patient in your care".to_owned()));
        }
        let now = self.now();
        let launch = IssuedToken::generate(TokenKind::Launch).map_err(internal)?;
        self.store
            .insert_launch(&LaunchRow {
                launch_hash: launch.hash().as_bytes().to_vec(),
                user_id: who.principal.id().to_owned(),
                patient_id: patient.as_str().to_owned(),
                encounter_id: encounter.map(|e| e.as_str().to_owned()),
                created_at: now,
                expires_at: now.saturating_add(LAUNCH_LIFETIME_SECS),
            })
            .await?;
        Ok(launch)
    }

    /// The (patient, encounter) of a launch id minted for `user_id` and not expired.
    pub async fn resolve_launch(
        &self,
        user_id: &str,
        launch: &str,
    ) -> Result<Option<(Id, Option<String>)>, ServiceError> {
        let Ok((TokenKind::Launch, hash)) = token::parse(launch) else {
            return Ok(None);
        };
        let Some(row) = self.store.launch(hash.as_bytes()).await? else {
            return Ok(None);
        };
        if row.user_id != user_id || self.now() >= row.expires_at {
            return Ok(None);
        }
        Ok(Some((parse_id(&row.patient_id)?, row.encounter_id)))
    }

    /// Whether the user may put `patient` in an app's context: their own record (patient
    /// users), or a patient in their care (grants and care teams).
    pub async fn may_pick(&self, who: &Authenticated, patient: &Id) -> Result<bool, ServiceError> {
        if who.principal.role() == Role::Patient {
            return Ok(who.principal.linked_patient() == Some(patient));
        }
        Ok(self.care_patients(who).await?.contains(patient))
    }

    /// The apps the user has authorized and not revoked, with their client names.
    pub async fn authorized_apps(
        &self,
        who: &Authenticated,
    ) -> Result<Vec<AppAuthorization>, ServiceError> {
        let user = self.user_of(who).await?;
        let mut out = Vec::new();
        for row in self.store.authorizations_of_user(&user.user_id).await? {
            let client_name = self
                .store
                .client(&row.client_id)
                .await?
                .map(|c| c.name)
                .unwrap_or_default();
            out.push(AppAuthorization {
                client_id: row.client_id,
                client_name,
                scopes: row.scopes,
                granted_at: row.granted_at,
                last_used_at: row.last_used_at,
            });
        }
        Ok(out)
    }

    /// Revokes the user's authorization of an app and every token it holds for them, with
    /// `audit`'s entry; binds the app's next request. False when none was in force.
    pub async fn revoke_app(
        &self,
        who: &Authenticated,
        client_id: &str,
        audit: &dyn AccountSink,
    ) -> Result<bool, ServiceError> {
        let user = self.user_of(who).await?;
        Ok(self
            .store
            .revoke_authorization(
                &user.user_id,
                client_id,
                self.now(),
                audit,
                &AccountChange::new(AccountChangeKind::AuthorizationRevoked),
            )
            .await?)
    }
}
