//! Sorted searches (`_sort`): the blind index holds no order, so every match the principal may
//! see is fetched (through the same scopes as any search, all pages), decided like a read,
//! decrypted, sorted in memory by `phivault_fhir`'s order, and only then cut to the page
//! asked for (`_offset`, `_count`).
//!
//! Bounds: at most the state's `max_sorted` matches (never above [`phivault_fhir::MAX_SORTED`]);
//! a search matching more is refused with 400 `too-costly` before anything is decrypted. The
//! count is of what the scopes let the principal see, so the refusal says nothing about
//! resources out of reach.
//!
//! Every key sorts from the decrypted bodies, `_id` and `_lastUpdated` included: the store's
//! plaintext write time is kept to the second only (`meta.lastUpdated` to the millisecond),
//! and a clinician's search pages its label groups one after the other, so no store order is
//! the searchset's order: they sort in memory like the others.
//!
//! Audit: every resource sorted was read by the server on the principal's behalf, so the
//! search's audit entry names the patient of every match sorted, not only of the page's.

use phivault_fhir::{FhirError, ResourceType, SearchQuery, sort_by_keys};
use phivault_store::StoredResource;

use super::{Access, SearchPlan};
use crate::ApiError;

impl Access {
    /// [`Access::search`] of a query with `_sort` keys (and a page size above 0), under `plan`:
    /// the total (of what the principal may read) and the page, in the sort order.
    pub(super) async fn search_sorted(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
        plan: &SearchPlan,
    ) -> Result<(u64, Vec<StoredResource>), ApiError> {
        let limit = self.state.max_sorted.min(phivault_fhir::MAX_SORTED);
        let too_costly = || ApiError::Fhir(FhirError::TooCostlyToSort { limit });

        // Count first, so that nothing is decrypted for a search refused as too costly.
        let mut counts = Vec::with_capacity(plan.scopes.len());
        let mut matched = 0u64;
        for scope in &plan.scopes {
            let mut q = query.clone();
            q.offset = 0;
            q.count = 0;
            let (found, _) = self.state.store.search_unreleased(rtype, &q, scope).await?;
            matched = matched.saturating_add(found);
            counts.push(usize::try_from(found).map_err(|_| too_costly())?);
        }
        if matched > limit as u64 {
            return Err(too_costly());
        }

        // Every match of every scope; a write since the count may change which matches are
        // read, never how many beyond the count (each scope reads at most what it counted).
        let mut hits = Vec::with_capacity(counts.iter().sum());
        for (scope, found) in plan.scopes.iter().zip(counts) {
            if found == 0 {
                continue;
            }
            let mut q = query.clone();
            q.offset = 0;
            q.count = found;
            let (_, page) = self.state.store.search_unreleased(rtype, &q, scope).await?;
            hits.extend(page);
        }
        let (released, _) = self.decide_hits(rtype, plan, hits).await?;
        let total = released.len() as u64;
        let page = sort_by_keys(&query.sort, released, |r| &r.body)
            .into_iter()
            .skip(query.offset)
            .take(query.count)
            .collect();
        Ok((total, page))
    }
}
