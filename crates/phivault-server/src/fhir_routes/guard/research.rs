//! The reads of a research export (`$export` with a de-identification project).
//!
//! Rules kept here:
//! - **Only for research.** The request's purpose of use must be HRESCH; the patients are
//!   those whose research consent permits it (else the research default, which denies), as
//!   for any search under that purpose.
//! - **Decided per patient and type.** Each patient's resources of a type are released only
//!   to an `export_deidentified` proof for that type and patient (the researcher and research
//!   app policies), and labelled resources never: the store leaves them out, and the store
//!   refuses to release a labelled resource to such a proof.
//! - **Attributed by the caller.** The export names in its audit entry every patient whose
//!   records it released (those a k threshold withholds are not), so the research use
//!   appears in that patient's access log.
//! - What is released here is identified data: the caller hands it to the de-identification
//!   engine and to nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};

use phivault_fhir::{Id, ResourceType, SearchQuery};
use phivault_policy::{Action, Authorized, Purpose, ResourceRef};
use phivault_store::{SearchScope, StoredResource};

use super::Access;
use super::search::label_entries;
use crate::ApiError;

/// Resources read per store page.
const PAGE: usize = 1000;

impl Access {
    /// Refuses a research export under any purpose but research.
    pub(crate) fn require_research(&self) -> Result<(), ApiError> {
        if self.purpose == Purpose::Research {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "access denied: a de-identified export is a research use: send \
                 X-Purpose-Of-Use: HRESCH (this request's purpose is {})",
                self.purpose
            )))
        }
    }

    /// Every unlabelled resource of `rtype` (a Patient compartment type) of the patients
    /// whose consent permits research, within `members` when given, each with its patient,
    /// released to an `export_deidentified` decision for its type and patient. Resources of
    /// patients the decision refuses are left out.
    pub(crate) async fn research_read(
        &mut self,
        rtype: ResourceType,
        members: Option<&[Id]>,
    ) -> Result<Vec<(Id, StoredResource)>, ApiError> {
        self.require_research()?;
        let (permitted, excluded) = self.consent_scope(rtype).await?;
        let patients = match (permitted, members) {
            (Some(p), Some(m)) => {
                let m: BTreeSet<&Id> = m.iter().collect();
                Some(p.into_iter().filter(|p| m.contains(p)).collect())
            }
            (Some(p), None) => Some(p),
            (None, Some(m)) => Some(m.to_vec()),
            (None, None) => None,
        };
        if patients.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let scope = SearchScope {
            patients,
            directory: false,
            exclude_labels: label_entries(rtype, &BTreeSet::new())?,
            exclude_patients: excluded,
        };
        let mut query = SearchQuery::parse(rtype, &[], false)?;
        query.count = PAGE;
        query.offset = 0;
        // One decision per patient and type: every unlabelled resource of that type in that
        // compartment has the same facts, so the same proof covers it.
        let mut proofs: HashMap<Id, Option<Authorized>> = HashMap::new();
        // A page boundary moved by a concurrent write may show a resource twice.
        let mut seen: HashSet<Id> = HashSet::new();
        let mut out = Vec::new();
        loop {
            let (total, page) = self
                .state
                .store
                .search_unreleased(rtype, &query, &scope)
                .await?;
            let read = page.len();
            for hit in page {
                let facts = hit.facts();
                let Some(patient) = facts.patient().cloned() else {
                    continue;
                };
                if !facts.labels().is_empty() {
                    continue;
                }
                if !proofs.contains_key(&patient) {
                    let proof = self.decide_research(rtype, &patient).await?;
                    proofs.insert(patient.clone(), proof);
                }
                if let Some(Some(proof)) = proofs.get(&patient) {
                    let resource = hit.release(proof)?;
                    if seen.insert(resource.id.clone()) {
                        out.push((patient, resource));
                    }
                }
            }
            query.offset = query.offset.saturating_add(read);
            if read == 0 || u64::try_from(query.offset).unwrap_or(u64::MAX) >= total {
                return Ok(out);
            }
        }
    }

    /// The `export_deidentified` decision for `patient`'s unlabelled resources of `rtype`:
    /// the purpose, the patient's consent for this type, the principal's scopes.
    async fn decide_research(
        &self,
        rtype: ResourceType,
        patient: &Id,
    ) -> Result<Option<Authorized>, ApiError> {
        let mut context = self.base_context();
        context.consent_permits = self.consent_permits(patient, rtype).await?;
        let resource = ResourceRef::new(rtype, Some(patient.clone()), Vec::new());
        let request = self.request(Action::ExportDeidentified, resource, context);
        Ok(self.state.policy.decide(&request).ok())
    }

    /// How many patients (within `members` when given) a research export could cover before
    /// consent: the report counts those it leaves out.
    pub(crate) async fn research_population(
        &self,
        members: Option<&[Id]>,
    ) -> Result<u64, ApiError> {
        let mut query = SearchQuery::parse(ResourceType::PATIENT, &[], false)?;
        query.count = 0;
        query.offset = 0;
        let scope = SearchScope {
            patients: members.map(<[Id]>::to_vec),
            directory: false,
            ..SearchScope::default()
        };
        let (total, _) = self
            .state
            .store
            .search_unreleased(ResourceType::PATIENT, &query, &scope)
            .await?;
        Ok(total)
    }
}
