//! The console pages' templates: the frame every page keeps (one heading, a label for every
//! field, no script), escaping, the forms and fields the pages promise, and the helpers.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::web::Pages;

const EVIL: &str = "<script>alert(1)</script>\"'&";

fn pages() -> Pages {
    Pages::new().unwrap()
}

/// `value` as a template value. The workspace's serde_json keeps numbers as text
/// (`arbitrary_precision`), which the engine would see as maps: the pages' own values are
/// typed structs, and these tests' JSON is turned into the engine's values here.
fn engine_value(value: &Value) -> minijinja::Value {
    match value {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => minijinja::Value::from(i),
            None => minijinja::Value::from(n.as_f64().unwrap()),
        },
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(items) => {
            minijinja::Value::from(items.iter().map(engine_value).collect::<Vec<_>>())
        }
        Value::Object(map) => minijinja::Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), engine_value(v)))
                .collect::<BTreeMap<String, minijinja::Value>>(),
        ),
    }
}

/// `template` rendered with `values`, `csrf` and `active`.
fn html(template: &str, mut values: Value) -> String {
    values["csrf"] = json!("csrf-token-value");
    values["active"] = json!("users");
    pages()
        .render_template(template, engine_value(&values))
        .unwrap()
}

fn users(can_change: bool, created: bool) -> Value {
    json!({
        "can_change": can_change,
        "users": [
            {"user_id": "u-1", "username": EVIL, "role": "clinician", "totp": true,
             "created": "2026-01-01 10:00 UTC", "disabled": null, "locked_until": null,
             "linked": "Practitioner/pr-1", "is_self": false},
            {"user_id": "u-2", "username": "me", "role": "admin", "totp": true,
             "created": "2026-01-01 10:00 UTC", "disabled": null, "locked_until": null,
             "linked": null, "is_self": true},
            {"user_id": "u-3", "username": "gone", "role": "patient", "totp": false,
             "created": "2026-01-01 10:00 UTC", "disabled": "2026-01-02 10:00 UTC",
             "locked_until": null, "linked": "Patient/p-1", "is_self": false},
        ],
        "roles": [{"value": "clinician", "label": "Clinician"}, {"value": "admin", "label": "Administrator"}],
        "notice": null,
        "error": if created { Value::Null } else { json!(EVIL) },
        "created": if created {
            json!({"username": EVIL, "role": "clinician", "password": "Pw0rdGenerated1234567890",
                   "totp_at_first_sign_in": true})
        } else { Value::Null },
        "form_username": EVIL,
        "form_role": "admin",
    })
}

fn clients(can_change: bool, issued: bool) -> Value {
    json!({
        "can_change": can_change,
        "clients": [
            {"client_id": "pvcl_1", "name": EVIL, "client_type": "confidential-secret",
             "scopes": ["system/*.rs"], "redirect_uris": [], "launch_patient": null,
             "created": "2026-01-01 10:00 UTC", "disabled": null, "has_secret": true},
            {"client_id": "pvcl_2", "name": "Chart", "client_type": "public",
             "scopes": ["launch/patient", "patient/*.rs"], "redirect_uris": ["https://app.example/cb"],
             "launch_patient": "Patient/p-1", "created": "2026-01-01 10:00 UTC", "disabled": null,
             "has_secret": false},
            {"client_id": "pvcl_3", "name": "Old", "client_type": "public",
             "scopes": ["openid"], "redirect_uris": ["https://old.example/cb"],
             "launch_patient": null, "created": "2026-01-01 10:00 UTC",
             "disabled": "2026-01-02 10:00 UTC", "has_secret": false},
        ],
        "types": [{"value": "public", "label": "Public"}, {"value": "confidential-jwt", "label": "Keys"}],
        "notice": "done",
        "error": null,
        "issued": if issued {
            json!({"client_id": "pvcl_1", "name": EVIL, "secret": "pvs_secretsecret", "rotated": true})
        } else { Value::Null },
        "form": {"name": EVIL, "client_type": "public", "scope": "", "redirect_uri": "",
                 "jwks": EVIL, "launch_patient": ""},
    })
}

fn break_glass(can_change: bool) -> Value {
    let event = |id: &str, review: Value| {
        json!({"id": id, "claimant": EVIL, "patient": "Patient/p-1", "reason": EVIL,
               "started": "2026-01-01 10:00 UTC", "expires": "2026-01-01 11:00 UTC",
               "active": false, "review": review})
    };
    json!({
        "can_change": can_change,
        "to_review": [event("bg-1", Value::Null), event("bg-2", Value::Null)],
        "reviewed": [event("bg-3", json!({"reviewed": "2026-01-02 10:00 UTC", "reviewer": "me", "note": EVIL}))],
        "max_note_chars": 2000,
        "notice": null,
        "error": "Not marked reviewed.",
        "draft": {"id": "bg-2", "note": EVIL},
    })
}

