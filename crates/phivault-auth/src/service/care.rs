//! Care relationships (grants and CareTeams) and break-the-glass claims.

use super::*;

impl Accounts {
    /// Grants a user access to a patient (care relationship), optionally with labels,
    /// committed with `audit`'s entry.
    pub async fn grant(
        &self,
        username: &str,
        patient: &Id,
        labels: &[Label],
        expires_at: Option<i64>,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        if expires_at.is_some_and(|end| end <= now) {
            return Err(ServiceError::Invalid(
                "the grant would end before it starts".to_owned(),
            ));
        }
        let user = self.user_by_username(username).await?;
        let labels: BTreeSet<&'static str> = labels.iter().map(Label::as_str).collect();
        self.store
            .upsert_grant(
                &GrantRow {
                    user_id: user.user_id.clone(),
                    patient_id: patient.as_str().to_owned(),
                    labels: labels.into_iter().collect::<Vec<_>>().join(" "),
                    created_at: now,
                    expires_at,
                },
                audit,
                &AccountChange::about_patient(AccountChangeKind::Granted, patient),
            )
            .await?;
        tracing::info!(target: "phivault::auth", user_id = %user.user_id, "care grant");
        Ok(())
    }

    /// CareTeam resources matching `pairs` that put `practitioner` on their subject's care
    /// team now ([`care_team_grants`]), every page.
    async fn care_teams(
        &self,
        pairs: &[(&str, String)],
        practitioner: &Id,
    ) -> Result<Vec<Value>, ServiceError> {
        let now = OffsetDateTime::from_unix_timestamp(self.now())
            .map_err(|_| internal("the clock is out of range"))?;
        let rtype = ResourceType::parse("CareTeam").map_err(StoreError::from)?;
        let mut out = Vec::new();
        for page in 0..MAX_CARE_TEAM_PAGES {
            let mut query: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            query.push(("_count".to_owned(), CARE_TEAM_PAGE.to_string()));
            query.push(("_offset".to_owned(), (page * CARE_TEAM_PAGE).to_string()));
            let query = SearchQuery::parse(rtype, &query, false).map_err(StoreError::from)?;
            let found = self.store.search(rtype, &query).await?;
            let n = found.resources.len();
            out.extend(
                found
                    .resources
                    .into_iter()
                    .map(|r| r.body)
                    .filter(|b| care_team_grants(b, practitioner, now)),
            );
            if n < CARE_TEAM_PAGE {
                return Ok(out);
            }
        }
        tracing::warn!(target: "phivault::auth", "care team search truncated");
        Ok(out)
    }

    /// The care relationship of a user to a patient: (on care team or granted, label grants).
    pub async fn relationship(
        &self,
        who: &Authenticated,
        patient: &Id,
    ) -> Result<(bool, Vec<Label>), ServiceError> {
        if who.enrolment_only {
            return Err(ServiceError::EnrolmentRequired);
        }
        if who.principal.kind() != PrincipalKind::User {
            return Ok((false, Vec::new()));
        }
        if let Some(grant) = self
            .store
            .grant(who.principal.id(), patient.as_str())
            .await?
            && grant.is_active(self.now())
        {
            let labels = grant
                .labels
                .split_ascii_whitespace()
                .filter_map(|code| Label::parse(code).ok())
                .collect();
            return Ok((true, labels));
        }
        if let Some(practitioner) = &who.practitioner {
            let teams = self
                .care_teams(
                    &[
                        ("subject", format!("Patient/{patient}")),
                        ("participant", format!("Practitioner/{practitioner}")),
                    ],
                    practitioner,
                )
                .await?;
            if !teams.is_empty() {
                return Ok((true, Vec::new()));
            }
        }
        Ok((false, Vec::new()))
    }

