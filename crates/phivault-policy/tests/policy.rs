//! Decisions of the default policy set, as tables; operator policy loading.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;

use phivault_fhir::{Id, ResourceType};
use phivault_policy::{
    AccessRequest, Action, BreakGlass, DecisionContext, DenyReason, Label, PolicyEngine,
    PolicyError, PrincipalRef, Purpose, ResourceRef, Role, RolePurposes, ScopeSet,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

static ENGINE: LazyLock<PolicyEngine> = LazyLock::new(|| PolicyEngine::new_default().unwrap());

const NOW: OffsetDateTime = datetime!(2026-03-01 10:00 UTC);

/// The patient user's own record, the clinician's care-team patient, and someone else.
const OWN: &str = "p-own";
const CARE: &str = "p-care";
const OTHER: &str = "p-other";

const CLINICAL: [Action; 7] = [
    Action::Read,
    Action::Vread,
    Action::Search,
    Action::History,
    Action::Create,
    Action::Update,
    Action::Delete,
];

fn id(s: &str) -> Id {
    Id::parse(s).unwrap()
}

fn rtype(s: &str) -> ResourceType {
    ResourceType::parse(s).unwrap()
}

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).unwrap()
}

fn user(role: Role) -> PrincipalRef {
    let p = PrincipalRef::user(&format!("u-{role}"), role).unwrap();
    if role == Role::Patient {
        p.with_linked_patient(id(OWN)).unwrap()
    } else {
        p
    }
}

fn client(scope: &str) -> PrincipalRef {
    PrincipalRef::client("c-app", scopes(scope)).unwrap()
}

fn glass() -> BreakGlass {
    BreakGlass::claim("patient unconscious in ED", NOW, BreakGlass::DEFAULT_WINDOW).unwrap()
}

/// A request as the server would build it: care team computed for clinicians, consent
/// allowing, no label grants.
fn request(
    principal: &PrincipalRef,
    action: Action,
    resource: ResourceRef,
    purpose: Purpose,
) -> AccessRequest {
    let mut context = DecisionContext::new(purpose, NOW);
    context.care_team =
        principal.role() == Role::Clinician && resource.patient.as_ref() == Some(&id(CARE));
    context.consent_permits = true;
    AccessRequest {
        principal: principal.clone(),
        action,
        resource,
        context,
    }
}

fn obs(patient: &str, labels: &[Label]) -> ResourceRef {
    ResourceRef::new(rtype("Observation"), Some(id(patient)), labels.to_vec())
}

fn allowed(r: &AccessRequest) -> bool {
    ENGINE.decide(r).is_ok()
}

