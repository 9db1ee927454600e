//! Erasure (crypto-shredding of a patient's compartment, then the index sweep) and retention
//! (disposal of expired resources), on each backend under test.

use super::*;

/// The version rows of `ids` as stored: (rtype, id, version, deleted, key_id, sealed).
async fn version_rows(s: &Store, ids: &[&Id]) -> Vec<(String, String, i64, bool, String, Vec<u8>)> {
    let mut out = Vec::new();
    for id in ids {
        let rows = sqlx::query(
            "SELECT rtype, id, version, deleted, key_id, sealed FROM resource_versions \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_all(s.pool())
        .await
        .unwrap();
        for r in rows {
            out.push((
                r.get("rtype"),
                r.get("id"),
                r.get("version"),
                r.get::<i64, _>("deleted") != 0,
                r.get("key_id"),
                r.get("sealed"),
            ));
        }
    }
    out
}

async fn index_rows(s: &Store, id: &Id) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM search_index WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn erasure_shreds_the_compartment_for_every_reader_and_writer() {
    use phivault_store::WriteKind;
    let obs = ResourceType::parse("Observation").unwrap();
    let cond = ResourceType::parse("Condition").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Erasmus", "Eve")), &NoAudit)
            .await
            .unwrap();
        let o1 = s
            .create(valid(observation(&p.id, "8310-5")), &NoAudit)
            .await
            .unwrap();
        let mut amended = o1.body.clone();
        amended["status"] = json!("amended");
        s.update(&o1.id, valid(amended), None, &NoAudit)
            .await
            .unwrap();
        let o2 = s
            .create(valid(observation(&p.id, "2339-0")), &NoAudit)
            .await
            .unwrap();
        s.delete(obs, &o2.id, &NoAudit).await.unwrap();
        let c = s
            .create(valid(condition(&p.id, "44054006")), &NoAudit)
            .await
            .unwrap();
        // Someone else, untouched by the erasure.
        let q = s
            .create(valid(patient("Keeper", "Kim")), &NoAudit)
            .await
            .unwrap();
        let qo = s
            .create(valid(observation(&q.id, "8867-4")), &NoAudit)
            .await
            .unwrap();

        // A second process on the same database, its key cache warm with the patient's key.
        let other = f.reopen(&f.key).await.unwrap();
        other.read(obs, &o1.id).await.unwrap();
        other.vread(obs, &o1.id, 1).await.unwrap();

        // A third, whose warm cache is never touched again: the periodic eviction clears it.
        let idle = f.reopen(&f.key).await.unwrap();
        idle.read(ResourceType::PATIENT, &p.id).await.unwrap();

        let sink = RecordingSink::default();
        let record = s.erase_patient(&p.id, &sink).await.unwrap();
        assert_eq!(record.patient, p.id, "{l}");
        // Patient, two observations (one deleted) and the condition.
        assert_eq!(record.resources, 4, "{l}");
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{l}");
        assert_eq!(seen[0].kind, WriteKind::Erase);
        assert_eq!(seen[0].patient.as_ref(), Some(&p.id));
        assert!(s.is_erased(&p.id).await.unwrap());
        assert!(!s.is_erased(&q.id).await.unwrap());

        // Every read of the compartment, in both processes: 410 Erased, never an integrity
        // failure.
        for store in [s, &other] {
            for (rtype, id) in [
                (ResourceType::PATIENT, &p.id),
                (obs, &o1.id),
                (obs, &o2.id),
                (cond, &c.id),
            ] {
                let e = store.read(rtype, id).await.unwrap_err();
                assert!(
                    matches!(e, StoreError::Erased { .. }),
                    "{l} read {rtype}: {e:?}"
                );
                assert_eq!(e.http_status(), 410);
                let e = store.vread(rtype, id, 1).await.unwrap_err();
                assert!(
                    matches!(e, StoreError::Erased { .. }),
                    "{l} vread {rtype}: {e:?}"
                );
                let e = store.history(rtype, id, 10, 0).await.unwrap_err();
                assert!(matches!(e, StoreError::Erased { .. }), "{l} history: {e:?}");
            }
            // Searches by every kind of indexed value find nothing of it (before the sweep).
            for (rtype, pairs) in [
                (ResourceType::PATIENT, vec![("family", "Erasmus")]),
                (
                    ResourceType::PATIENT,
                    vec![("identifier", "urn:mrn|MRN-Erasmus")],
                ),
                (ResourceType::PATIENT, vec![("_id", p.id.as_str())]),
                (obs, vec![("code", "http://loinc.org|8310-5")]),
                (cond, vec![("code", "http://snomed.info/sct|44054006")]),
            ] {
                let page = store.search(rtype, &query(rtype, &pairs)).await.unwrap();
                assert_eq!(page.total, 0, "{l} {rtype} {pairs:?}");
            }
            let subject = format!("Patient/{}", p.id);
            let page = store
                .search(obs, &query(obs, &[("subject", subject.as_str())]))
                .await
                .unwrap();
            assert_eq!(page.total, 0, "{l}");
            // The other patient is still there.
            let page = store
                .search(obs, &query(obs, &[("code", "http://loinc.org|8867-4")]))
                .await
                .unwrap();
            assert_eq!(page.resources.len(), 1, "{l}");
            assert_eq!(page.resources[0].id, qo.id);
            store.read(ResourceType::PATIENT, &q.id).await.unwrap();
        }

        // No write lands in the compartment, and no new key is made for it: from this process
        // (cache dropped) and from the other (its cached key is refused in the transaction).
        for store in [s, &other] {
            let e = store
                .create(valid(observation(&p.id, "1-1")), &NoAudit)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}");
            assert_eq!(e.http_status(), 410);
            let mut body = patient("Erasmus", "Eve");
            body["id"] = json!(p.id.as_str());
            let e = store
                .update(&p.id, valid(body), None, &NoAudit)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}");
            let e = store.delete(cond, &c.id, &NoAudit).await.unwrap_err();
            assert_eq!(e.http_status(), 410, "{l}: {e:?}");
        }
        let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kind = 'patient'")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(keys, 1, "{l}: only the other patient's key is left");

        // Twice: 409; an unknown patient: 404. Nothing written for either.
        let e = s.erase_patient(&p.id, &sink).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyErased { .. }), "{l}: {e:?}");
        assert_eq!(e.http_status(), 409);
        assert_eq!(
            e.to_string(),
            format!("patient already erased: Patient/{}", p.id)
        );
        let e = s
            .erase_patient(&Id::parse("nobody-here").unwrap(), &sink)
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 404, "{l}: {e:?}");
        assert_eq!(sink.seen.lock().unwrap().len(), 1);

        // The ciphertext rows remain, and not one key either store holds opens any of them.
        let rows = version_rows(s, &[&p.id, &o1.id, &o2.id, &c.id]).await;
        assert_eq!(rows.len(), 1 + 2 + 2 + 1, "{l}");
        for store in [s, &other] {
            for (rtype, id, version, deleted, key_id, sealed) in &rows {
                let n = store
                    .keys_that_open(rtype, id, *version, *deleted, key_id, sealed)
                    .await
                    .unwrap();
                assert_eq!(n, 0, "{l}: {rtype}/{id}/{version} opens with {n} keys");
            }
        }
        let (_, _, version, deleted, key_id, sealed) = &rows[0];
        let opens = |st: Store| {
            let (rtype, id) = (rows[0].0.clone(), rows[0].1.clone());
            let (key_id, sealed) = (key_id.clone(), sealed.clone());
            let (version, deleted) = (*version, *deleted);
            async move {
                st.keys_that_open(&rtype, &id, version, deleted, &key_id, &sealed)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            opens(idle.clone()).await,
            1,
            "{l}: the idle cache still holds it"
        );
        assert!(idle.evict_erased_keys(0).await.unwrap() >= record.erased_at_ms);
        assert_eq!(opens(idle.clone()).await, 0, "{l}: evicted");
        idle.close().await;
        // The check is not vacuous: the other patient's rows open with their key.
        for (rtype, id, version, deleted, key_id, sealed) in version_rows(s, &[&qo.id]).await {
            let n = s
                .keys_that_open(&rtype, &id, version, deleted, &key_id, &sealed)
                .await
                .unwrap();
            assert_eq!(n, 1, "{l}");
        }

        // The ledger: key id, owner token, count; not the patient id in the clear.
        let row = sqlx::query("SELECT key_id, owner, resources, index_swept_at FROM erasures")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("key_id"), record.key_id);
        assert_eq!(row.get::<i64, _>("resources"), 4);
        let owner: Vec<u8> = row.get("owner");
        assert_eq!(owner.len(), 32);
        assert!(
            !owner
                .windows(p.id.as_str().len())
                .any(|w| w == p.id.as_str().as_bytes())
        );
        assert!(row.get::<Option<i64>, _>("index_swept_at").is_none());

        // The sweep deletes the compartment's blind tokens, and only those; once.
        assert!(index_rows(s, &o1.id).await > 0, "{l}");
        let report = s.sweep_erasures().await.unwrap();
        assert_eq!(report.erasures, 1, "{l}");
        assert!(report.index_rows > 0);
        for id in [&p.id, &o1.id, &c.id] {
            assert_eq!(index_rows(s, id).await, 0, "{l}");
        }
        assert!(index_rows(s, &qo.id).await > 0, "{l}");
        assert_eq!(other.sweep_erasures().await.unwrap().erasures, 0);
        // Reads still answer 410 after the sweep.
        let e = s.read(obs, &o1.id).await.unwrap_err();
        assert!(matches!(e, StoreError::Erased { .. }), "{l}: {e:?}");
        other.close().await;
    }
}

