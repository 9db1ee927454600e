//! Searches under the request's access: what the principal may see as SQL scopes (patients,
//! care teams, consents, labels), then every hit decided on its own facts before release.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use phivault_fhir::{Id, IndexEntry, ResourceType, SearchQuery};
use phivault_policy::{
    Action, BreakGlass, DecisionContext, Label, PrincipalKind, Purpose, ResourceRef, Role,
    ScopeContext,
};
use phivault_store::{SearchScope, StoredResource, Unreleased};

use super::{Access, Facts, LABEL_CODES, is_directory, restore_claim};
use crate::ApiError;

impl Access {
    /// Authorizes a search of `rtype` as a query; 403 when denied. A query is across
    /// patients, except for an app launched for one patient, whose searches never leave that
    /// patient's compartment (its `patient/` scopes reach nothing else).
    pub(crate) async fn authorize_query(&mut self, rtype: ResourceType) -> Result<(), ApiError> {
        let principal = &self.who.principal;
        let patient = match principal.kind() {
            PrincipalKind::Client if !is_directory(rtype) => principal.launch_patient().cloned(),
            PrincipalKind::User => self.app_patient(rtype),
            PrincipalKind::Client => None,
        };
        let facts = Facts {
            patient,
            labels: Vec::new(),
            new_patient: false,
        };
        self.authorize_body(Action::Search, rtype, &facts)
            .await
            .map(|_| ())
    }

    /// The one patient a person's app may search `rtype` in: its launch patient (a patient's
    /// own record by default) when its scopes reach that type only through `patient/` scopes.
    /// `None` for a person's own session, for `user/` scopes, and for directory types.
    fn app_patient(&self, rtype: ResourceType) -> Option<Id> {
        let principal = &self.who.principal;
        let scopes = principal.scopes()?;
        if is_directory(rtype) || scopes.permits(Action::Search, Some(rtype), None, None) {
            return None;
        }
        principal
            .launch_patient()
            .or(principal.linked_patient())
            .cloned()
    }

