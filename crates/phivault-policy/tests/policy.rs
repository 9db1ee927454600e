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

#[path = "policy/extra_policies.rs"]
mod extra_policies;
#[path = "policy/purposes_and_consent.rs"]
mod purposes_and_consent;
#[path = "policy/record_actions.rs"]
mod record_actions;

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
