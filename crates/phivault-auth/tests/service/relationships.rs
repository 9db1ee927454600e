//! Relationships between users and patients: grants and care teams (and their periods),
//! break-the-glass records and their lapse, and the summaries access logs show of users and
//! clients.

use super::*;

#[tokio::test]
async fn grants_and_care_teams_make_relationships() {
    for f in fixtures().await {
        let a = &f.accounts;
        let (who, secret, _) = f.enrolled("dr.ivy", Role::Clinician).await;
        let (p1, p2, p3, p4) = (id("p1"), id("p2"), id("p3"), id("p4"));
        assert_eq!(a.relationship(&who, &p1).await.unwrap(), (false, vec![]));
        assert!(a.care_patients(&who).await.unwrap().is_empty());

        a.grant(
            "dr.ivy",
            &p1,
            &[Label::MentalHealth, Label::Hiv],
            None,
            &NoAudit,
        )
        .await
        .unwrap();
        let (on_team, mut labels) = a.relationship(&who, &p1).await.unwrap();
        labels.sort();
        assert!(on_team, "{}", f.label);
        assert_eq!(labels, vec![Label::MentalHealth, Label::Hiv]);
        // A new grant replaces the old one.
        a.grant("dr.ivy", &p1, &[], None, &NoAudit).await.unwrap();
        assert_eq!(a.relationship(&who, &p1).await.unwrap(), (true, vec![]));

        // Care teams naming the clinician's Practitioner.
        a.link_practitioner("dr.ivy", &id("pr-ivy"), &NoAudit)
            .await
            .unwrap();
        for (patient, practitioner, status) in [
            ("p2", "pr-ivy", "active"),
            ("p3", "pr-ivy", "inactive"),
            ("p5", "pr-other", "active"),
        ] {
            f.store
                .create(
                    valid(json!({
                        "resourceType": "CareTeam",
                        "status": status,
                        "subject": { "reference": format!("Patient/{patient}") },
                        "participant": [
                            { "member": { "reference": format!("Practitioner/{practitioner}") } }
                        ],
                    })),
                    &phivault_store::NoAudit,
                )
                .await
                .unwrap();
        }
        // Sessions read the link when they are presented.
        assert_eq!(a.relationship(&who, &p2).await.unwrap(), (false, vec![]));
        f.advance(30);
        let session = f
            .login("dr.ivy", PASSWORD, Some(code_at(&secret, f.now())), None)
            .await
            .unwrap();
        let who = a.authenticate(session.token.expose()).await.unwrap();
        assert_eq!(who.practitioner, Some(id("pr-ivy")));
        assert_eq!(a.relationship(&who, &p2).await.unwrap(), (true, vec![]));
        assert_eq!(a.relationship(&who, &p3).await.unwrap(), (false, vec![]));
        assert_eq!(
            a.relationship(&who, &id("p5")).await.unwrap(),
            (false, vec![])
        );

        // Time-limited grants.
        a.grant(
            "dr.ivy",
            &p4,
            &[Label::Restricted],
            Some(f.now() + 100),
            &NoAudit,
        )
        .await
        .unwrap();
        assert_eq!(
            a.care_patients(&who).await.unwrap(),
            vec![p1.clone(), p2.clone(), p4.clone()]
        );
        assert_eq!(
            a.relationship(&who, &p4).await.unwrap(),
            (true, vec![Label::Restricted])
        );
        f.advance(100);
        assert_eq!(a.care_patients(&who).await.unwrap(), vec![p1, p2]);
        assert_eq!(a.relationship(&who, &p4).await.unwrap(), (false, vec![]));
        assert!(matches!(
            a.grant("dr.ivy", &p4, &[], Some(f.now()), &NoAudit).await,
            Err(ServiceError::Invalid(_))
        ));
        assert!(matches!(
            a.grant("nobody", &p4, &[], None, &NoAudit).await,
            Err(ServiceError::NotFound(_))
        ));

        // Apps acting on their own have no care relationships.
        let client = a
            .create_client("c", "system/Patient.r", None, &NoAudit)
            .await
            .unwrap();
        let (t, _, _) = a
            .client_credentials(&client.0, client.1.expose(), None)
            .await
            .unwrap();
        let app = a.authenticate(t.expose()).await.unwrap();
        assert_eq!(
            a.relationship(&app, &id("p2")).await.unwrap(),
            (false, vec![])
        );
        assert!(a.care_patients(&app).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn break_the_glass_is_recorded_listed_and_lapses() {
    for f in fixtures().await {
        let a = &f.accounts;
        let (who, _, _) = f.enrolled("dr.kim", Role::Clinician).await;
        let p = id("p-emergency");
        assert!(a.active_break_glass(&who, &p).await.unwrap().is_none());
        let start = f.now();
        let bg = a
            .record_break_glass(&who, &p, "  unconscious in ED  ", start + 3600)
            .await
            .unwrap();
        let active = a.active_break_glass(&who, &p).await.unwrap().unwrap();
        assert_eq!(active.id, bg);
        assert_eq!(active.reason, "unconscious in ED");
        assert_eq!(active.user_id, who.principal.id());
        assert_eq!(
            (active.started_at, active.expires_at),
            (start, start + 3600)
        );
        assert!(
            a.active_break_glass(&who, &id("p-other"))
                .await
                .unwrap()
                .is_none()
        );
        f.advance(10);
        let second = a
            .record_break_glass(&who, &id("p-other"), "second emergency", f.now() + 60)
            .await
            .unwrap();
        let list = a.list_break_glass().await.unwrap();
        assert_eq!(
            list.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec![second.as_str(), bg.as_str()]
        );
        assert_eq!(list[1].patient, p);
        f.advance(3600);
        assert!(a.active_break_glass(&who, &p).await.unwrap().is_none());
        assert_eq!(a.list_break_glass().await.unwrap().len(), 2);

        for (reason, end) in [
            ("", f.now() + 60),
            ("   ", f.now() + 60),
            ("ok", f.now()),
            ("ok", f.now() + 25 * 3600),
            ("bell\u{7}", f.now() + 60),
        ] {
            assert!(
                matches!(
                    a.record_break_glass(&who, &p, reason, end).await,
                    Err(ServiceError::Invalid(_))
                ),
                "{reason:?}"
            );
        }
        // Only clinicians break the glass.
        let (auditor, _, _) = f.enrolled("audrey", Role::Auditor).await;
        assert!(matches!(
            a.record_break_glass(&auditor, &p, "curious", f.now() + 60)
                .await,
            Err(ServiceError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn user_summaries_and_client_names_for_access_logs() {
    for f in fixtures().await {
        let a = &f.accounts;
        let clinician = a
            .create_user(
                "Dr.Qwobble",
                Password::new(PASSWORD),
                Role::Clinician,
                &NoAudit,
            )
            .await
            .unwrap();
        let patient = a
            .create_user(
                "pat-summary",
                Password::new(PASSWORD),
                Role::Patient,
                &NoAudit,
            )
            .await
            .unwrap();

        let s = a.user_summary(&clinician).await.unwrap().unwrap();
        assert_eq!(s.username, "Dr.Qwobble", "{}", f.label);
        assert_eq!(s.role, Role::Clinician);
        assert_eq!(s.practitioner, None);
        // Debug names the role, never the username.
        let debug = format!("{s:?}");
        assert!(
            debug.contains("Clinician") && !debug.contains("Qwobble"),
            "{debug}"
        );

        a.link_practitioner("Dr.Qwobble", &id("prac-1"), &NoAudit)
            .await
            .unwrap();
        let s = a.user_summary(&clinician).await.unwrap().unwrap();
        assert_eq!(s.practitioner, Some(id("prac-1")));
        let s = a.user_summary(&patient).await.unwrap().unwrap();
        assert_eq!((s.role, s.practitioner), (Role::Patient, None));

        // Disabled accounts still name who acted; unknown ids are None, not an error.
        a.disable_user("Dr.Qwobble", &NoAudit).await.unwrap();
        assert!(a.user_summary(&clinician).await.unwrap().is_some());
        assert_eq!(a.user_summary("no-such-user").await.unwrap(), None);
        assert_eq!(a.user_summary("").await.unwrap(), None);

        let (client_id, _) = a
            .create_client("  Lab feed  ", "system/Observation.rs", None, &NoAudit)
            .await
            .unwrap();
        assert_eq!(
            a.client_name(&client_id).await.unwrap().as_deref(),
            Some("Lab feed")
        );
        assert_eq!(a.client_name("pvcl_unknown").await.unwrap(), None);
        // A user id is not a client id, nor the other way round.
        assert_eq!(a.client_name(&clinician).await.unwrap(), None);
        assert_eq!(a.user_summary(&client_id).await.unwrap(), None);
    }
}

/// A FHIR dateTime `secs` Unix seconds.
fn date_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn care_teams_count_only_within_their_periods() {
    for f in fixtures().await {
        let a = &f.accounts;
        let (_, secret, _) = f.enrolled("dr.kai", Role::Clinician).await;
        a.link_practitioner("dr.kai", &id("pr-kai"), &NoAudit)
            .await
            .unwrap();
        let now = f.now();
        // (patient, team period, member period)
        let teams = [
            ("q1", None, None),
            ("q2", Some(json!({"end": date_time(now - 10)})), None),
            ("q3", Some(json!({"start": date_time(now + 100)})), None),
            ("q4", None, Some(json!({"end": date_time(now - 10)}))),
            ("q5", None, Some(json!({"start": date_time(now + 100)}))),
            ("q6", Some(json!({"start": "yesterday"})), None),
            (
                "q7",
                Some(json!({"start": date_time(now - 10), "end": date_time(now + 1000)})),
                Some(json!({"start": date_time(now - 10)})),
            ),
        ];
        for (patient, team, member) in &teams {
            let mut participant = json!({ "member": { "reference": "Practitioner/pr-kai" } });
            if let Some(p) = member {
                participant["period"] = p.clone();
            }
            let mut body = json!({
                "resourceType": "CareTeam",
                "status": "active",
                "subject": { "reference": format!("Patient/{patient}") },
                "participant": [participant],
            });
            if let Some(p) = team {
                body["period"] = p.clone();
            }
            // The validator may refuse a malformed period; the store is then never asked.
            let Ok(valid) = validator().validate(body, None) else {
                continue;
            };
            f.store
                .create(valid, &phivault_store::NoAudit)
                .await
                .unwrap();
        }
        f.advance(30);
        let session = f
            .login("dr.kai", PASSWORD, Some(code_at(&secret, f.now())), None)
            .await
            .unwrap();
        let who = a.authenticate(session.token.expose()).await.unwrap();
        let on_team = |p: &str| {
            let p = id(p);
            let who = who.clone();
            async move { a.relationship(&who, &p).await.unwrap().0 }
        };
        let mut now_on = Vec::new();
        for (p, _, _) in &teams {
            if on_team(p).await {
                now_on.push(*p);
            }
        }
        assert_eq!(now_on, ["q1", "q7"], "{}", f.label);
        assert_eq!(
            a.care_patients(&who).await.unwrap(),
            vec![id("q1"), id("q7")],
            "{}",
            f.label
        );
        // Once the future periods have begun.
        f.advance(100);
        let mut later = Vec::new();
        for (p, _, _) in &teams {
            if on_team(p).await {
                later.push(*p);
            }
        }
        assert_eq!(later, ["q1", "q3", "q5", "q7"], "{}", f.label);
    }
}