    /// Runs a search of `rtype` restricted to what the principal may read: a query-level
    /// decision, the SQL scopes, then every hit decided again. Returns the total (of what the
    /// principal may read) and the page's resources.
    ///
    /// Label grants are per patient and one SQL scope excludes the same labels everywhere, so
    /// a clinician's reachable patients are grouped by the labels they may read there (all of
    /// them under a break-the-glass claim), one scope per group; the groups are disjoint, and
    /// their results are paged one group after the other, in a fixed order. A search with
    /// `_sort` keys reads every match instead and orders them (see `sorted`).
    pub(crate) async fn search(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<(u64, Vec<StoredResource>), ApiError> {
        self.authorize_query(rtype).await?;
        let plan = self.search_plan(rtype, query).await?;
        if !query.sort.is_empty() && query.count > 0 {
            return self.search_sorted(rtype, query, &plan).await;
        }

        let mut total = 0u64;
        let mut resources = Vec::new();
        let mut skip = query.offset;
        let mut room = query.count;
        for scope in &plan.scopes {
            let mut q = query.clone();
            q.offset = if room > 0 { skip } else { 0 };
            q.count = room;
            let (found, page) = self.state.store.search_unreleased(rtype, &q, scope).await?;
            total = total.saturating_add(found);
            if room > 0 {
                room = room.saturating_sub(page.len());
                skip = skip.saturating_sub(usize::try_from(found).unwrap_or(usize::MAX));
                resources.extend(page);
            }
        }
        let (released, dropped) = self.decide_hits(rtype, &plan, resources).await?;
        Ok((total.saturating_sub(dropped), released))
    }

    /// Decides every hit of a search like a read and releases those allowed; notes their
    /// patients and labels (and any break-the-glass) in the request's audit entry. Returns the released
    /// resources, in the order given, and how many hits the policies refused.
    pub(super) async fn decide_hits(
        &mut self,
        rtype: ResourceType,
        plan: &SearchPlan,
        resources: Vec<Unreleased<StoredResource>>,
    ) -> Result<(Vec<StoredResource>, u64), ApiError> {
        let mut hits = Vec::with_capacity(resources.len());
        for r in resources {
            let facts = Self::stored_facts(r.facts());
            hits.push((r, facts));
        }
        // Contexts per patient, computed before the (synchronous) filter.
        let mut contexts: HashMap<Option<Id>, DecisionContext> = HashMap::new();
        for (_, facts) in &hits {
            if contexts.contains_key(&facts.patient) {
                continue;
            }
            let ctx = match (&plan.patients, &facts.patient) {
                (Some(known), Some(patient)) => {
                    let mut ctx = self.base_context();
                    ctx.consent_permits = self.consent_permits(patient, rtype).await?;
                    if let Some(f) = known.get(patient) {
                        ctx.care_team = f.care_team;
                        ctx.label_grants = f.label_grants.clone();
                        ctx.break_glass = f.claim.clone();
                    }
                    ctx
                }
                _ => self.context(rtype, facts).await?.0,
            };
            contexts.insert(facts.patient.clone(), ctx);
        }
        let before = hits.len();
        let base = self.base_context();
        let kept = self.state.policy.filter(hits, |(_, facts)| {
            let context = contexts
                .get(&facts.patient)
                .cloned()
                .unwrap_or_else(|| base.clone());
            self.request(
                Action::Search,
                ResourceRef::new(rtype, facts.patient.clone(), facts.labels.clone()),
                context,
            )
        });
        if kept.iter().any(|(_, proof)| proof.break_glass()) {
            self.slot.note_break_glass();
        }
        // Every patient whose data the page returns is named in the request's audit entry,
        // and every sensitivity label it carries.
        for ((_, facts), _) in &kept {
            if let Some(patient) = &facts.patient {
                self.slot.note_patient(patient);
            }
            self.slot.note_labels(&facts.labels);
        }
        let dropped = before - kept.len();
        if dropped > 0 {
            tracing::error!(
                dropped,
                rtype = %rtype,
                role = %self.role(),
                "search: the SQL scope and the policies disagree; hits the policies refuse were dropped"
            );
        }
        let mut released = Vec::with_capacity(kept.len());
        for ((r, _), proof) in kept {
            released.push(r.release(&proof)?);
        }
        Ok((released, dropped as u64))
    }

    /// What a search of `rtype` may see, in SQL terms, and the facts to decide its hits with.
    pub(super) async fn search_plan(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<SearchPlan, ApiError> {
        let directory = is_directory(rtype);
        let all_labels = || label_entries(rtype, &BTreeSet::new());
        let principal = self.who.principal.clone();
        let nothing = SearchScope {
            patients: Some(Vec::new()),
            directory: false,
            ..SearchScope::default()
        };
        let one = |scope| SearchPlan {
            scopes: vec![scope],
            patients: None,
        };
        match (principal.kind(), principal.role()) {
            (PrincipalKind::Client, _) => {
                let system = principal.scopes().is_some_and(|scopes| {
                    scopes.data_scopes().iter().any(|s| {
                        s.context() == ScopeContext::System
                            && s.resource_type().is_none_or(|t| t == rtype)
                    })
                });
                // Apps have no label grants: labelled resources are left out of their
                // searches (the policies refuse them too).
                let scope = if system && principal.launch_patient().is_none() {
                    self.across_patients(rtype, all_labels()?).await?
                } else if let Some(launch) = principal.launch_patient() {
                    let reachable = directory || self.consent_permits(launch, rtype).await?;
                    SearchScope {
                        patients: Some(if reachable {
                            vec![launch.clone()]
                        } else {
                            Vec::new()
                        }),
                        directory,
                        exclude_labels: all_labels()?,
                        exclude_patients: Vec::new(),
                    }
                } else {
                    nothing
                };
                Ok(one(scope))
            }
            (PrincipalKind::User, Role::Patient) => {
                // Their own compartment, labels included (a patient's own record passes them;
                // consent does not bind their own access).
                let scope = match principal.linked_patient() {
                    Some(own) => SearchScope {
                        patients: Some(vec![own.clone()]),
                        directory,
                        ..SearchScope::default()
                    },
                    None => SearchScope {
                        directory,
                        ..nothing
                    },
                };
                Ok(one(scope))
            }
            (PrincipalKind::User, Role::Clinician) if directory => Ok(one(SearchScope {
                patients: Some(Vec::new()),
                directory: true,
                exclude_labels: all_labels()?,
                exclude_patients: Vec::new(),
            })),
            (PrincipalKind::User, Role::Clinician) => {
                let mut plan = self.clinician_plan(rtype, query).await?;
                // An app the clinician launched for one patient searches only there.
                if let Some(only) = self.app_patient(rtype) {
                    for scope in &mut plan.scopes {
                        scope.patients = Some(match scope.patients.take() {
                            Some(list) => list.into_iter().filter(|p| *p == only).collect(),
                            None => vec![only.clone()],
                        });
                    }
                }
                Ok(plan)
            }
            // Other roles reach no clinical data by default; an operator's policy may grant
            // more, which the per-hit decisions then apply (labels left out).
            _ => Ok(one(self.across_patients(rtype, all_labels()?).await?)),
        }
    }

    /// A scope over every compartment (and the directory), less what the patients' consents
    /// refuse this request (nothing to refuse for a directory type).
    pub(super) async fn across_patients(
        &self,
        rtype: ResourceType,
        exclude_labels: Vec<IndexEntry>,
    ) -> Result<SearchScope, ApiError> {
        let (patients, exclude_patients) = if is_directory(rtype) {
            (None, Vec::new())
        } else {
            self.consent_scope(rtype).await?
        };
        Ok(SearchScope {
            patients,
            directory: true,
            exclude_labels,
            exclude_patients,
        })
    }

    /// A clinician's search of a compartment type: the patients on their care team and those
    /// under a break-the-glass claim, grouped by the labels they may read there.
    pub(super) async fn clinician_plan(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<SearchPlan, ApiError> {
        let target = single_patient(rtype, query);
        let mut claims: HashMap<Id, BreakGlass> = HashMap::new();
        if self.glass_applies() {
            let now = self.now.unix_timestamp();
            let principal_id = self.who.principal.id().to_owned();
            for record in self.state.accounts.list_break_glass().await? {
                if record.user_id == principal_id
                    && record.started_at <= now
                    && now < record.expires_at
                    && target.as_ref().is_none_or(|t| *t == record.patient)
                    && !claims.contains_key(&record.patient)
                    && let Some(claim) = restore_claim(&record)
                {
                    claims.insert(record.patient.clone(), claim);
                }
            }
            // A claim made with a search that names one patient is a claim for that patient:
            // decided (and recorded when relied on) before anything is read.
            if let (Some(target), Some(claim)) = (&target, self.claim.clone())
                && !claims.contains_key(target)
            {
                let facts = Facts {
                    patient: Some(target.clone()),
                    labels: Vec::new(),
                    new_patient: false,
                };
                if let Ok(proof) = self.decide(Action::Search, rtype, &facts).await?
                    && proof.break_glass()
                {
                    claims.insert(target.clone(), claim);
                }
            }
        }
        // ETREAT reaches only the patients under a claim: without one the policies refuse it
        // (`forbid.emergency_without_claim`), care team or not, so the SQL scope leaves the
        // care team out and totals agree with the per-hit decisions.
        let candidates = match &target {
            _ if self.purpose == Purpose::EmergencyTreat => Vec::new(),
            Some(t) => vec![t.clone()],
            None => self.state.accounts.care_patients(&self.who).await?,
        };
        let mut patients: HashMap<Id, PatientFacts> = HashMap::new();
        for p in candidates {
            let (care_team, label_grants) = self.state.accounts.relationship(&self.who, &p).await?;
            if care_team {
                patients.insert(
                    p,
                    PatientFacts {
                        care_team,
                        label_grants,
                        claim: None,
                    },
                );
            }
        }
        // Consent: the care team's patients whose consent refuses this request are left out
        // (a break-the-glass claim passes consent).
        // Many patients: one read of every consent rather than one per patient.
        if patients.len() > 50 {
            self.load_all_consents().await?;
        }
        let mut consenting = HashMap::with_capacity(patients.len());
        for (p, f) in patients {
            if self.consent_permits(&p, rtype).await? {
                consenting.insert(p, f);
            }
        }
        let mut patients = consenting;
        for (p, claim) in claims {
            patients
                .entry(p)
                .or_insert_with(|| PatientFacts {
                    care_team: false,
                    label_grants: Vec::new(),
                    claim: None,
                })
                .claim = Some(claim);
        }
        // Group by what may be read: `None` (a claim: every label), else the granted labels.
        let mut groups: BTreeMap<Option<BTreeSet<Label>>, Vec<Id>> = BTreeMap::new();
        for (p, f) in &patients {
            let key = match f.claim {
                Some(_) => None,
                None => Some(f.label_grants.iter().copied().collect()),
            };
            groups.entry(key).or_default().push(p.clone());
        }
        let mut scopes = Vec::with_capacity(groups.len().max(1));
        for (key, mut members) in groups {
            members.sort();
            let exclude_labels = match key {
                None => Vec::new(),
                Some(allowed) => label_entries(rtype, &allowed)?,
            };
            scopes.push(SearchScope {
                patients: Some(members),
                directory: false,
                exclude_labels,
                exclude_patients: Vec::new(),
            });
        }
        if scopes.is_empty() {
            scopes.push(SearchScope {
                patients: Some(Vec::new()),
                directory: false,
                ..SearchScope::default()
            });
        }
        Ok(SearchPlan {
            scopes,
            patients: Some(patients),
        })
    }
}

/// What a search may see.
pub(super) struct SearchPlan {
    /// Disjoint SQL scopes, searched and paged in this order.
    pub(super) scopes: Vec<SearchScope>,
    /// Clinicians: the facts of every patient the scopes reach (`None`: ask per patient).
    pub(super) patients: Option<HashMap<Id, PatientFacts>>,
}

/// A clinician's relationship with one patient, for deciding search hits.
pub(super) struct PatientFacts {
    pub(super) care_team: bool,
    pub(super) label_grants: Vec<Label>,
    pub(super) claim: Option<BreakGlass>,
}

/// The one patient a search is limited to, if it names exactly one: `Patient?_id=X`, or a
/// `patient=X` parameter of a compartment type.
pub(super) fn single_patient(rtype: ResourceType, query: &SearchQuery) -> Option<Id> {
    if rtype == ResourceType::PATIENT {
        return match query.ids.as_deref() {
            Some([id]) => Some(id.clone()),
            _ => None,
        };
    }
    query
        .params
        .iter()
        .filter(|p| p.name.split(':').next() == Some("patient"))
        .find_map(|p| match p.any_of.as_slice() {
            [entry] => entry
                .value
                .strip_prefix("Patient/")
                .and_then(|id| Id::parse(id).ok()),
            _ => None,
        })
}

/// The `_security` index entries of every sensitivity label except `allowed`, for `rtype`.
pub(super) fn label_entries(
    rtype: ResourceType,
    allowed: &BTreeSet<Label>,
) -> Result<Vec<IndexEntry>, ApiError> {
    let codes: Vec<&str> = LABEL_CODES
        .split(',')
        .filter(|code| Label::parse(code).is_ok_and(|l| !allowed.contains(&l)))
        .collect();
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    let query = SearchQuery::parse(rtype, &[("_security".to_owned(), codes.join(","))], false)
        .map_err(|e| ApiError::internal(&format!("the label exclusion query failed: {e}")))?;
    Ok(query.params.into_iter().flat_map(|p| p.any_of).collect())
}
