//! Actions about a patient's record as a whole: reading the audit trail and access logs, erasure,
//! the patient's own export and requests, research exports.

use super::*;

/// Reading the audit trail: auditors read all of it (the whole trail, or one patient's
/// access log); a patient reads their own access log only, in their own session; nobody
/// else, whatever the facts say.
#[test]
fn audit_trail_and_access_logs() {
    let whole = ResourceRef::audit_trail(None);
    let own = ResourceRef::audit_trail(Some(id(OWN)));
    let other = ResourceRef::audit_trail(Some(id(OTHER)));
    let read = |p: &PrincipalRef, r: &ResourceRef| {
        let mut req = request(p, Action::ReadAudit, r.clone(), p.role().default_purpose());
        // Every fact in their favour: care team, grants, an active break-the-glass claim.
        req.context.care_team = true;
        req.context.label_grants = Label::ALL.to_vec();
        req.context.break_glass = Some(glass());
        ENGINE.decide(&req)
    };

    // Auditors: everything.
    let auditor = user(Role::Auditor);
    for r in [&whole, &own, &other] {
        let proof = read(&auditor, r).unwrap();
        assert_eq!(proof.policies(), ["auditor.audit"]);
        assert_eq!(proof.patient(), r.patient.as_ref());
    }

    // A patient: their own access log, nothing else of the trail.
    let patient = user(Role::Patient);
    let proof = read(&patient, &own).unwrap();
    assert_eq!(proof.policies(), ["patient.own_access_log"]);
    assert_eq!(proof.action(), Action::ReadAudit);
    assert_eq!(proof.patient(), Some(&id(OWN)));
    for purpose in Purpose::ALL {
        let r = request(&patient, Action::ReadAudit, own.clone(), *purpose);
        let theirs = RolePurposes::default().permits(Role::Patient, *purpose);
        assert_eq!(allowed(&r), theirs, "own access log for {purpose}");
    }
    assert_eq!(
        read(&patient, &other).unwrap_err().reason(),
        DenyReason::NoPermit
    );
    assert_eq!(
        read(&patient, &whole).unwrap_err().reason(),
        DenyReason::NoPermit
    );
    // Another patient (linked to OTHER) does not read OWN's log, and OWN's is not theirs.
    let someone = PrincipalRef::user("u-someone", Role::Patient)
        .unwrap()
        .with_linked_patient(id(OTHER))
        .unwrap();
    assert!(read(&someone, &other).is_ok());
    assert!(read(&someone, &own).is_err());
    // A patient user not linked to any record reads no access log.
    let unlinked = PrincipalRef::user("u-unlinked", Role::Patient).unwrap();
    for r in [&whole, &own, &other] {
        assert!(read(&unlinked, r).is_err());
    }
    // An app acting for the patient (a token with SMART scopes, even every patient scope):
    // not the access log.
    let delegated = user(Role::Patient).with_scopes(scopes("patient/*.cruds"));
    assert!(read(&delegated, &own).is_err());

    // Everyone else: nothing, not even the log of a patient on their care team.
    for role in [Role::Admin, Role::Clinician, Role::Researcher] {
        let p = user(role);
        for r in [&whole, &own, &other] {
            assert_eq!(
                read(&p, r).unwrap_err().reason(),
                DenyReason::NoPermit,
                "{role} {:?}",
                r.patient
            );
        }
    }
    for scope in ["system/*.cruds", "patient/*.cruds"] {
        let app = client(scope);
        for r in [&whole, &own, &other] {
            assert!(read(&app, r).is_err(), "app {scope}");
        }
    }
    let launched = PrincipalRef::client("c-app", scopes("patient/*.cruds"))
        .unwrap()
        .with_launch_patient(id(OWN));
    assert!(read(&launched, &own).is_err());
}

// ---------------------------------------------------------------------------------------
// Erasure.

