//! Search over the blind index: every parameter value becomes an HMAC token, matched by
//! equality; no plaintext value reaches SQL.

use phivault_fhir::{
    Id, IndexEntry, ResourceType, SearchParam, SearchQuery, compartment_params,
    is_compartment_keyed,
};
use sqlx::Row;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use crate::released::Unreleased;
use crate::{Backend, Store, StoreError, StoredResource};

/// One page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// How many resources match in all.
    pub total: u64,
    /// This page's resources, ordered by id.
    pub resources: Vec<StoredResource>,
}

/// Which part of the data a search may see: the authorization layer's restriction, applied in
/// SQL so that results and totals never include what the principal may not read.
#[derive(Clone, Default)]
pub struct SearchScope {
    /// `None`: every patient compartment. `Some(list)`: only these patients' compartments.
    pub patients: Option<Vec<Id>>,
    /// Whether resources outside any compartment (Practitioner, Organization, ...) are visible.
    pub directory: bool,
    /// Resources carrying any of these `_security` entries are left out.
    pub exclude_labels: Vec<IndexEntry>,
    /// These patients' compartments are left out (for example, patients whose consent
    /// denies the request's purpose of use).
    pub exclude_patients: Vec<Id>,
}

impl SearchScope {
    /// No restriction (system-level access).
    pub fn everything() -> Self {
        Self {
            patients: None,
            directory: true,
            exclude_labels: Vec::new(),
            exclude_patients: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SearchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchScope")
            .field("patients", &self.patients.as_ref().map(Vec::len))
            .field("directory", &self.directory)
            .field("exclude_labels", &self.exclude_labels.len())
            .field("exclude_patients", &self.exclude_patients.len())
            .finish()
    }
}

/// A WHERE clause with its bind values, numbered from `$1`.
struct Filter {
    sql: String,
    binds: Vec<Bind>,
}

enum Bind {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
}

impl Filter {
    fn placeholder(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn bind_all<'q>(
        &'q self,
        mut q: Query<'q, sqlx::Any, AnyArguments<'q>>,
    ) -> Query<'q, sqlx::Any, AnyArguments<'q>> {
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::Bytes(v) => q.bind(v.as_slice()),
                Bind::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

/// Bound values of compartment-keyed tokens in one statement, at most (well under both
/// drivers' limits): a search whose compartments need more runs as several statements, one per
/// group of compartments.
const MAX_KEYED_BINDS: usize = 4000;

/// Ids of labelled resources a search leaves out by id, at most (see `Store::labelled_ids`):
/// bound in one statement beside the search's own values.
const MAX_LABELLED: usize = 4000;

/// What a statement selects of a current resource `c` joined to its version `v` (see
/// `Store::current_version_join`), as `Store::open_current` reads it.
const CURRENT_COLUMNS: &str = "c.id AS id, c.version AS cur, c.deleted AS cur_deleted, \
     c.key_id AS cur_key, v.version AS v_version, v.key_id AS key_id, v.sealed AS sealed, \
     v.deleted AS deleted, \
     (SELECT MAX(m.version) FROM resource_versions m \
       WHERE m.tenant = c.tenant AND m.rtype = c.rtype AND m.id = c.id) AS max_version, \
     (SELECT COUNT(*) FROM data_keys k WHERE k.key_id = c.key_id) AS key_live";

/// Index rows counted, at most, to tell how selective a search test is (see `Store::drive`).
const PROBE_CAP: usize = 1000;

/// How a statement tests the index (see `Store::drive`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Drive {
    /// Every test as the set of ids it matches (`c.id IN (SELECT ...)`).
    Sets,
    /// `_id` gives the candidates; every index test probes each of them.
    Ids,
    /// This parameter's set gives the candidates; every other test probes each of them.
    Param(usize),
    /// PostgreSQL: this parameter matches exactly these ids (read beforehand, at most
    /// [`PROBE_CAP`]), bound as constants; every other test probes each of them.
    Listed(usize, Vec<String>),
}

/// Whether an entry's tokens are keyed per compartment.
fn keyed(e: &IndexEntry) -> bool {
    is_compartment_keyed(&e.param)
}

impl Store {
    /// The WHERE clause of a search. `keys`: the data-key ids of the compartments this
    /// statement looks in, when the query or the scope has compartment-keyed entries (their
    /// tokens are computed for each of these compartments, and rows of other compartments are
    /// left out); `None` when it has none, or to leave those entries out (only for listing the
    /// compartments a search reaches).
    ///
    /// `labelled`: ids of resources of `rtype` to leave out (those carrying an excluded label,
    /// resolved beforehand by [`Store::labelled_ids`] instead of binding the exclusion's tokens
    /// of every compartment here).
    fn filter(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
        scope: &SearchScope,
        keys: Option<&[String]>,
        labelled: &[String],
        drive: &Drive,
    ) -> Filter {
        let mut f = Filter {
            sql: String::new(),
            binds: Vec::new(),
        };
        let t = f.placeholder(Bind::Text(self.inner.tenant.clone()));
        let r = f.placeholder(Bind::Text(rtype.as_str().to_owned()));
        // Resources of erased compartments are never found, even before the sweep has removed
        // their index tokens (`Store::sweep_erasures`).
        let mut sql = format!(
            "c.tenant = {t} AND c.rtype = {r} AND c.deleted = 0 \
             AND NOT EXISTS (SELECT 1 FROM erasures e WHERE e.key_id = c.key_id)"
        );
        if let Some(ids) = &query.ids {
            let list: Vec<String> = ids
                .iter()
                .map(|id| f.placeholder(Bind::Text(id.as_str().to_owned())))
                .collect();
            if list.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND c.id IN ({})", list.join(", ")));
            }
        }
        if !labelled.is_empty() {
            let list: Vec<String> = labelled
                .iter()
                .map(|id| f.placeholder(Bind::Text(id.clone())))
                .collect();
            sql.push_str(&format!(" AND c.id NOT IN ({})", list.join(", ")));
        }
        if let Some(keys) = keys {
            let list: Vec<String> = keys
                .iter()
                .map(|k| f.placeholder(Bind::Text(k.clone())))
                .collect();
            if list.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND c.key_id IN ({})", list.join(", ")));
            }
        }
        if let Some(patients) = &scope.patients {
            let owners: Vec<String> = patients
                .iter()
                .map(|p| f.placeholder(Bind::Bytes(self.inner.keys.patient_owner(p))))
                .collect();
            let mut parts = Vec::new();
            if !owners.is_empty() {
                parts.push(format!(
                    "c.key_id IN (SELECT k.key_id FROM data_keys k WHERE k.tenant = {t} \
                     AND k.kind = 'patient' AND k.owner IN ({}))",
                    owners.join(", ")
                ));
            }
            if scope.directory {
                parts.push(format!(
                    "c.key_id IN (SELECT k.key_id FROM data_keys k WHERE k.tenant = {t} \
                     AND k.kind = 'directory')"
                ));
            }
            if parts.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND ({})", parts.join(" OR ")));
            }
        } else if !scope.directory {
            sql.push_str(&format!(
                " AND c.key_id NOT IN (SELECT k.key_id FROM data_keys k WHERE k.tenant = {t} \
                 AND k.kind = 'directory')"
            ));
        }
        if !scope.exclude_patients.is_empty() {
            let owners: Vec<String> = scope
                .exclude_patients
                .iter()
                .map(|p| f.placeholder(Bind::Bytes(self.inner.keys.patient_owner(p))))
                .collect();
            sql.push_str(&format!(
                " AND c.key_id NOT IN (SELECT k.key_id FROM data_keys k WHERE k.tenant = {t} \
                 AND k.kind = 'patient' AND k.owner IN ({}))",
                owners.join(", ")
            ));
        }
        // `_lastUpdated`: the write time the store keeps with the current version (unix
        // seconds, the second of `meta.lastUpdated`), compared in the clear: it is no PHI.
        for (_, any) in &query.last_updated {
            let mut alternatives = Vec::new();
            for interval in any {
                let mut parts = Vec::new();
                if let Some(from) = interval.from {
                    let p = f.placeholder(Bind::Int(from));
                    parts.push(format!("c.recorded_at >= {p}"));
                }
                if let Some(to) = interval.to {
                    let p = f.placeholder(Bind::Int(to));
                    parts.push(format!("c.recorded_at < {p}"));
                }
                if parts.is_empty() {
                    parts.push("1 = 1".to_owned());
                }
                alternatives.push(format!("({})", parts.join(" AND ")));
            }
            if alternatives.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
            }
        }
        // The tokens of `entries`: one per entry, or, for a compartment-keyed entry, one per
        // compartment of `keys` (left out when `keys` is `None`).
        let tokens_of = |f: &mut Filter, entries: &[IndexEntry]| -> Vec<String> {
            let mut out = Vec::new();
            for e in entries {
                if keyed(e) {
                    for key_id in keys.unwrap_or_default() {
                        let token = self.inner.keys.compartment_token(
                            key_id,
                            rtype.as_str(),
                            &e.param,
                            &e.value,
                        );
                        out.push(f.placeholder(Bind::Bytes(token)));
                    }
                } else {
                    let token = self
                        .inner
                        .keys
                        .search_token(rtype.as_str(), &e.param, &e.value);
                    out.push(f.placeholder(Bind::Bytes(token)));
                }
            }
            out
        };
        let exclude: Vec<IndexEntry> = scope
            .exclude_labels
            .iter()
            .filter(|e| keys.is_some() || !keyed(e))
            .cloned()
            .collect();
        if !exclude.is_empty() {
            let tokens = tokens_of(&mut f, &exclude);
            if !tokens.is_empty() {
                sql.push_str(" AND ");
                sql.push_str(&self.index_test(&t, &r, &tokens, false));
            }
        }
        // Whether the resource has (or, `present` false, has none of) one of `entries`,
        // tested on each candidate (`probe`) or as the set of matching ids.
        let exists = |f: &mut Filter, entries: &[IndexEntry], present: bool, probe: bool| {
            let tokens = tokens_of(f, entries);
            if tokens.is_empty() {
                return if present { "1 = 0" } else { "1 = 1" }.to_owned();
            }
            if probe {
                format!(
                    "{}EXISTS (SELECT 1 FROM search_index s WHERE s.tenant = c.tenant \
                     AND s.rtype = c.rtype AND s.token IN ({}) AND s.id = c.id{})",
                    if present { "" } else { "NOT " },
                    tokens.join(", "),
                    self.per_row_fence()
                )
            } else {
                self.index_test(&t, &r, &tokens, present)
            }
        };
        for (i, param) in query.params.iter().enumerate() {
            if keys.is_none() && param.entries().any(keyed) {
                continue;
            }
            let probe = match drive {
                Drive::Sets => false,
                Drive::Ids => true,
                Drive::Param(driver) => i != *driver,
                Drive::Listed(driver, ids) => {
                    if i == *driver {
                        let list: Vec<String> = ids
                            .iter()
                            .map(|id| f.placeholder(Bind::Text(id.clone())))
                            .collect();
                        if list.is_empty() {
                            sql.push_str(" AND 1 = 0");
                        } else {
                            sql.push_str(&format!(" AND c.id IN ({})", list.join(", ")));
                        }
                        continue;
                    }
                    true
                }
            };
            // Any of the entries, or every test of one conjunction (date ranges).
            let mut alternatives = Vec::new();
            if !param.any_of.is_empty() {
                alternatives.push(exists(&mut f, &param.any_of, true, probe));
            }
            for tests in &param.conjunctions {
                let all: Vec<String> = tests
                    .iter()
                    .map(|t| exists(&mut f, &t.any_of, t.present, probe))
                    .collect();
                alternatives.push(format!("({})", all.join(" AND ")));
            }
            if alternatives.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
            }
        }
        f.sql = sql;
        f
    }

    /// Whether resource `c` has (`present`) or has none of (`!present`) the index `tokens`
    /// (placeholders; `t` and `r` those of the tenant and the type).
    ///
    /// A test that a resource has a token is an uncorrelated `c.id IN (SELECT ...)` on both
    /// backends: the matching ids are read once through the (tenant, rtype, token) primary
    /// key and the resources looked up by id, so a search costs what it matches. A correlated
    /// `EXISTS` made SQLite probe every token for every resource of the type (a patient's
    /// Observations, or the label exclusion's tokens of every compartment, cost a scan of the
    /// whole type). For the absence of tokens SQLite materializes the uncorrelated `NOT IN`
    /// once; PostgreSQL plans `NOT IN (subquery)` as a hashed subplan only while the ids fit
    /// in `work_mem` and as a per-row rescan past it, so there it stays a `NOT EXISTS`, which
    /// it plans as an anti-join whatever the size.
    fn index_test(&self, t: &str, r: &str, tokens: &[String], present: bool) -> String {
        let list = tokens.join(", ");
        match (present, self.inner.backend) {
            (true, _) | (false, Backend::Sqlite) => format!(
                "c.id {}IN (SELECT s.id FROM search_index s WHERE s.tenant = {t} \
                 AND s.rtype = {r} AND s.token IN ({list}))",
                if present { "" } else { "NOT " },
            ),
            (false, Backend::Postgres) => format!(
                "NOT EXISTS (SELECT 1 FROM search_index s WHERE s.tenant = c.tenant \
                 AND s.rtype = c.rtype AND s.id = c.id AND s.token IN ({list}){})",
                self.per_row_fence()
            ),
        }
    }

    /// What ends a correlated subquery that must run for each candidate row, looking the row
    /// up by its own key: on PostgreSQL `OFFSET 0`, which keeps the planner from turning the
    /// `EXISTS` into a join. As a join, its plan rests on statistics: with statistics taken
    /// while the tables were nearly empty (or never taken), PostgreSQL estimates one row
    /// everywhere, and then may scan every index row of the type for each candidate, keeping
    /// only the candidate's as a join filter (an authorization-matrix search ran for minutes
    /// that way). Run for each row, the candidate's id is a parameter the index lookup is
    /// bound to, whatever the statistics say. SQLite already runs a correlated `EXISTS` for
    /// each row (and has no bare `OFFSET`).
    fn per_row_fence(&self) -> &'static str {
        match self.inner.backend {
            Backend::Postgres => " OFFSET 0",
            Backend::Sqlite => "",
        }
    }

    /// The data-key ids of the compartments a search with compartment-keyed entries looks
    /// in, sorted: the scope's patients' keys (and the directory key when it is in scope), or,
    /// for a scope over every compartment, the keys of the compartments holding a resource
    /// that matches everything else of the query. `None` when the query and the scope have no
    /// compartment-keyed entry.
    async fn keyed_compartments(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
        scope: &SearchScope,
        drive: &Drive,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let needed = scope.exclude_labels.iter().any(keyed)
            || query.params.iter().any(|p| p.entries().any(keyed));
        if !needed {
            return Ok(None);
        }
        let mut keys = Vec::new();
        match &scope.patients {
            Some(patients) => {
                for chunk in patients.chunks(MAX_KEYED_BINDS) {
                    let mut f = Filter {
                        sql: String::new(),
                        binds: vec![Bind::Text(self.inner.tenant.clone())],
                    };
                    let owners: Vec<String> = chunk
                        .iter()
                        .map(|p| f.placeholder(Bind::Bytes(self.inner.keys.patient_owner(p))))
                        .collect();
                    let sql = format!(
                        "SELECT key_id FROM data_keys WHERE tenant = $1 AND kind = 'patient' \
                         AND owner IN ({})",
                        owners.join(", ")
                    );
                    for row in f
                        .bind_all(sqlx::query(&sql))
                        .fetch_all(&self.inner.pool)
                        .await?
                    {
                        keys.push(row.try_get::<String, _>("key_id")?);
                    }
                }
                if scope.directory {
                    let rows = sqlx::query(
                        "SELECT key_id FROM data_keys WHERE tenant = $1 AND kind = 'directory'",
                    )
                    .bind(&self.inner.tenant)
                    .fetch_all(&self.inner.pool)
                    .await?;
                    for row in rows {
                        keys.push(row.try_get::<String, _>("key_id")?);
                    }
                }
            }
            None => {
                let f = self.filter(rtype, query, scope, None, &[], drive);
                let sql = format!(
                    "SELECT DISTINCT c.key_id AS key_id FROM current_resources c WHERE {}",
                    f.sql
                );
                for row in f
                    .bind_all(sqlx::query(&sql))
                    .fetch_all(&self.inner.pool)
                    .await?
                {
                    keys.push(row.try_get::<String, _>("key_id")?);
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(Some(keys))
    }

    /// The ids of the resources of `rtype`, in the compartments of `keys`, that carry one of
    /// the scope's compartment-keyed label exclusions; `None` when their index rows are more
    /// than [`MAX_LABELLED`] (a resource with two excluded labels has two; the caller then
    /// binds the exclusion's tokens per group of compartments instead).
    ///
    /// Each compartment's tokens are looked up through the index's primary key, in groups of
    /// [`MAX_KEYED_BINDS`] tokens: a cost in the number of compartments (an HMAC and a key
    /// probe per compartment and label), not in the rows the search reaches. Binding the same
    /// tokens inside the search instead repeated the search's count and page once per group
    /// of compartments (a type-wide page over 10,000 compartments was 13 statements of each,
    /// and its results were ordered by id only within each group).
    async fn labelled_ids(
        &self,
        rtype: ResourceType,
        scope: &SearchScope,
        keys: &[String],
    ) -> Result<Option<Vec<String>>, StoreError> {
        let labels: Vec<&IndexEntry> = scope.exclude_labels.iter().filter(|e| keyed(e)).collect();
        let mut ids = Vec::new();
        if labels.is_empty() {
            return Ok(Some(ids));
        }
        for chunk in keys.chunks((MAX_KEYED_BINDS / labels.len()).max(1)) {
            let mut f = Filter {
                sql: String::new(),
                binds: vec![
                    Bind::Text(self.inner.tenant.clone()),
                    Bind::Text(rtype.as_str().to_owned()),
                ],
            };
            let mut tokens = Vec::with_capacity(chunk.len() * labels.len());
            for key_id in chunk {
                for e in &labels {
                    let token = self.inner.keys.compartment_token(
                        key_id,
                        rtype.as_str(),
                        &e.param,
                        &e.value,
                    );
                    tokens.push(f.placeholder(Bind::Bytes(token)));
                }
            }
            // At most one more row than there is room left. No `DISTINCT`: SQLite would then
            // read the ids in order through the per-resource index, every token of the type,
            // instead of probing the primary key per token.
            let room = MAX_LABELLED + 1 - ids.len();
            let sql = format!(
                "SELECT id FROM search_index WHERE tenant = $1 AND rtype = $2 \
                 AND token IN ({}) LIMIT {room}",
                tokens.join(", ")
            );
            let rows = f
                .bind_all(sqlx::query(&sql))
                .fetch_all(&self.inner.pool)
                .await?;
            // A full page may have been cut short: some labelled ids could be missing, and a
            // missing one would be found. Too many, whatever the duplicates.
            if rows.len() >= room {
                return Ok(None);
            }
            for row in rows {
                ids.push(row.try_get::<String, _>("id")?);
            }
            ids.sort();
            ids.dedup();
        }
        Ok(Some(ids))
    }

    /// How a search's index tests run.
    ///
    /// SQLite runs a `c.id IN (SELECT ...)` test by reading every id that matches it, so a
    /// search with an unselective test (`status=final`, a `code` every Observation has, an
    /// open date range) beside a selective one (`subject=Patient/X`) would cost what the
    /// unselective test matches in the whole type. So when a search has two tests or more,
    /// the one matching the fewest index rows (counted up to [`PROBE_CAP`], from the index
    /// alone) gives the candidate ids, and every other test probes the index's primary key
    /// for each candidate. `_id` gives the candidates whenever it is present. The tests are
    /// counted compartment parameters first (a patient's reference is usually the most
    /// selective), each only up to the fewest rows counted so far, so an unselective test
    /// costs no more than the selective one found before it.
    ///
    /// PostgreSQL would plan the sets as joins itself, but a join's plan rests on statistics
    /// that may be missing or stale (see [`Store::per_row_fence`]). So there the most
    /// selective test's ids are read the same way (even for a search with one test) and,
    /// when they are fewer than [`PROBE_CAP`], bound as constants: the statement then looks
    /// its candidates up by primary key and probes the other tests for each, a plan that
    /// needs no statistics. Only a search whose every test matches more rows than that is
    /// left to the planner ([`Drive::Sets`]).
    async fn drive(&self, rtype: ResourceType, query: &SearchQuery) -> Result<Drive, StoreError> {
        let postgres = self.inner.backend == Backend::Postgres;
        if query.params.is_empty() {
            return Ok(Drive::Sets);
        }
        if query.ids.is_some() {
            return Ok(Drive::Ids);
        }
        if query.params.len() < 2 && !postgres {
            return Ok(Drive::Sets);
        }
        // Only plain "any of these entries" tests can give the candidates.
        let mut candidates: Vec<(usize, &SearchParam)> = query
            .params
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                !p.any_of.is_empty() && p.conjunctions.is_empty() && !p.any_of.iter().any(keyed)
            })
            .collect();
        let compartment = compartment_params(rtype);
        candidates.sort_by_key(|(_, p)| {
            !compartment.contains(&p.name.split(':').next().unwrap_or_default())
        });
        // (rows counted, the parameter, its ids when read)
        let mut best: Option<(usize, usize, Vec<String>)> = None;
        for (i, param) in candidates {
            let cap = best.as_ref().map_or(PROBE_CAP, |(fewest, _, _)| *fewest);
            if cap == 0 {
                break;
            }
            let mut f = Filter {
                sql: String::new(),
                binds: vec![
                    Bind::Text(self.inner.tenant.clone()),
                    Bind::Text(rtype.as_str().to_owned()),
                ],
            };
            let tokens: Vec<String> = param
                .any_of
                .iter()
                .map(|e| {
                    let token = self
                        .inner
                        .keys
                        .search_token(rtype.as_str(), &e.param, &e.value);
                    f.placeholder(Bind::Bytes(token))
                })
                .collect();
            let (n, ids) = if postgres {
                let sql = format!(
                    "SELECT id FROM search_index WHERE tenant = $1 AND rtype = $2 \
                     AND token IN ({}) LIMIT {cap}",
                    tokens.join(", ")
                );
                let rows = f
                    .bind_all(sqlx::query(&sql))
                    .fetch_all(&self.inner.pool)
                    .await?;
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    ids.push(row.try_get::<String, _>("id")?);
                }
                (rows.len(), ids)
            } else {
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM search_index WHERE tenant = $1 \
                     AND rtype = $2 AND token IN ({}) LIMIT {cap}) x",
                    tokens.join(", ")
                );
                let n: i64 = f
                    .bind_all(sqlx::query(&sql))
                    .fetch_one(&self.inner.pool)
                    .await?
                    .try_get("n")?;
                (usize::try_from(n).unwrap_or(usize::MAX), Vec::new())
            };
            if best.as_ref().is_none_or(|(fewest, _, _)| n < *fewest) {
                best = Some((n, i, ids));
            }
        }
        Ok(match best {
            None => Drive::Sets,
            // Fewer rows than the cap: these are all of the test's ids.
            Some((n, i, mut ids)) if postgres && n < PROBE_CAP => {
                ids.sort();
                ids.dedup();
                Drive::Listed(i, ids)
            }
            Some(_) if postgres => Drive::Sets,
            Some((_, i, _)) => Drive::Param(i),
        })
    }

    /// Runs a search over everything: resources of `rtype` matching every parameter, one
    /// page of them.
    pub async fn search(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<SearchPage, StoreError> {
        self.search_scoped(rtype, query, &SearchScope::everything())
            .await
    }

    /// [`Store::search_scoped`], every hit held until a decision on its own facts releases
    /// it: the total and the page.
    pub async fn search_unreleased(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
        scope: &SearchScope,
    ) -> Result<(u64, Vec<Unreleased<StoredResource>>), StoreError> {
        let page = self.search_scoped(rtype, query, scope).await?;
        Ok((
            page.total,
            page.resources.into_iter().map(Unreleased::stored).collect(),
        ))
    }

    /// Runs a search restricted to what `scope` lets the principal see. Proof-free: for the
    /// master key's holder, tests, and lookups that feed a decision (care teams); the server's
    /// routes use [`Store::search_unreleased`].
    ///
    /// Results are ordered by id. A search with compartment-keyed entries (`_security`, or a
    /// scope that leaves labels out) binds their tokens for each compartment it reaches. A
    /// search whose only keyed entries are the scope's label exclusion, over every compartment
    /// or more than one statement can bind, first resolves them to the ids they leave out
    /// ([`Store::labelled_ids`]). Any other search over more compartments than one statement
    /// can bind runs as one statement per group of compartments (in key order), paged one
    /// group after the other: ordered by id within each group.
    pub async fn search_scoped(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
        scope: &SearchScope,
    ) -> Result<SearchPage, StoreError> {
        let drive = self.drive(rtype, query).await?;
        let Some(keys) = self.keyed_compartments(rtype, query, scope, &drive).await? else {
            return self
                .search_page(rtype, query, scope, None, &[], &drive)
                .await;
        };
        let keyed_params = query
            .params
            .iter()
            .flat_map(|p| p.entries())
            .filter(|e| keyed(e))
            .count();
        let per_key = scope.exclude_labels.iter().filter(|e| keyed(e)).count() + keyed_params;
        let group = (MAX_KEYED_BINDS / per_key.max(1)).max(1);
        // Over every compartment (a type-wide search), or more than one statement binds: only
        // the scope's label exclusion is keyed, so resolve it to the ids it leaves out first.
        let wide = scope.patients.is_none() || keys.len() > group;
        if keyed_params == 0
            && wide
            && let Some(labelled) = self.labelled_ids(rtype, scope, &keys).await?
        {
            return self
                .search_page(rtype, query, scope, None, &labelled, &drive)
                .await;
        }
        if keys.len() <= group {
            return self
                .search_page(rtype, query, scope, Some(&keys), &[], &drive)
                .await;
        }
        let mut page = SearchPage {
            total: 0,
            resources: Vec::new(),
        };
        let mut skip = query.offset;
        let mut room = query.count;
        for chunk in keys.chunks(group) {
            let mut q = query.clone();
            q.offset = if room > 0 { skip } else { 0 };
            q.count = room;
            let part = self
                .search_page(rtype, &q, scope, Some(chunk), &[], &drive)
                .await?;
            page.total = page.total.saturating_add(part.total);
            if room > 0 {
                room = room.saturating_sub(part.resources.len());
                skip = skip.saturating_sub(usize::try_from(part.total).unwrap_or(usize::MAX));
                page.resources.extend(part.resources);
            }
        }
        Ok(page)
    }

    /// One statement's count and page (see [`Store::filter`] for `keys` and `labelled`).
    async fn search_page(
        &self,
        rtype: ResourceType,
        query: &SearchQuery,
        scope: &SearchScope,
        keys: Option<&[String]>,
        labelled: &[String],
        drive: &Drive,
    ) -> Result<SearchPage, StoreError> {
        let f = self.filter(rtype, query, scope, keys, labelled, drive);
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM current_resources c WHERE {}",
            f.sql
        );
        let total: i64 = f
            .bind_all(sqlx::query(&count_sql))
            .fetch_one(&self.inner.pool)
            .await?
            .try_get("n")?;
        let resources = if query.count == 0 {
            Vec::new()
        } else {
            let page_sql = format!(
                "SELECT {CURRENT_COLUMNS} FROM current_resources c {} \
                 WHERE {} ORDER BY c.id LIMIT {} OFFSET {}",
                self.current_version_join(),
                f.sql,
                query.count,
                query.offset
            );
            let rows = f
                .bind_all(sqlx::query(&page_sql))
                .fetch_all(&self.inner.pool)
                .await?;
            let mut resources = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id")?;
                let id = Id::parse(&id).map_err(|_| StoreError::Integrity {
                    rtype: rtype.to_string(),
                    id: "(invalid id in the database)".to_owned(),
                })?;
                resources.push(self.open_current(rtype, &id, &row).await?);
            }
            resources
        };
        Ok(SearchPage {
            total: u64::try_from(total).unwrap_or(0),
            resources,
        })
    }
    /// Every current resource held under `patient`'s data key (their compartment, whatever
    /// the type), held until a decision releases each, ordered by type, then id. With
    /// `limit`, at most that many; when the compartment holds more, which of them is
    /// unspecified (callers refuse such a compartment).
    ///
    /// One statement through the `key_id` index, so it costs what the compartment holds (a
    /// search per compartment type with the patient as scope read every resource of each type
    /// to find the patient's). The statement names neither the tenant nor an order: SQLite
    /// would then walk the primary key `(tenant, rtype, id)`, which gives that order without a
    /// sort, across every resource of the tenant. A key belongs to one tenant; the rows'
    /// tenant is checked here all the same.
    pub async fn compartment_unreleased(
        &self,
        patient: &Id,
        limit: Option<usize>,
    ) -> Result<Vec<Unreleased<StoredResource>>, StoreError> {
        let keys = sqlx::query(
            "SELECT key_id FROM data_keys WHERE tenant = $1 AND kind = 'patient' AND owner = $2",
        )
        .bind(&self.inner.tenant)
        .bind(self.inner.keys.patient_owner(patient))
        .fetch_all(&self.inner.pool)
        .await?;
        let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
        let mut out = Vec::new();
        for key in keys {
            let key_id: String = key.try_get("key_id")?;
            let sql = format!(
                "SELECT c.tenant AS tenant, c.rtype AS rtype, {CURRENT_COLUMNS} \
                 FROM current_resources c {} \
                 WHERE c.key_id = $1 AND c.deleted = 0 \
                   AND NOT EXISTS (SELECT 1 FROM erasures e WHERE e.key_id = c.key_id){limit}",
                self.current_version_join()
            );
            let rows = sqlx::query(&sql)
                .bind(&key_id)
                .fetch_all(&self.inner.pool)
                .await?;
            for row in rows {
                let tenant: String = row.try_get("tenant")?;
                let rtype: String = row.try_get("rtype")?;
                let id: String = row.try_get("id")?;
                let invalid = || StoreError::Integrity {
                    rtype: rtype.clone(),
                    id: "(invalid tenant, type or id in the database)".to_owned(),
                };
                if tenant != self.inner.tenant {
                    return Err(invalid());
                }
                let parsed = ResourceType::parse(&rtype).map_err(|_| invalid())?;
                let id = Id::parse(&id).map_err(|_| invalid())?;
                out.push(self.open_current(parsed, &id, &row).await?);
            }
        }
        out.sort_by(|a, b| {
            (a.rtype.as_str(), a.id.as_str()).cmp(&(b.rtype.as_str(), b.id.as_str()))
        });
        Ok(out.into_iter().map(Unreleased::stored).collect())
    }

    /// Joins each page row `c` to its current version `v`. On PostgreSQL a lateral subquery
    /// run for each page row with its key as parameters (see [`Store::per_row_fence`]): as a
    /// plain join, a planner that believes the tables empty may scan every version of the
    /// type for each row.
    fn current_version_join(&self) -> &'static str {
        match self.inner.backend {
            Backend::Postgres => {
                "LEFT JOIN LATERAL (SELECT v.version, v.key_id, v.sealed, v.deleted \
                 FROM resource_versions v WHERE v.tenant = c.tenant AND v.rtype = c.rtype \
                 AND v.id = c.id AND v.version = c.version OFFSET 0) v ON TRUE"
            }
            Backend::Sqlite => {
                "LEFT JOIN resource_versions v ON v.tenant = c.tenant AND v.rtype = c.rtype \
                 AND v.id = c.id AND v.version = c.version"
            }
        }
    }
}