    /// Whether the user with id `user_id` has a care relationship with `patient` now: a
    /// grant in force, or a CareTeam naming their Practitioner (the alert rules know users
    /// by id only). An unknown user has none.
    pub async fn user_has_care(&self, user_id: &str, patient: &Id) -> Result<bool, ServiceError> {
        if let Some(grant) = self.store.grant(user_id, patient.as_str()).await?
            && grant.is_active(self.now())
        {
            return Ok(true);
        }
        let Some(user) = self.store.user_by_id(user_id).await? else {
            return Ok(false);
        };
        let Some(practitioner) = user
            .practitioner_id
            .as_deref()
            .and_then(|p| Id::parse(p).ok())
        else {
            return Ok(false);
        };
        let teams = self
            .care_teams(
                &[
                    ("subject", format!("Patient/{patient}")),
                    ("participant", format!("Practitioner/{practitioner}")),
                ],
                &practitioner,
            )
            .await?;
        Ok(!teams.is_empty())
    }

    /// The accounts holding a grant on `patient`: (user id, account created, grant made),
    /// times in unix seconds.
    pub async fn grantees(&self, patient: &Id) -> Result<Vec<(String, i64, i64)>, ServiceError> {
        let mut out = Vec::new();
        for grant in self.store.grants_of_patient(patient.as_str()).await? {
            if let Some(user) = self.store.user_by_id(&grant.user_id).await? {
                out.push((grant.user_id, user.created_at, grant.created_at));
            }
        }
        Ok(out)
    }

    /// Every patient the user may reach through care relationships (grants and CareTeam
    /// resources naming the user's Practitioner), for compartment-restricted searches.
    pub async fn care_patients(&self, who: &Authenticated) -> Result<Vec<Id>, ServiceError> {
        if who.enrolment_only {
            return Err(ServiceError::EnrolmentRequired);
        }
        if who.principal.kind() != PrincipalKind::User {
            return Ok(Vec::new());
        }
        let mut out = BTreeSet::new();
        for p in self
            .store
            .granted_patients(who.principal.id(), self.now())
            .await?
        {
            out.insert(parse_id(&p)?);
        }
        if let Some(practitioner) = &who.practitioner {
            let teams = self
                .care_teams(
                    &[("participant", format!("Practitioner/{practitioner}"))],
                    practitioner,
                )
                .await?;
            out.extend(teams.iter().filter_map(|t| {
                t.pointer("/subject/reference")
                    .and_then(Value::as_str)
                    .and_then(patient_of_reference)
            }));
        }
        Ok(out.into_iter().collect())
    }

    /// The user's break-the-glass claim on a patient that is still active, if any.
    pub async fn active_break_glass(
        &self,
        who: &Authenticated,
        patient: &Id,
    ) -> Result<Option<BreakGlassRecord>, ServiceError> {
        if who.principal.kind() != PrincipalKind::User {
            return Ok(None);
        }
        self.store
            .active_break_glass(who.principal.id(), patient.as_str(), self.now())
            .await?
            .map(break_glass_record)
            .transpose()
    }

    /// Records a break-the-glass claim.
    pub async fn record_break_glass(
        &self,
        who: &Authenticated,
        patient: &Id,
        reason: &str,
        expires_at: i64,
    ) -> Result<String, ServiceError> {
        if who.enrolment_only {
            return Err(ServiceError::EnrolmentRequired);
        }
        let user = self.user_of(who).await?;
        if user.role != Role::Clinician.as_str() {
            return Err(ServiceError::Invalid(
                "only clinicians may break the glass".to_owned(),
            ));
        }
        let now = self.now();
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .map_err(|_| ServiceError::Invalid("time out of range".to_owned()))
        };
        let claim = BreakGlass::restore(reason, at(now)?, at(expires_at)?)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .insert_break_glass(&BreakGlassRow {
                id: id.clone(),
                user_id: user.user_id.clone(),
                patient_id: patient.as_str().to_owned(),
                reason: claim.reason().to_owned(),
                started_at: now,
                expires_at,
            })
            .await?;
        tracing::warn!(target: "phivault::auth", user_id = %user.user_id, id, "break-the-glass claimed");
        Ok(id)
    }

    /// Break-the-glass records, newest first.
    pub async fn list_break_glass(&self) -> Result<Vec<BreakGlassRecord>, ServiceError> {
        self.store
            .list_break_glass()
            .await?
            .into_iter()
            .map(break_glass_record)
            .collect()
    }
}