#[test]
fn erasure_is_for_admins_only() {
    let patient = |p: &str| ResourceRef::new(rtype("Patient"), Some(id(p)), vec![]);
    // Admins, in their own session, for any patient; the proof names the patient.
    let admin = user(Role::Admin);
    for p in [OWN, CARE, OTHER] {
        let r = request(
            &admin,
            Action::Erase,
            patient(p),
            Purpose::SystemAdministration,
        );
        let proof = ENGINE.decide(&r).unwrap();
        assert_eq!(proof.policies(), ["admin.erase"]);
        assert_eq!(proof.patient(), Some(&id(p)));
        assert_eq!(proof.action(), Action::Erase);
    }
    // Nobody else: not the patient (their request goes through staff), not their care team
    // with any purpose or break-the-glass, not the auditor or researcher.
    for role in [
        Role::Clinician,
        Role::Patient,
        Role::Auditor,
        Role::Researcher,
    ] {
        let principal = user(role);
        for p in [OWN, CARE, OTHER] {
            for purpose in [
                role.default_purpose(),
                Purpose::Treat,
                Purpose::EmergencyTreat,
            ] {
                let mut r = request(&principal, Action::Erase, patient(p), purpose);
                if purpose == Purpose::EmergencyTreat {
                    r.context.break_glass = Some(glass());
                }
                assert!(!allowed(&r), "{role} erase {p} {purpose:?}");
            }
        }
    }
    // Apps, whatever their scopes; an admin's token restricted by scopes neither.
    for scope in ["system/*.cruds", "system/Patient.d", "user/*.*"] {
        let r = request(
            &client(scope),
            Action::Erase,
            patient(OTHER),
            Purpose::Treat,
        );
        assert!(!allowed(&r), "app {scope}");
        let scoped_admin = user(Role::Admin).with_scopes(scopes(scope));
        let r = request(
            &scoped_admin,
            Action::Erase,
            patient(OTHER),
            Purpose::SystemAdministration,
        );
        assert!(!allowed(&r), "admin with {scope}");
    }
    // Only a Patient, and only a real one: another type or no patient is refused.
    let r = request(
        &admin,
        Action::Erase,
        obs(OTHER, &[]),
        Purpose::SystemAdministration,
    );
    assert!(!allowed(&r));
    let r = request(
        &admin,
        Action::Erase,
        ResourceRef::new(rtype("Patient"), None, vec![]),
        Purpose::SystemAdministration,
    );
    assert!(!allowed(&r));
    // Admins still get no clinical data.
    let r = request(
        &admin,
        Action::Read,
        patient(OTHER),
        Purpose::SystemAdministration,
    );
    assert!(!allowed(&r));
}

// ---------------------------------------------------------------------------------------
// Portable export of one's own record.

#[test]
fn export_own_is_for_the_patient_themselves() {
    let patient = |p: &str| ResourceRef::new(rtype("Patient"), Some(id(p)), vec![]);
    let me = user(Role::Patient);
    let proof = ENGINE
        .decide(&request(
            &me,
            Action::ExportOwn,
            patient(OWN),
            Role::Patient.default_purpose(),
        ))
        .unwrap();
    assert_eq!(proof.policies(), ["patient.export_own"]);
    assert_eq!(proof.patient(), Some(&id(OWN)));
    // Not another patient's record.
    for p in [CARE, OTHER] {
        let r = request(&me, Action::ExportOwn, patient(p), Purpose::Treat);
        assert!(!allowed(&r), "patient export {p}");
    }
    // Nobody else by default, not even the care team or an admin.
    for role in [
        Role::Clinician,
        Role::Admin,
        Role::Auditor,
        Role::Researcher,
    ] {
        for p in [OWN, CARE, OTHER] {
            let r = request(&user(role), Action::ExportOwn, patient(p), Purpose::Treat);
            assert!(!allowed(&r), "{role} export {p}");
        }
    }
    // Apps, whatever their scopes; a patient's token restricted by scopes neither.
    for scope in ["system/*.cruds", "patient/*.rs", "user/*.*"] {
        let r = request(
            &client(scope),
            Action::ExportOwn,
            patient(OWN),
            Purpose::Treat,
        );
        assert!(!allowed(&r), "app {scope}");
    }
    // Only the Patient resource: another type is refused.
    let r = request(&me, Action::ExportOwn, obs(OWN, &[]), Purpose::Treat);
    assert!(!allowed(&r));
}

// ---------------------------------------------------------------------------------------
// A patient's requests about their own record (correction, erasure).