fn reason(r: &AccessRequest) -> DenyReason {
    ENGINE.decide(r).expect_err("expected a refusal").reason()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PurposeCase {
    Treat,
    EtreatNoGlass,
    EtreatGlass,
    Research,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    User(Role),
    App,
}

/// The specification of the default policies for the main matrix, written independently of
/// the Cedar text.
fn expected(who: Who, action: Action, patient: &str, labelled: bool, p: PurposeCase) -> bool {
    let read = action.is_read();
    let glass = p == PurposeCase::EtreatGlass;
    match who {
        Who::User(Role::Admin | Role::Researcher | Role::Auditor | Role::App) => false,
        Who::User(Role::Clinician) => {
            // ETREAT without a claim is refused (it would pass a consent denying TREAT);
            // HRESCH is not a clinician's purpose.
            let treat_like = matches!(p, PurposeCase::Treat | PurposeCase::EtreatGlass);
            let normal = patient == CARE
                && if action == Action::Delete {
                    p == PurposeCase::Treat
                } else {
                    treat_like
                };
            let emergency = glass && read;
            let label_ok = !labelled || emergency;
            (normal || emergency) && label_ok
        }
        // Observation is not among the types a patient may create. A patient asserts PATRQT
        // (the "Treat" case runs with it); TREAT, ETREAT and HRESCH are not theirs.
        Who::User(Role::Patient) => patient == OWN && read && p == PurposeCase::Treat,
        // system/*.cruds, consent allowing, no label grants; apps never break the glass, so
        // ETREAT is refused.
        Who::App => !labelled && matches!(p, PurposeCase::Treat | PurposeCase::Research),
        Who::User(_) => unreachable!("non-exhaustive Role"),
    }
}

#[test]
fn default_policies_load_and_are_named() {
    let ids = ENGINE.policy_ids();
    for expected in [
        "capabilities",
        "admin.manage",
        "clinician.care_team",
        "clinician.break_glass",
        "patient.own_read",
        "app.scopes",
        "forbid.scope",
        "forbid.labels",
    ] {
        assert!(ids.iter().any(|i| i == expected), "{expected} in {ids:?}");
    }
    assert_eq!(ENGINE.extra_policy_count(), 0);
}

#[test]
fn matrix_roles_actions_patients_labels_purposes() {
    let whos = [
        Who::User(Role::Admin),
        Who::User(Role::Clinician),
        Who::User(Role::Patient),
        Who::User(Role::Researcher),
        Who::User(Role::Auditor),
        Who::App,
    ];
    let purposes = [
        PurposeCase::Treat,
        PurposeCase::EtreatNoGlass,
        PurposeCase::EtreatGlass,
        PurposeCase::Research,
    ];
    let mut failures = Vec::new();
    let (mut cases, mut allows) = (0, 0);
    for who in whos {
        let principal = match who {
            Who::User(role) => user(role),
            Who::App => client("system/*.cruds"),
        };
        for action in CLINICAL {
            for patient in [OWN, CARE, OTHER] {
                for labelled in [false, true] {
                    for p in purposes {
                        let labels: &[Label] = if labelled {
                            &[Label::MentalHealth]
                        } else {
                            &[]
                        };
                        let purpose = match p {
                            PurposeCase::Treat if who == Who::User(Role::Patient) => {
                                Purpose::PatientRequest
                            }
                            PurposeCase::Treat => Purpose::Treat,
                            PurposeCase::EtreatNoGlass | PurposeCase::EtreatGlass => {
                                Purpose::EmergencyTreat
                            }
                            PurposeCase::Research => Purpose::Research,
                        };
                        let mut r = request(&principal, action, obs(patient, labels), purpose);
                        if p == PurposeCase::EtreatGlass {
                            r.context.break_glass = Some(glass());
                        }
                        let want = expected(who, action, patient, labelled, p);
                        let got = ENGINE.decide(&r);
                        cases += 1;
                        if got.is_ok() {
                            allows += 1;
                        }
                        if got.is_ok() != want {
                            failures.push(format!(
                                "{who:?} {action} {patient} labelled={labelled} {p:?}: \
                                 expected {want}, got {:?}",
                                got.map(|a| a.policies().to_vec()).map_err(|d| d.reason())
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases, 6 * 7 * 3 * 2 * 4);
    // Sanity: the table is not all-deny or all-allow.
    assert!(allows > 50 && allows < cases / 2, "{allows} of {cases}");
}

#[test]
fn non_clinical_actions_by_role() {
    use Action::*;
    let table: [(Role, &[Action]); 5] = [
        (
            Role::Admin,
            &[ManageUsers, ManageClients, ManageKeys, ReadCapabilities],
        ),
        (Role::Auditor, &[ReadAudit, ReadCapabilities]),
        (Role::Researcher, &[ReadCapabilities]),
        (Role::Clinician, &[Transaction, ReadCapabilities]),
        (Role::Patient, &[Transaction, ReadCapabilities]),
    ];
    let non_clinical = [
        Transaction,
        ManageUsers,
        ManageClients,
        ManageKeys,
        ReadAudit,
        ReadCapabilities,
    ];
    for (role, allowed_actions) in table {
        let principal = user(role);
        for action in non_clinical {
            let r = request(
                &principal,
                action,
                ResourceRef::none(),
                role.default_purpose(),
            );
            assert_eq!(
                allowed(&r),
                allowed_actions.contains(&action),
                "{role} {action}"
            );
        }
    }
    // Apps: capabilities, and transactions when they hold a data scope; nothing else.
    let app = client("system/*.r");
    for action in non_clinical {
        let r = request(&app, action, ResourceRef::none(), Purpose::Treat);
        assert_eq!(
            allowed(&r),
            matches!(action, Transaction | ReadCapabilities),
            "app {action}"
        );
    }
    // The register of processing activities: everyone, apps without data scopes included.
    for role in Role::ALL.iter().filter(|r| **r != Role::App) {
        let r = request(
            &user(*role),
            ReadProcessingActivities,
            ResourceRef::none(),
            role.default_purpose(),
        );
        assert!(allowed(&r), "{role}");
    }
    let bare = client("openid");
    let r = request(
        &bare,
        ReadProcessingActivities,
        ResourceRef::none(),
        Purpose::Treat,
    );
    assert!(allowed(&r));
    let r = request(&bare, Transaction, ResourceRef::none(), Purpose::Treat);
    assert_eq!(reason(&r), DenyReason::ScopeTooNarrow);
    let r = request(&bare, ReadCapabilities, ResourceRef::none(), Purpose::Treat);
    assert!(allowed(&r));
}

#[test]
fn admin_auditor_researcher_get_no_clinical_data() {
    for role in [Role::Admin, Role::Auditor, Role::Researcher] {
        let principal = user(role);
        for action in CLINICAL {
            for resource in [
                obs(CARE, &[]),
                ResourceRef::new(rtype("Patient"), Some(id(OTHER)), vec![]),
                ResourceRef::new(rtype("Observation"), None, vec![]),
                ResourceRef::new(rtype("Practitioner"), None, vec![]),
                ResourceRef::default(),
            ] {
                for purpose in Purpose::ALL {
                    let mut r = request(&principal, action, resource.clone(), *purpose);
                    // Even with every fact in their favour.
                    r.context.care_team = true;
                    r.context.label_grants = Label::ALL.to_vec();
                    let d = ENGINE.decide(&r).unwrap_err();
                    let want = if RolePurposes::default().permits(role, *purpose) {
                        DenyReason::NoPermit
                    } else {
                        DenyReason::PurposeNotPermitted
                    };
                    assert_eq!(d.reason(), want, "{role} {action} {purpose}");
                    assert!(!d.break_glass_would_permit());
                }
            }
        }
    }
}

#[test]
fn labels_need_a_grant_for_every_label() {
    let clin = user(Role::Clinician);
    let both = [Label::MentalHealth, Label::Hiv];
    for label in Label::ALL {
        let mut r = request(&clin, Action::Read, obs(CARE, &[*label]), Purpose::Treat);
        let d = ENGINE.decide(&r).unwrap_err();
        assert_eq!(d.reason(), DenyReason::LabelNotGranted, "{label}");
        assert!(d.break_glass_would_permit());
        r.context.label_grants = vec![*label];
        assert!(allowed(&r), "{label} granted");
    }
    let mut r = request(&clin, Action::Update, obs(CARE, &both), Purpose::Treat);
    r.context.label_grants = vec![Label::MentalHealth];
    assert_eq!(reason(&r), DenyReason::LabelNotGranted);
    r.context.label_grants = vec![Label::Hiv, Label::MentalHealth, Label::Restricted];
    assert!(allowed(&r));

    // A grant does not replace the care team.
    let mut r = request(&clin, Action::Read, obs(OTHER, &both), Purpose::Treat);
    r.context.label_grants = both.to_vec();
    assert_eq!(reason(&r), DenyReason::NoPermit);

    // Patients see their own labelled records, not others'.
    let pat = user(Role::Patient);
    assert!(allowed(&request(
        &pat,
        Action::Read,
        obs(OWN, &both),
        Purpose::PatientRequest
    )));
    let r = request(
        &pat,
        Action::Read,
        obs(OTHER, &both),
        Purpose::PatientRequest,
    );
    assert_eq!(reason(&r), DenyReason::LabelNotGranted);

    // Apps need the grant too.
    let app = client("system/*.cruds");
    let mut r = request(
        &app,
        Action::Read,
        obs(OTHER, &[Label::SubstanceUse]),
        Purpose::Treat,
    );
    assert_eq!(reason(&r), DenyReason::LabelNotGranted);
    r.context.label_grants = vec![Label::SubstanceUse];
    assert!(allowed(&r));
}

#[test]
fn break_the_glass() {
    let clin = user(Role::Clinician);
    let mut r = request(&clin, Action::Read, obs(OTHER, &[]), Purpose::Treat);
    let d = ENGINE.decide(&r).unwrap_err();
    assert_eq!(d.reason(), DenyReason::NoPermit);
    assert!(d.break_glass_would_permit());

    // ETREAT alone is not enough; with a claim it is, flagged and time-limited.
    r.context.purpose = Purpose::EmergencyTreat;
    assert!(!allowed(&r));
    r.context.break_glass = Some(glass());
    for action in [Action::Read, Action::Vread, Action::Search, Action::History] {
        r.action = action;
        let proof = ENGINE.decide(&r).unwrap();
        assert!(proof.break_glass(), "{action}");
        assert_eq!(
            proof.break_glass_expires_at(),
            Some(NOW + Duration::hours(1))
        );
        assert_eq!(proof.policies(), ["clinician.break_glass"]);
        assert_eq!(proof.purpose(), Purpose::EmergencyTreat);
    }
    // Labels pass too (an emergency), still flagged.
    r.action = Action::Read;
    r.resource = obs(OTHER, &[Label::Hiv, Label::Restricted]);
    assert!(ENGINE.decide(&r).unwrap().break_glass());
    // Consent does not stop it.
    r.context.consent_permits = false;
    assert!(ENGINE.decide(&r).unwrap().break_glass());

    // Reads only.
    for action in [Action::Create, Action::Update, Action::Delete] {
        r.action = action;
        assert!(!allowed(&r), "{action}");
    }
    // ETREAT is an emergency claim even on the care team: flagged there too (without the
    // claim it is refused, so the access relies on it).
    let mut r = request(&clin, Action::Read, obs(CARE, &[]), Purpose::EmergencyTreat);
    r.context.break_glass = Some(glass());
    let proof = ENGINE.decide(&r).unwrap();
    assert!(proof.break_glass());
    // A care-team clinician for TREAT is never flagged.
    let proof = ENGINE
        .decide(&request(
            &clin,
            Action::Read,
            obs(CARE, &[]),
            Purpose::Treat,
        ))
        .unwrap();
    assert!(!proof.break_glass());
    assert_eq!(proof.break_glass_expires_at(), None);
    // ... and a claim passes a label.
    r.resource = obs(CARE, &[Label::MentalHealth]);
    assert!(ENGINE.decide(&r).unwrap().break_glass());

    // The claim must be in force, and the purpose ETREAT.
    let mut r = request(
        &clin,
        Action::Read,
        obs(OTHER, &[]),
        Purpose::EmergencyTreat,
    );
    r.context.break_glass = Some(glass());
    r.context.now = NOW + Duration::hours(1);
    let d = ENGINE.decide(&r).unwrap_err();
    assert!(d.break_glass_would_permit());
    r.context.now = NOW;
    r.context.purpose = Purpose::Treat;
    assert!(!allowed(&r));

    // Clinicians only.
    for principal in [
        user(Role::Patient),
        user(Role::Admin),
        user(Role::Researcher),
        user(Role::Auditor),
        client("system/*.r"),
    ] {
        let mut r = request(
            &principal,
            Action::Read,
            obs(OTHER, &[Label::Hiv]),
            Purpose::EmergencyTreat,
        );
        r.context.break_glass = Some(glass());
        assert!(!allowed(&r), "{:?}", principal.role());
        r.context.break_glass = None;
        assert!(!ENGINE.decide(&r).unwrap_err().break_glass_would_permit());
    }
}

#[test]
fn deny_reasons() {
    let clin = user(Role::Clinician);
    let r = request(&clin, Action::Read, obs(CARE, &[]), Purpose::Research);
    assert_eq!(reason(&r), DenyReason::PurposeNotPermitted);
    let r = request(&clin, Action::Delete, obs(CARE, &[]), Purpose::Operations);
    assert_eq!(reason(&r), DenyReason::PurposeNotPermitted);
    // A purpose the clinician may assert, which does not allow this (deletes are for TREAT).
    let r = request(
        &clin,
        Action::Delete,
        obs(CARE, &[]),
        Purpose::CoordinationOfCare,
    );
    assert_eq!(reason(&r), DenyReason::PurposeNotAllowed);
    let mut r = request(&clin, Action::Read, obs(CARE, &[]), Purpose::Treat);
    r.context.consent_permits = false;
    assert_eq!(reason(&r), DenyReason::ConsentDenies);
    let r = request(&clin, Action::Read, obs(OTHER, &[]), Purpose::Treat);
    assert_eq!(reason(&r), DenyReason::NoPermit);
    let r = request(
        &user(Role::Patient),
        Action::Update,
        obs(OWN, &[]),
        Purpose::PatientRequest,
    );
    assert_eq!(reason(&r), DenyReason::NoPermit);
    let app = client("patient/Observation.rs").with_launch_patient(id(CARE));
    let r = request(&app, Action::Update, obs(CARE, &[]), Purpose::Treat);
    assert_eq!(reason(&r), DenyReason::ScopeTooNarrow);
    let mut r = request(
        &client("system/*.r"),
        Action::Read,
        obs(OTHER, &[]),
        Purpose::Treat,
    );
    r.context.consent_permits = false;
    assert_eq!(reason(&r), DenyReason::ConsentDenies);
    // The same facts give the same refusal whether or not anything exists: the engine is
    // never told.
    let d = ENGINE.decide(&request(
        &clin,
        Action::Read,
        obs(OTHER, &[]),
        Purpose::Treat,
    ));
    assert_eq!(
        d.unwrap_err().to_string(),
        "access denied: no policy allows this access"
    );
}

#[test]
fn patients_own_compartment() {
    let pat = user(Role::Patient);
    let theirs = RolePurposes::default();
    for purpose in Purpose::ALL {
        if !theirs.permits(Role::Patient, *purpose) {
            let r = request(&pat, Action::Read, obs(OWN, &[]), *purpose);
            assert_eq!(reason(&r), DenyReason::PurposeNotPermitted, "{purpose}");
            continue;
        }
        for t in ResourceType::all() {
            let own = ResourceRef::new(t, Some(id(OWN)), vec![]);
            assert!(
                allowed(&request(&pat, Action::Read, own.clone(), *purpose)),
                "{t}"
            );
            let create = request(&pat, Action::Create, own, *purpose);
            let may_create = matches!(t.as_str(), "Consent" | "Task");
            assert_eq!(allowed(&create), may_create, "create {t}");
            // Updates: their own consents only (withdrawal); never a delete.
            let own = ResourceRef::new(t, Some(id(OWN)), vec![]);
            let update = request(&pat, Action::Update, own.clone(), *purpose);
            assert_eq!(allowed(&update), t.as_str() == "Consent", "update {t}");
            assert!(!allowed(&request(&pat, Action::Delete, own, *purpose)));
            let theirs = ResourceRef::new(t, Some(id(OTHER)), vec![]);
            assert!(
                !allowed(&request(&pat, Action::Create, theirs.clone(), *purpose)),
                "{t}"
            );
            assert!(
                !allowed(&request(&pat, Action::Update, theirs, *purpose)),
                "{t}"
            );
        }
    }
    // Consent of others does not matter for one's own record.
    let mut r = request(&pat, Action::Read, obs(OWN, &[]), Purpose::PatientRequest);
    r.context.consent_permits = false;
    assert!(allowed(&r));
    // A patient user not linked to any record has no compartment.
    let unlinked = PrincipalRef::user("u-new", Role::Patient).unwrap();
    assert!(!allowed(&request(
        &unlinked,
        Action::Read,
        obs(OWN, &[]),
        Purpose::PatientRequest
    )));
}

#[test]
fn directory_resources() {
    let practitioner = ResourceRef::new(rtype("Practitioner"), None, vec![]);
    let org = ResourceRef::new(rtype("Organization"), None, vec![]);
    let clin = user(Role::Clinician);
    let pat = user(Role::Patient);
    // Any purpose each may assert (ETREAT too: the directory holds no patient's data).
    for (clin_purpose, pat_purpose) in [
        (Purpose::Treat, Purpose::PatientRequest),
        (Purpose::CoordinationOfCare, Purpose::FamilyRequest),
        (Purpose::EmergencyTreat, Purpose::SupportNetwork),
    ] {
        let purpose = clin_purpose;
        for action in [Action::Read, Action::Vread, Action::Search, Action::History] {
            assert!(allowed(&request(
                &clin,
                action,
                practitioner.clone(),
                purpose
            )));
            assert!(allowed(&request(&pat, action, org.clone(), pat_purpose)));
        }
        for action in [Action::Create, Action::Update] {
            assert!(allowed(&request(&clin, action, org.clone(), purpose)));
            assert!(!allowed(&request(&pat, action, org.clone(), pat_purpose)));
        }
        assert!(!allowed(&request(
            &clin,
            Action::Delete,
            org.clone(),
            purpose
        )));
    }
    let app = client("patient/*.r").with_launch_patient(id(CARE));
    assert!(allowed(&request(
        &app,
        Action::Read,
        practitioner.clone(),
        Purpose::Treat
    )));
    assert!(!allowed(&request(
        &app,
        Action::Search,
        practitioner,
        Purpose::Treat
    )));
}

#[test]
fn queries_and_search_filtering() {
    let clin = user(Role::Clinician);
    let query = ResourceRef::new(rtype("Observation"), None, vec![]);
    assert!(allowed(&request(
        &clin,
        Action::Search,
        query.clone(),
        Purpose::Treat
    )));
    assert!(allowed(&request(
        &clin,
        Action::History,
        query.clone(),
        Purpose::Treat
    )));
    assert!(!allowed(&request(
        &clin,
        Action::Read,
        query.clone(),
        Purpose::Treat
    )));
    assert_eq!(
        reason(&request(
            &clin,
            Action::Search,
            query.clone(),
            Purpose::Research
        )),
        DenyReason::PurposeNotPermitted
    );
    let all_types = ResourceRef::default();
    assert!(allowed(&request(
        &clin,
        Action::Search,
        all_types,
        Purpose::Treat
    )));
    assert!(allowed(&request(
        &user(Role::Patient),
        Action::Search,
        query.clone(),
        Purpose::PatientRequest
    )));
    assert!(!allowed(&request(
        &user(Role::Researcher),
        Action::Search,
        query.clone(),
        Purpose::Research
    )));
    // patient/ scopes only reach the launch patient: a query across patients is refused.
    let app = client("patient/Observation.rs").with_launch_patient(id(CARE));
    assert!(!allowed(&request(
        &app,
        Action::Search,
        query,
        Purpose::Treat
    )));

    // Each hit is decided on its own facts.
    let hits = [
        (CARE, vec![]),
        (OTHER, vec![]),
        (CARE, vec![Label::Hiv]),
        (OWN, vec![]),
        (CARE, vec![]),
    ];
    let kept = ENGINE.filter(hits.iter().enumerate(), |(_, (patient, labels))| {
        request(&clin, Action::Search, obs(patient, labels), Purpose::Treat)
    });
    let kept_idx: Vec<usize> = kept.iter().map(|((i, _), _)| *i).collect();
    assert_eq!(kept_idx, [0, 4]);
    assert!(
        kept.iter()
            .all(|(_, proof)| proof.patient() == Some(&id(CARE)))
    );

    let pat = user(Role::Patient);
    let kept = ENGINE.filter(hits.iter(), |(patient, labels)| {
        request(
            &pat,
            Action::Search,
            obs(patient, labels),
            Purpose::PatientRequest,
        )
    });
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1.patient(), Some(&id(OWN)));
}

#[test]
fn app_scopes() {
    // patient/Observation.rs: Observation of the launch patient, read and search only.
    let app = client("launch/patient openid patient/Observation.rs").with_launch_patient(id(CARE));
    for action in CLINICAL {
        let r = request(&app, action, obs(CARE, &[]), Purpose::Treat);
        assert_eq!(allowed(&r), action.is_read(), "{action}");
        let r = request(&app, action, obs(OTHER, &[]), Purpose::Treat);
        assert_eq!(reason(&r), DenyReason::ScopeTooNarrow, "{action}");
        let cond = ResourceRef::new(rtype("Condition"), Some(id(CARE)), vec![]);
        assert_eq!(
            reason(&request(&app, action, cond, Purpose::Treat)),
            DenyReason::ScopeTooNarrow
        );
    }
    let no_launch = client("patient/Observation.rs");
    assert!(!allowed(&request(
        &no_launch,
        Action::Read,
        obs(CARE, &[]),
        Purpose::Treat
    )));

    // system/*.r: read any patient, any type; no search, no writes.
    let sys = client("system/*.r");
    for patient in [OWN, CARE, OTHER] {
        for action in CLINICAL {
            let r = request(&sys, action, obs(patient, &[]), Purpose::Treat);
            let want = matches!(action, Action::Read | Action::Vread | Action::History);
            assert_eq!(allowed(&r), want, "{action} {patient}");
        }
    }

    // user/*.cruds on an app without a user: nothing.
    let lone = client("user/*.cruds");
    let r = request(&lone, Action::Read, obs(CARE, &[]), Purpose::Treat);
    assert_eq!(reason(&r), DenyReason::ScopeTooNarrow);

    // user/*.cruds through a clinician's token: exactly the clinician's own access.
    let clin = user(Role::Clinician);
    let delegated = clin
        .clone()
        .with_scopes(scopes("openid fhirUser user/*.cruds"));
    for action in CLINICAL {
        for patient in [OWN, CARE, OTHER] {
            for purpose in [Purpose::Treat, Purpose::Research] {
                let a = request(&clin, action, obs(patient, &[]), purpose);
                let b = request(&delegated, action, obs(patient, &[]), purpose);
                assert_eq!(allowed(&a), allowed(&b), "{action} {patient} {purpose}");
            }
        }
    }
    // user/Observation.rs narrows it.
    let narrow = clin.with_scopes(scopes("user/Observation.rs"));
    assert!(allowed(&request(
        &narrow,
        Action::Read,
        obs(CARE, &[]),
        Purpose::Treat
    )));
    assert!(allowed(&request(
        &narrow,
        Action::Search,
        obs(CARE, &[]),
        Purpose::Treat
    )));
    assert_eq!(
        reason(&request(
            &narrow,
            Action::Update,
            obs(CARE, &[]),
            Purpose::Treat
        )),
        DenyReason::ScopeTooNarrow
    );
    let cond = ResourceRef::new(rtype("Condition"), Some(id(CARE)), vec![]);
    assert_eq!(
        reason(&request(&narrow, Action::Read, cond, Purpose::Treat)),
        DenyReason::ScopeTooNarrow
    );
    assert!(!allowed(&request(
        &narrow,
        Action::Read,
        obs(OTHER, &[]),
        Purpose::Treat
    )));

    // A patient's app: patient/*.rs reaches their own record without naming it.
    let pat_app = user(Role::Patient).with_scopes(scopes("patient/*.rs"));
    assert!(allowed(&request(
        &pat_app,
        Action::Read,
        obs(OWN, &[]),
        Purpose::PatientRequest
    )));
    let consent = ResourceRef::new(rtype("Consent"), Some(id(OWN)), vec![]);
    assert_eq!(
        reason(&request(
            &pat_app,
            Action::Create,
            consent,
            Purpose::PatientRequest
        )),
        DenyReason::ScopeTooNarrow
    );
}

#[test]
fn authorized_carries_the_decision_and_debug_leaks_nothing() {
    let clin = user(Role::Clinician);
    let mut r = request(
        &clin,
        Action::Read,
        obs(OTHER, &[]),
        Purpose::EmergencyTreat,
    );
    r.context.break_glass = Some(glass());
    let proof = ENGINE.decide(&r).unwrap();
    assert_eq!(proof.principal_id(), "u-clinician");
    assert_eq!(proof.role(), Role::Clinician);
    assert_eq!(proof.action(), Action::Read);
    assert_eq!(proof.resource_type(), Some(rtype("Observation")));
    assert_eq!(proof.patient(), Some(&id(OTHER)));
    assert_eq!(proof.decided_at(), NOW);
    assert!(proof.covers(Action::Read, Some(rtype("Observation")), Some(&id(OTHER))));
    assert!(!proof.covers(Action::Update, Some(rtype("Observation")), Some(&id(OTHER))));
    assert!(!proof.covers(Action::Read, Some(rtype("Observation")), Some(&id(CARE))));
    let debug = format!("{proof:?}");
    assert!(
        debug.contains("u-clinician") && debug.contains("clinician.break_glass"),
        "{debug}"
    );
    assert!(!debug.contains(OTHER), "{debug}");
    assert!(!debug.contains("unconscious"), "{debug}");
    let denied = format!(
        "{:?}",
        ENGINE
            .decide(&request(
                &clin,
                Action::Read,
                obs(OTHER, &[]),
                Purpose::Treat
            ))
            .unwrap_err()
    );
    assert!(!denied.contains(OTHER), "{denied}");

    // Non-clinical proofs name no resource.
    let r = request(
        &user(Role::Admin),
        Action::ManageKeys,
        obs(OTHER, &[]),
        Purpose::SystemAdministration,
    );
    let proof = ENGINE.decide(&r).unwrap();
    assert_eq!(proof.patient(), None);
    assert_eq!(proof.resource_type(), None);
    assert_eq!(proof.policies(), ["admin.manage"]);
}

// ---------------------------------------------------------------------------------------
// Operators' policies.

const ADMIN_GRANT: &str = r#"
// Admins on the care team may read, for operations.
@id("admin-read-for-operations")
permit (
  principal is PhiVault::User,
  action in PhiVault::Action::"clinical_read",
  resource is PhiVault::Resource
)
when {
  principal.role == "admin" &&
  context.care_team &&
  context.purpose == "HOPERAT"
};

@id("no-marketing")
forbid (principal, action in PhiVault::Action::"clinical", resource)
when { context.purpose == "HMARKT" };
"#;

#[test]
fn a_valid_extra_policy_loads_and_applies() {
    // The purposes the operator's policies speak of are configured for those roles too.
    let mut purposes = RolePurposes::default();
    purposes
        .set(
            Role::Admin,
            vec![Purpose::SystemAdministration, Purpose::Operations],
        )
        .unwrap();
    purposes
        .set(Role::Clinician, vec![Purpose::Treat, Purpose::Marketing])
        .unwrap();
    let mut engine = PolicyEngine::with_extra_policies(ADMIN_GRANT).unwrap();
    engine.set_role_purposes(purposes.clone());
    assert_eq!(engine.extra_policy_count(), 2);
    let admin = user(Role::Admin);
    let mut r = request(&admin, Action::Read, obs(CARE, &[]), Purpose::Operations);
    r.context.care_team = true;
    let proof = engine.decide(&r).unwrap();
    assert_eq!(proof.policies(), ["extra.admin-read-for-operations"]);
    assert!(ENGINE.decide(&r).is_err());
    // It cannot pass a default forbid.
    r.resource = obs(CARE, &[Label::Hiv]);
    assert_eq!(
        engine.decide(&r).unwrap_err().reason(),
        DenyReason::LabelNotGranted
    );
    // An operator forbid is reported as such.
    let clin = user(Role::Clinician);
    let r = request(&clin, Action::Read, obs(CARE, &[]), Purpose::Marketing);
    assert_eq!(
        engine.decide(&r).unwrap_err().reason(),
        DenyReason::Forbidden
    );
    // Policies without @id get Cedar's names, prefixed.
    let mut engine = PolicyEngine::with_extra_policies(
        r#"permit (principal, action == PhiVault::Action::"read_audit", resource) when { principal.role == "admin" };"#,
    )
    .unwrap();
    engine.set_role_purposes(purposes);
    assert_eq!(
        engine
            .decide(&request(
                &admin,
                Action::ReadAudit,
                ResourceRef::none(),
                Purpose::Operations
            ))
            .unwrap()
            .policies(),
        ["extra.policy0"]
    );
}

fn problems(text: &str) -> String {
    match PolicyEngine::with_extra_policies(text) {
        Err(e @ (PolicyError::Invalid(_) | PolicyError::Parse(_))) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn invalid_extra_policies_are_refused_with_names() {
    let unknown_attr = problems(
        r#"@id("by-ward") permit (principal, action == PhiVault::Action::"read", resource)
           when { principal.ward == "ICU" };"#,
    );
    assert!(
        unknown_attr.contains("extra.by-ward") && unknown_attr.contains("ward"),
        "{unknown_attr}"
    );

    let unknown_context = problems(
        r#"@id("ctx") permit (principal, action == PhiVault::Action::"read", resource)
           when { context.emergency };"#,
    );
    assert!(
        unknown_context.contains("extra.ctx") && unknown_context.contains("emergency"),
        "{unknown_context}"
    );

    let unknown_action = problems(
        r#"@id("export-all") permit (principal, action == PhiVault::Action::"export_identified", resource);"#,
    );
    assert!(
        unknown_action.contains("extra.export-all") && unknown_action.contains("export_identified"),
        "{unknown_action}"
    );

    let wrong_type = problems(
        r#"@id("typo") permit (principal, action == PhiVault::Action::"read", resource)
           when { context.care_team == "yes" };"#,
    );
    assert!(wrong_type.contains("extra.typo"), "{wrong_type}");

    let two = problems(
        r#"@id("a") permit (principal, action == PhiVault::Action::"read", resource) when { principal.ward == "x" };
           @id("b") permit (principal, action == PhiVault::Action::"nope", resource);"#,
    );
    // One problem per principal type the attribute is missing on, and per unknown action.
    assert!(two.starts_with("4 problem(s)"), "{two}");
    assert!(two.contains("policy `extra.a`: attribute `ward`"), "{two}");
    assert!(
        two.contains("policy `extra.b`: unrecognized action"),
        "{two}"
    );

    let parse = problems("permit (principal, action, resource) when { ");
    assert!(parse.contains("do not parse"), "{parse}");

    let duplicate = problems(
        r#"@id("x") permit (principal, action == PhiVault::Action::"read_audit", resource);
           @id("x") permit (principal, action == PhiVault::Action::"read_audit", resource);"#,
    );
    assert!(
        duplicate.contains("extra.x") && duplicate.contains("same id"),
        "{duplicate}"
    );

    let template = problems(
        r#"@id("t") permit (principal == ?principal, action == PhiVault::Action::"read", resource);"#,
    );
    assert!(
        template.contains("templates are not supported"),
        "{template}"
    );
}

#[test]
fn check_file() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let good = dir.join("phivault-policy-good.cedar");
    std::fs::write(&good, ADMIN_GRANT).unwrap();
    assert_eq!(PolicyEngine::check_file(&good).unwrap(), 2);
    let empty = dir.join("phivault-policy-empty.cedar");
    std::fs::write(&empty, "// nothing yet\n").unwrap();
    assert_eq!(PolicyEngine::check_file(&empty).unwrap(), 0);
    let bad = dir.join("phivault-policy-bad.cedar");
    std::fs::write(
        &bad,
        r#"@id("b") permit (principal, action == PhiVault::Action::"fly", resource);"#,
    )
    .unwrap();
    let err = PolicyEngine::check_file(&bad).unwrap_err().to_string();
    assert!(err.contains("extra.b") && err.contains("fly"), "{err}");
    let missing = dir.join("phivault-policy-missing.cedar");
    assert!(matches!(
        PolicyEngine::check_file(&missing),
        Err(PolicyError::Io { .. })
    ));
}

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
