//! The consents a request decides under: read through the store with a system-level scope,
//! kept for the request, and taken from the process memo when the consent generation the
//! request read is the one they were read under (see the parent module's docs).

use std::collections::HashMap;
use std::sync::Arc;

use phivault_fhir::{Id, ResourceType, SearchQuery, compartment_patient_of};
use phivault_policy::{Consent, ConsentQuery, ConsentVerdict, evaluate};
use phivault_store::SearchScope;

use super::Access;
use crate::ApiError;
use crate::consent_memo::Memoized;

/// The consents read by one request.
#[derive(Default)]
pub(super) struct ConsentCache {
    by_patient: HashMap<Id, Arc<Vec<Consent>>>,
    /// Every active consent of the tenant was read: a patient without an entry has none.
    complete: bool,
    /// The consent generation, read once, before any consent this request reads (`Some(None)`:
    /// the database has none, and the process memo is not used).
    generation: Option<Option<i64>>,
}

/// Largest page read when loading consents.
const CONSENT_PAGE: usize = 1000;

impl Access {
    /// Decides this request's consents under `generation`, read when the request was
    /// authenticated (before any consent it reads).
    pub(super) fn consents_under(&self, generation: Option<i64>) {
        self.lock_consents().generation = Some(generation);
    }

    pub(super) fn lock_consents(&self) -> std::sync::MutexGuard<'_, ConsentCache> {
        // A panic while holding the lock leaves a cache that is still consistent (entries
        // are inserted whole): keep using it.
        self.consents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads every page of active Consents matching `pairs` within `scope`, through the store
    /// (a system-level read, not the principal's access), grouped by patient. A stored
    /// consent that can no longer be applied is taken as denying everything (fail closed).
    pub(super) async fn load_consents(
        &self,
        pairs: Vec<(String, String)>,
        scope: &SearchScope,
    ) -> Result<HashMap<Id, Vec<Consent>>, ApiError> {
        let rtype = consent_type()?;
        let mut query = SearchQuery::parse(rtype, &pairs, false)
            .map_err(|e| ApiError::internal(&format!("the consent query failed: {e}")))?;
        query.count = CONSENT_PAGE;
        query.offset = 0;
        let mut out: HashMap<Id, Vec<Consent>> = HashMap::new();
        loop {
            // Consents are an input of the decision, read as the system; none is returned.
            #[allow(clippy::disallowed_methods)]
            let page = self.state.store.search_scoped(rtype, &query, scope).await?;
            let read = page.resources.len();
            for r in page.resources {
                let Some(patient) = compartment_patient_of(rtype, &r.body) else {
                    continue;
                };
                let consent = match Consent::parse(&r.body) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(_) => {
                        tracing::error!(
                            "a stored Consent cannot be applied; it is taken as denying every                              purpose until it is corrected"
                        );
                        Consent::unreadable(patient.clone())
                    }
                };
                out.entry(patient).or_default().push(consent);
            }
            query.offset = query.offset.saturating_add(read);
            if read == 0 || u64::try_from(query.offset).unwrap_or(u64::MAX) >= page.total {
                break;
            }
        }
        Ok(out)
    }

    /// The consent generation this request decides under, read before the first consent it
    /// reads: a consent change committed before the read gives another value, so what the
    /// process memo holds under this value is at least as new as the request.
    pub(super) async fn consent_generation(&self) -> Result<Option<i64>, ApiError> {
        if let Some(g) = self.lock_consents().generation {
            return Ok(g);
        }
        let g = self
            .state
            .store
            .generation(phivault_store::Generation::Consent)
            .await?;
        Ok(*self.lock_consents().generation.get_or_insert(g))
    }

    /// The active consents of `patient` (cached for this request; from the process memo
    /// when nothing changed since it read them).
    pub(super) async fn consents_of(&self, patient: &Id) -> Result<Arc<Vec<Consent>>, ApiError> {
        {
            let cache = self.lock_consents();
            if let Some(c) = cache.by_patient.get(patient) {
                return Ok(c.clone());
            }
            if cache.complete {
                return Ok(Arc::new(Vec::new()));
            }
        }
        let generation = self.consent_generation().await?;
        if let Some(g) = generation
            && let Memoized::Consents(consents) = self.state.consent_memo.get(g, patient)
        {
            self.lock_consents()
                .by_patient
                .insert(patient.clone(), consents.clone());
            return Ok(consents);
        }
        let pairs = vec![
            ("patient".to_owned(), format!("Patient/{patient}")),
            ("status".to_owned(), "active".to_owned()),
        ];
        let scope = SearchScope {
            patients: Some(vec![patient.clone()]),
            ..SearchScope::default()
        };
        let mut found = self.load_consents(pairs, &scope).await?;
        let consents = Arc::new(found.remove(patient).unwrap_or_default());
        if let Some(g) = generation {
            self.state.consent_memo.put(g, patient, consents.clone());
        }
        self.lock_consents()
            .by_patient
            .insert(patient.clone(), consents.clone());
        Ok(consents)
    }

    /// Reads every active consent of the tenant into the cache (for searches across
    /// patients).
    pub(super) async fn load_all_consents(&self) -> Result<(), ApiError> {
        if self.lock_consents().complete {
            return Ok(());
        }
        let generation = self.consent_generation().await?;
        if let Some(g) = generation
            && let Some(all) = self.state.consent_memo.all(g)
        {
            let mut cache = self.lock_consents();
            cache.by_patient = all;
            cache.complete = true;
            return Ok(());
        }
        let pairs = vec![("status".to_owned(), "active".to_owned())];
        let scope = SearchScope {
            patients: None,
            directory: false,
            ..SearchScope::default()
        };
        let found = self.load_consents(pairs, &scope).await?;
        let all: HashMap<Id, Arc<Vec<Consent>>> =
            found.into_iter().map(|(p, c)| (p, Arc::new(c))).collect();
        if let Some(g) = generation {
            self.state.consent_memo.put_all(g, &all);
        }
        let mut cache = self.lock_consents();
        cache.by_patient = all;
        cache.complete = true;
        Ok(())
    }

    /// The consents' verdict on this request for a resource of `rtype` of `patient`.
    pub(super) fn verdict(&self, consents: &[Consent], rtype: ResourceType) -> ConsentVerdict {
        let query = ConsentQuery {
            purpose: self.purpose,
            rtype: Some(rtype),
            practitioner: self.who.practitioner.as_ref(),
            client: self.who.client_id.as_deref(),
            now: self.now,
        };
        evaluate(consents, &query)
    }

    /// Whether `patient`'s consents (else the purpose's default) allow this request on a
    /// resource of `rtype`.
    pub(super) async fn consent_permits(
        &self,
        patient: &Id,
        rtype: ResourceType,
    ) -> Result<bool, ApiError> {
        let consents = self.consents_of(patient).await?;
        Ok(self
            .verdict(&consents, rtype)
            .permits(&self.state.consent_defaults, self.purpose))
    }

    /// Whether `patient`'s consents deny the app of this request by name (see
    /// [`phivault_policy::denies_client_by_name`]).
    pub(super) async fn app_denied(
        &self,
        patient: &Id,
        rtype: ResourceType,
    ) -> Result<bool, ApiError> {
        let consents = self.consents_of(patient).await?;
        let query = ConsentQuery {
            purpose: self.purpose,
            rtype: Some(rtype),
            practitioner: None,
            client: self.who.client_id.as_deref(),
            now: self.now,
        };
        Ok(phivault_policy::denies_client_by_name(
            consents.iter(),
            &query,
        ))
    }

    /// The restriction consent puts on a search of `rtype` across patients: `(Some(only),
    /// _)` when the purpose is denied by default (only the patients whose consent permits),
    /// else `(None, excluded)` (the patients whose consent denies).
    pub(super) async fn consent_scope(
        &self,
        rtype: ResourceType,
    ) -> Result<(Option<Vec<Id>>, Vec<Id>), ApiError> {
        self.load_all_consents().await?;
        let by_default = self.state.consent_defaults.permits(self.purpose);
        let cache = self.lock_consents();
        let mut chosen: Vec<Id> = cache
            .by_patient
            .iter()
            .filter(|(_, consents)| {
                let permits = self
                    .verdict(consents, rtype)
                    .permits(&self.state.consent_defaults, self.purpose);
                permits != by_default
            })
            .map(|(p, _)| p.clone())
            .collect();
        chosen.sort();
        Ok(if by_default {
            (None, chosen)
        } else {
            (Some(chosen), Vec::new())
        })
    }
}

/// The Consent type.
pub(super) fn consent_type() -> Result<ResourceType, ApiError> {
    ResourceType::parse("Consent")
        .map_err(|_| ApiError::internal(&"the Consent type is not supported"))
}