#[test]
fn requests_about_own_record_are_for_the_patient_themselves() {
    let patient = |p: &str| ResourceRef::new(rtype("Patient"), Some(id(p)), vec![]);
    let me = user(Role::Patient);
    for action in [Action::RequestCorrection, Action::RequestErasure] {
        let proof = ENGINE
            .decide(&request(
                &me,
                action,
                patient(OWN),
                Role::Patient.default_purpose(),
            ))
            .unwrap();
        assert_eq!(proof.policies(), ["patient.request_own"], "{action}");
        assert_eq!(proof.patient(), Some(&id(OWN)));
        // Not about another patient's record.
        for p in [CARE, OTHER] {
            let r = request(&me, action, patient(p), Purpose::Treat);
            assert!(!allowed(&r), "patient {action} {p}");
        }
        // Nobody else by default (staff work on the Task, an admin erases).
        for role in [
            Role::Clinician,
            Role::Admin,
            Role::Auditor,
            Role::Researcher,
        ] {
            for p in [OWN, CARE, OTHER] {
                let r = request(&user(role), action, patient(p), Purpose::Treat);
                assert!(!allowed(&r), "{role} {action} {p}");
            }
        }
        // Apps, whatever their scopes.
        for scope in ["system/*.cruds", "patient/*.rs", "user/*.*"] {
            let r = request(&client(scope), action, patient(OWN), Purpose::Treat);
            assert!(!allowed(&r), "app {scope} {action}");
        }
        // Only the Patient resource.
        let r = request(&me, action, obs(OWN, &[]), Purpose::Treat);
        assert!(!allowed(&r), "{action} on an Observation");
    }
    // Asking for erasure is not erasing: the patient may not erase their own record.
    let r = request(&me, Action::Erase, patient(OWN), Purpose::Treat);
    assert!(!allowed(&r));
}

#[test]
fn research_exports_need_research_consent_and_no_labels() {
    let researcher = user(Role::Researcher);
    let app = client("system/Observation.rs");
    let decide = |who: &PrincipalRef, resource: ResourceRef, purpose: Purpose, consent: bool| {
        let mut r = request(who, Action::ExportDeidentified, resource, purpose);
        r.context.consent_permits = consent;
        ENGINE.decide(&r)
    };
    for who in [&researcher, &app] {
        // Research, consent permitting, unlabelled: allowed, and the proof is for this type
        // and patient only.
        let proof = decide(who, obs(CARE, &[]), Purpose::Research, true).unwrap();
        assert!(proof.covers(
            Action::ExportDeidentified,
            Some(rtype("Observation")),
            Some(&id(CARE))
        ));
        assert!(!proof.covers(
            Action::ExportDeidentified,
            Some(rtype("Observation")),
            Some(&id(OTHER))
        ));
        assert!(!proof.covers(Action::Search, Some(rtype("Observation")), Some(&id(CARE))));
        // Without the patient's research consent, labelled, or across patients: refused.
        assert!(decide(who, obs(CARE, &[]), Purpose::Research, false).is_err());
        assert!(
            decide(
                who,
                obs(CARE, &[Label::MentalHealth]),
                Purpose::Research,
                true
            )
            .is_err()
        );
        let across = ResourceRef::new(rtype("Observation"), None, vec![]);
        assert!(decide(who, across, Purpose::Research, true).is_err());
    }
    // Another purpose is refused (the researcher may not assert it; the app's policy asks
    // for research).
    assert!(decide(&researcher, obs(CARE, &[]), Purpose::Treat, true).is_err());
    assert!(decide(&app, obs(CARE, &[]), Purpose::Treat, true).is_err());
    // An app's scopes bound the types it may export.
    let cond = ResourceRef::new(rtype("Condition"), Some(id(CARE)), vec![]);
    assert!(decide(&app, cond.clone(), Purpose::Research, true).is_err());
    assert!(decide(&researcher, cond.clone(), Purpose::Research, true).is_ok());
    // An app acting for the researcher stays within its scopes.
    let delegated = user(Role::Researcher).with_scopes(scopes("user/Observation.rs"));
    assert!(decide(&delegated, obs(CARE, &[]), Purpose::Research, true).is_ok());
    assert!(decide(&delegated, cond, Purpose::Research, true).is_err());
    // Nobody else exports de-identified data by default.
    for role in [Role::Admin, Role::Clinician, Role::Auditor, Role::Patient] {
        assert!(
            decide(&user(role), obs(CARE, &[]), role.default_purpose(), true).is_err(),
            "{role}"
        );
    }
}