#[tokio::test]
async fn a_write_racing_an_erasure_is_erased_with_it_or_refused() {
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Racer", "Rae")), &NoAudit)
            .await
            .unwrap();
        let mut writers = Vec::new();
        for i in 0..16 {
            let s = s.clone();
            let p = p.id.clone();
            writers.push(tokio::spawn(async move {
                s.create(valid(observation(&p, &format!("{i}-1"))), &NoAudit)
                    .await
            }));
        }
        let record = s.erase_patient(&p.id, &NoAudit).await.unwrap();
        let mut written = Vec::new();
        for w in writers {
            match w.await.unwrap() {
                Ok(stored) => written.push(stored.id),
                Err(e) => assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}"),
            }
        }
        // Every acknowledged write committed before the erasure and was counted by it.
        assert_eq!(record.resources, 1 + written.len() as u64, "{l}");
        for id in &written {
            let e = s
                .read(ResourceType::parse("Observation").unwrap(), id)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Erased { .. }), "{l}: {e:?}");
        }
        let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kind = 'patient'")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(keys, 0, "{l}: no key was re-created");
    }
}

/// Sets the last write of `rtype/id` back by `secs` (pointer and every version).
async fn age(s: &Store, rtype: ResourceType, id: &Id, secs: i64) {
    for table in ["current_resources", "resource_versions"] {
        sqlx::query(&format!(
            "UPDATE {table} SET recorded_at = recorded_at - $1 WHERE rtype = $2 AND id = $3"
        ))
        .bind(secs)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .execute(s.pool())
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn retention_disposes_of_expired_resources_only() {
    use phivault_store::{RetentionCount, RetentionRule, WriteKind};
    let obs = ResourceType::parse("Observation").unwrap();
    let cond = ResourceType::parse("Condition").unwrap();
    let day = 86_400;
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Retent", "Rita")), &NoAudit)
            .await
            .unwrap();
        // Old: amended (two versions), and another old one deleted (a tombstone).
        let old = s
            .create(valid(observation(&p.id, "8310-5")), &NoAudit)
            .await
            .unwrap();
        let mut amended = old.body.clone();
        amended["status"] = json!("amended");
        s.update(&old.id, valid(amended), None, &NoAudit)
            .await
            .unwrap();
        let old_deleted = s
            .create(valid(observation(&p.id, "2339-0")), &NoAudit)
            .await
            .unwrap();
        s.delete(obs, &old_deleted.id, &NoAudit).await.unwrap();
        // Recent: kept.
        let recent = s
            .create(valid(observation(&p.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        // Another type, just as old, without a rule: kept.
        let c = s
            .create(valid(condition(&p.id, "44054006")), &NoAudit)
            .await
            .unwrap();
        for id in [&old.id, &old_deleted.id] {
            age(s, obs, id, 40 * day).await;
        }
        age(s, cond, &c.id, 400 * day).await;
        age(s, ResourceType::PATIENT, &p.id, 400 * day).await;
        age(s, obs, &recent.id, 10 * day).await;

        let rules = [RetentionRule {
            rtype: obs,
            max_age_secs: 30 * day,
        }];
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expired = s.expired(&rules[0], now, 10).await.unwrap();
        assert_eq!(expired.len(), 2, "{l}");
        assert!(expired.contains(&old.id) && expired.contains(&old_deleted.id));

        // Dry run: counted, nothing changed, nothing audited.
        let sink = RecordingSink::default();
        let counts = s.run_retention(&rules, now, true, &sink).await.unwrap();
        assert_eq!(
            counts,
            vec![RetentionCount {
                rtype: obs,
                resources: 2
            }],
            "{l}"
        );
        assert!(sink.seen.lock().unwrap().is_empty(), "{l}");
        s.read(obs, &old.id).await.unwrap();
        assert_eq!(version_rows(s, &[&old.id, &old_deleted.id]).await.len(), 4);

        // A failing sink rolls the disposal back.
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(s.run_retention(&rules, now, false, &sink).await.is_err());
        s.read(obs, &old.id).await.unwrap();
        assert_eq!(s.count_expired(&rules[0], now).await.unwrap(), 2, "{l}");
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        sink.seen.lock().unwrap().clear();

        let counts = s.run_retention(&rules, now, false, &sink).await.unwrap();
        assert_eq!(counts[0].resources, 2, "{l}");
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{l}");
        assert!(
            seen.iter()
                .all(|w| w.kind == WriteKind::Dispose && w.rtype == obs)
        );
        assert!(seen.iter().any(|w| w.id == old.id && w.version == 2));
        assert!(
            seen.iter()
                .any(|w| w.id == old_deleted.id && w.version == 2)
        );
        assert!(seen.iter().all(|w| w.patient.is_none()));

        // Gone as if it never existed: 404, not 410, not an integrity failure.
        for id in [&old.id, &old_deleted.id] {
            let e = s.read(obs, id).await.unwrap_err();
            assert!(matches!(e, StoreError::NotFound { .. }), "{l}: {e:?}");
            assert_eq!(e.http_status(), 404);
            let e = s.vread(obs, id, 1).await.unwrap_err();
            assert_eq!(e.http_status(), 404, "{l}: {e:?}");
            let e = s.history(obs, id, 10, 0).await.unwrap_err();
            assert_eq!(e.http_status(), 404, "{l}: {e:?}");
            assert_eq!(index_rows(s, id).await, 0, "{l}");
        }
        assert!(
            version_rows(s, &[&old.id, &old_deleted.id])
                .await
                .is_empty(),
            "{l}: no ciphertext row is left"
        );
        let page = s
            .search(obs, &query(obs, &[("code", "http://loinc.org|8310-5")]))
            .await
            .unwrap();
        assert_eq!(page.total, 0, "{l}");
        // The same patient's other resources read and are found.
        s.read(obs, &recent.id).await.unwrap();
        s.read(cond, &c.id).await.unwrap();
        s.read(ResourceType::PATIENT, &p.id).await.unwrap();
        let subject = format!("Patient/{}", p.id);
        let page = s
            .search(obs, &query(obs, &[("subject", subject.as_str())]))
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{l}");
        // The ledger: ids, counts, times.
        let ledger: i64 = sqlx::query(
            "SELECT CAST(SUM(versions) AS BIGINT) AS n FROM retention_ledger WHERE rtype = 'Observation'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n");
        assert_eq!(ledger, 4, "{l}");
        // Run again: nothing left to do.
        let counts = s.run_retention(&rules, now, false, &sink).await.unwrap();
        assert_eq!(counts[0].resources, 0, "{l}");
    }
}
