//! Operator policies added to the defaults: a valid one loads and applies, invalid ones are
//! refused with their names, `policy check` of a file.

use super::*;

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