fn alerts() -> Value {
    json!({
        "alerts": [{"id": "r-1", "seq": 12, "time": "2026-01-01T10:00:00Z", "rule": EVIL,
                    "kind": "distinct_patients", "subject": "u-1", "subject_kind": "user",
                    "subject_name": EVIL, "count": 30, "threshold": 20,
                    "from": "2026-01-01 09:00 UTC", "to": "2026-01-01 10:00 UTC",
                    "first_seq": 3, "last_seq": 12, "delivered": false}],
        "periods": [{"days": 7, "selected": true}, {"days": 1, "selected": false}],
        "days": 7,
        "limit": 500,
    })
}

fn breach(report: bool) -> Value {
    json!({
        "form": {"principal": EVIL, "network": "", "from": "2026-01-01T00:00", "to": "2026-01-08T00:00"},
        "error": if report { Value::Null } else { json!("Name a person or app.") },
        "report": if report {
            json!({"about": format!("user {EVIL}"), "from": "a", "to": "b", "requests": 3,
                   "refused": 1, "actors": [EVIL],
                   "patients": [{"patient": "Patient/p-1", "accesses": 3, "kinds": "read 3",
                                 "resource_types": "Observation 3", "classes": "–",
                                 "first": "a", "last": "b"}],
                   "total_patients": 2})
        } else { Value::Null },
    })
}

fn all_pages() -> Vec<(String, String)> {
    let problem = json!({"title": EVIL, "message": EVIL, "back": "/admin/console/users"});
    let mut out = Vec::new();
    for change in [true, false] {
        for flag in [true, false] {
            out.push((
                format!("users {change} {flag}"),
                html("console/users.html", users(change, flag)),
            ));
            out.push((
                format!("clients {change} {flag}"),
                html("console/clients.html", clients(change, flag)),
            ));
        }
        out.push((
            format!("break-glass {change}"),
            html("console/break_glass.html", break_glass(change)),
        ));
    }
    out.push(("alerts".to_owned(), html("console/alerts.html", alerts())));
    for report in [true, false] {
        out.push((
            format!("breach {report}"),
            html("console/breach.html", breach(report)),
        ));
    }
    out.push(("problem".to_owned(), html("console/problem.html", problem)));
    out
}

