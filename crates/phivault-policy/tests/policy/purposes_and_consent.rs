//! Purposes of use per role, emergency treatment needing a claim, consents changed only by their
//! patient, care teams granted by the team.

use super::*;

#[test]
fn each_role_asserts_only_its_purposes() {
    let doc = user(Role::Clinician);
    // A care-team clinician cannot pass a consent by naming payment or operations: those are
    // not a clinician's purposes unless configured.
    for purpose in [
        Purpose::Payment,
        Purpose::Operations,
        Purpose::Research,
        Purpose::Marketing,
    ] {
        for action in CLINICAL {
            let r = request(&doc, action, obs(CARE, &[]), purpose);
            assert_eq!(
                reason(&r),
                DenyReason::PurposeNotPermitted,
                "{action} {purpose}"
            );
        }
    }
    // Specializations of an allowed purpose are allowed (COC is a kind of TREAT).
    let r = request(
        &doc,
        Action::Read,
        obs(CARE, &[]),
        Purpose::CoordinationOfCare,
    );
    assert!(allowed(&r));
    // Patients assert the patient's purposes, not a clinician's.
    let me = user(Role::Patient);
    let r = request(&me, Action::Read, obs(OWN, &[]), Purpose::Treat);
    assert_eq!(reason(&r), DenyReason::PurposeNotPermitted);
    let r = request(&me, Action::Read, obs(OWN, &[]), Purpose::PowerOfAttorney);
    assert!(allowed(&r));
    // Configured: clinicians may assert HPAYMT too, and then the policies decide as before.
    let mut engine = PolicyEngine::new_default().unwrap();
    let mut purposes = RolePurposes::default();
    purposes
        .set(Role::Clinician, vec![Purpose::Treat, Purpose::Payment])
        .unwrap();
    engine.set_role_purposes(purposes);
    let r = request(&doc, Action::Read, obs(CARE, &[]), Purpose::Payment);
    assert!(engine.decide(&r).is_ok());
    let r = request(&doc, Action::Read, obs(CARE, &[]), Purpose::Operations);
    assert_eq!(
        engine.decide(&r).unwrap_err().reason(),
        DenyReason::PurposeNotPermitted
    );
}

#[test]
fn emergency_treatment_needs_a_claim() {
    let doc = user(Role::Clinician);
    for action in CLINICAL {
        // On the care team, consent permitting: still refused without a claim.
        let r = request(&doc, action, obs(CARE, &[]), Purpose::EmergencyTreat);
        assert_eq!(reason(&r), DenyReason::BreakGlassRequired, "{action}");
    }
    // With a claim it is a break-the-glass access (flagged), even on the care team.
    let mut r = request(&doc, Action::Read, obs(CARE, &[]), Purpose::EmergencyTreat);
    r.context.break_glass = Some(glass());
    assert!(ENGINE.decide(&r).unwrap().break_glass());
    // A consent denying TREAT (consent_permits false for ETREAT, as the hierarchy makes it):
    // only a recorded claim passes it.
    let mut r = request(&doc, Action::Read, obs(CARE, &[]), Purpose::EmergencyTreat);
    r.context.consent_permits = false;
    assert_eq!(reason(&r), DenyReason::BreakGlassRequired);
    r.context.break_glass = Some(glass());
    assert!(ENGINE.decide(&r).unwrap().break_glass());
    // Apps never break the glass: ETREAT is not theirs to assert, claim or not.
    let app = client("system/*.cruds");
    let mut r = request(&app, Action::Read, obs(CARE, &[]), Purpose::EmergencyTreat);
    assert_eq!(reason(&r), DenyReason::PurposeNotPermitted);
    r.context.break_glass = Some(glass());
    assert_eq!(reason(&r), DenyReason::PurposeNotPermitted);
    // A query across patients is decided per hit: ETREAT may ask it.
    let r = request(
        &doc,
        Action::Search,
        ResourceRef::new(rtype("Observation"), None, vec![]),
        Purpose::EmergencyTreat,
    );
    assert!(allowed(&r));
}

#[test]
fn consents_are_changed_by_their_patient_only() {
    let consent = |patient: &str| ResourceRef::new(rtype("Consent"), Some(id(patient)), vec![]);
    let doc = user(Role::Clinician);
    // A care-team clinician reads the consent but cannot record, change or delete it.
    let r = request(&doc, Action::Read, consent(CARE), Purpose::Treat);
    assert!(allowed(&r));
    for action in [Action::Create, Action::Update, Action::Delete] {
        let r = request(&doc, action, consent(CARE), Purpose::Treat);
        assert!(!allowed(&r), "clinician {action}");
    }
    // Apps: not with any scope.
    let app = client("system/*.cruds");
    assert!(allowed(&request(
        &app,
        Action::Read,
        consent(CARE),
        Purpose::Treat
    )));
    for action in [Action::Create, Action::Update, Action::Delete] {
        let r = request(&app, action, consent(CARE), Purpose::Treat);
        assert!(!allowed(&r), "app {action}");
    }
    // The patient records and changes their own.
    let me = user(Role::Patient);
    for action in [Action::Create, Action::Update] {
        let r = request(&me, action, consent(OWN), Purpose::PatientRequest);
        assert!(allowed(&r), "patient {action}");
        let r = request(&me, action, consent(OTHER), Purpose::PatientRequest);
        assert!(!allowed(&r), "patient {action} of another");
    }
    // An operator's policy may name another principal.
    let engine = PolicyEngine::with_extra_policies(
        r#"@id("privacy_office")
        permit (principal == PhiVault::Client::"c-app", action in PhiVault::Action::"clinical_write", resource is PhiVault::Resource)
        when { resource.rtype == "Consent" && context.scope_permits };"#,
    )
    .unwrap();
    let r = request(&app, Action::Update, consent(CARE), Purpose::Treat);
    assert!(engine.decide(&r).is_ok());
}

#[test]
fn care_teams_are_granted_by_the_team_not_by_a_scope() {
    let team = |patient: &str| ResourceRef::new(rtype("CareTeam"), Some(id(patient)), vec![]);
    // An app with CareTeam scopes reads care teams but cannot create or change one: that
    // would give any clinician access to any patient.
    for scope in ["system/CareTeam.c", "system/*.cruds"] {
        let app = client(scope);
        for action in [Action::Create, Action::Update, Action::Delete] {
            for patient in [CARE, OTHER] {
                let r = request(&app, action, team(patient), Purpose::Treat);
                assert!(!allowed(&r), "{scope} {action} {patient}");
            }
        }
    }
    let app = client("system/CareTeam.rs");
    assert!(allowed(&request(
        &app,
        Action::Read,
        team(OTHER),
        Purpose::Treat
    )));
    // A clinician extends the team of a patient they are on the team of, and no other.
    let doc = user(Role::Clinician);
    for action in [Action::Create, Action::Update] {
        assert!(allowed(&request(&doc, action, team(CARE), Purpose::Treat)));
        assert!(!allowed(&request(
            &doc,
            action,
            team(OTHER),
            Purpose::Treat
        )));
    }
}