/// The `id` attributes of every tag named `tag` in `html`, except hidden inputs.
fn field_ids(html: &str, tag: &str) -> Vec<String> {
    html.split(&format!("<{tag}"))
        .skip(1)
        .filter_map(|t| t.split('>').next())
        .filter(|t| !t.contains("type=\"hidden\""))
        .map(|t| {
            t.split("id=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_else(|| panic!("a {tag} without id: {t}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn pages_have_the_accessible_frame_and_escape_every_value() {
    for (name, html) in all_pages() {
        assert!(html.starts_with("<!doctype html>"), "{name}");
        assert_eq!(html.matches("<h1").count(), 1, "{name}");
        assert!(
            html.contains("<main id=\"main\" class=\"page wide\">"),
            "{name}"
        );
        assert!(
            html.contains("aria-label=\"Console\""),
            "{name}: the navigation"
        );
        assert!(
            html.contains("value=\"csrf-token-value\""),
            "{name}: sign-out form"
        );
        for tag in ["input", "select", "textarea"] {
            for id in field_ids(&html, tag) {
                assert!(
                    html.contains(&format!("<label for=\"{id}\"")),
                    "{name}: no label for {id}"
                );
            }
        }
        let lower = html.to_ascii_lowercase();
        assert!(
            !lower.contains("<script"),
            "{name}: unescaped value or script"
        );
        assert!(!lower.contains("style="), "{name}");
        // Every table has a caption or is headed by an <h2> of its section.
        for table in html.split("<table").skip(1) {
            let before = &html[..html.len() - table.len()];
            let headed = before
                .rfind("<h2")
                .is_some_and(|h| before.rfind("</table>").is_none_or(|t| h > t));
            assert!(
                table.contains("<caption>") || headed,
                "{name}: a table without a title"
            );
        }
    }
}

#[test]
fn templates_hold_no_script_and_no_inline_style() {
    for (name, source) in TEMPLATES {
        let lower = source.to_ascii_lowercase();
        for banned in [
            "<script",
            "<style",
            "style=",
            "javascript:",
            "<iframe",
            "|safe",
            "| safe",
        ] {
            assert!(!lower.contains(banned), "{name}: {banned}");
        }
    }
}

#[test]
fn the_users_page_has_the_add_and_disable_forms_for_administrators_only() {
    let page = html("console/users.html", users(true, true));
    assert!(page.contains("action=\"/admin/console/users\""));
    assert!(page.contains("name=\"username\"") && page.contains("name=\"role\""));
    // A disable form for each enabled account but one's own.
    assert_eq!(
        page.matches("action=\"/admin/console/users/disable\"")
            .count(),
        1
    );
    assert!(page.contains("name=\"user_id\" value=\"u-1\""));
    assert!(page.contains(">Disable</button>"));
    // The generated password, shown once, and the refused add form filled in again.
    assert!(page.contains("Pw0rdGenerated1234567890"));
    let page = html("console/users.html", users(true, false));
    assert!(
        page.contains("value=\"&lt;script&gt;"),
        "the typed username, escaped"
    );
    assert!(page.contains("<option value=\"admin\" selected>"));

    let auditor = html("console/users.html", users(false, false));
    assert!(!auditor.contains("method=\"post\" action=\"/admin/console/users"));
    assert!(auditor.contains("Only administrators"));
}

#[test]
fn the_apps_page_has_a_form_per_enabled_app_and_the_add_form() {
    let page = html("console/clients.html", clients(true, true));
    // Enabled apps only: pvcl_1 (with a secret) and pvcl_2.
    assert_eq!(
        page.matches("action=\"/admin/console/clients/disable\"")
            .count(),
        2
    );
    assert!(page.contains("name=\"client_id\" value=\"pvcl_1\""));
    assert!(page.contains("name=\"client_id\" value=\"pvcl_2\""));
    assert!(!page.contains("value=\"pvcl_3\""));
    assert_eq!(page.matches(">Rotate secret</button>").count(), 1);
    assert!(page.contains("formaction=\"/admin/console/clients/rotate\""));
    for field in [
        "name",
        "type",
        "scope",
        "redirect_uri",
        "jwks",
        "launch_patient",
    ] {
        assert!(page.contains(&format!("name=\"{field}\"")), "{field}");
    }
    assert!(page.contains("pvs_secretsecret"));
    let auditor = html("console/clients.html", clients(false, false));
    assert!(!auditor.contains("action=\"/admin/console/clients"));
}

#[test]
fn the_break_glass_page_has_a_review_form_per_unreviewed_access() {
    let page = html("console/break_glass.html", break_glass(true));
    assert_eq!(
        page.matches("action=\"/admin/console/break-glass/review\"")
            .count(),
        2
    );
    assert!(page.contains("name=\"id\" value=\"bg-1\""));
    assert!(page.contains("name=\"id\" value=\"bg-2\""));
    assert!(!page.contains("name=\"id\" value=\"bg-3\""));
    assert_eq!(page.matches(">Review note</label>").count(), 2);
    assert_eq!(page.matches(">Mark reviewed</button>").count(), 2);
    assert!(page.contains("maxlength=\"2000\""));
    // The refused note is kept in its own event's field only, escaped.
    assert_eq!(page.matches("&#x27;&amp;</textarea>").count(), 1);
    assert!(page.contains("maxlength=\"2000\" required aria-describedby=\"form-error\">"));
    assert!(page.contains(">reviewed</span>"));
    let auditor = html("console/break_glass.html", break_glass(false));
    assert!(!auditor.contains("Mark reviewed"));
}

#[test]
fn done_words_are_read_back_only_when_known() {
    assert_eq!(done_notice(None), None);
    assert_eq!(done_notice(Some("done=nonsense")), None);
    assert_eq!(done_notice(Some("done=%3Cscript%3E")), None);
    assert!(done_notice(Some("x=1&done=reviewed")).is_some_and(|t| t.contains("reviewed")));
    for (word, _) in DONE {
        assert!(
            done_notice(Some(&format!("done={word}"))).is_some(),
            "{word}"
        );
    }
    assert_eq!(
        done_path(USERS, "user-disabled"),
        "/admin/console/users?done=user-disabled"
    );
}

#[test]
fn times_are_shown_in_utc_to_the_minute() {
    assert_eq!(when(0), "1970-01-01 00:00 UTC");
    assert_eq!(when(1_700_000_000), "2023-11-14 22:13 UTC");
    assert_eq!(when_ms(1_700_000_000_999), "2023-11-14 22:13 UTC");
    assert_eq!(when_ms(i64::MAX), i64::MAX.to_string());
}
