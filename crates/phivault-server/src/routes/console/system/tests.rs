//! The system pages' templates render with the values their handlers give (every value
//! defined, escaped, no script or inline style, one `<h1>`), and the settings read plainly.

use phivault_fhir::ResourceType;
use serde::Serialize;

use super::backups::{BackupRow, BackupsPage};
use super::chain::{AuditPage, CheckpointView};
use super::jobs::{RotationView, VerificationView};
use super::keys::{KekLine, KeysPage, KindLine};
use super::*;
use crate::web::Pages;

fn render<C: Serialize>(name: &str, context: C) -> String {
    let values = PageContext {
        csrf: "tok<en>",
        active: "home",
        context,
    };
    Pages::new()
        .unwrap()
        .render_template(name, &values)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn verification(result: Option<&'static str>) -> VerificationView {
    VerificationView {
        started: "2026-03-01 14:05:09 UTC".to_owned(),
        started_by: "<b>alice</b>".to_owned(),
        running: result.is_none(),
        checked: 1234,
        total: 2000,
        percent: 61,
        result,
        checkpoints: 3,
        root: (result == Some("verified")).then(|| "ab".repeat(32)),
        first_bad: (result == Some("failed")).then_some(17),
        problem: (result == Some("failed"))
            .then(|| "audit entry 17 was altered (its hash does not match)".to_owned()),
        finished: result.map(|_| "2026-03-01 14:06:00 UTC".to_owned()),
    }
}

fn rotation(result: Option<&'static str>) -> RotationView {
    RotationView {
        started: "2026-03-01 14:05:09 UTC".to_owned(),
        started_by: "alice".to_owned(),
        running: result.is_none(),
        kek_id: Some("kek-2".to_owned()),
        rewrapped: 40,
        pending_at_start: 100,
        percent: 40,
        result,
        resumed: false,
        retired: vec!["kek-1".to_owned()],
        residue_left: result == Some("finished"),
        unaudited: false,
        finished: result.map(|_| "2026-03-01 14:06:00 UTC".to_owned()),
    }
}

fn home_context(
    verification: Option<VerificationView>,
    rotation: Option<RotationView>,
) -> Overview {
    Overview {
        users: 3,
        clients: 2,
        clients_enabled: 1,
        alerts_day: 1000,
        alerts_capped: true,
        break_glass_to_review: 4,
        checkpoint: Some(CheckpointBrief {
            size: 90,
            time: "2026-03-01 14:00:00 UTC".to_owned(),
        }),
        entries: 100,
        keks: 1,
        keys_pending: 0,
        verification,
        rotation,
    }
}

fn audit_context(verification: Option<VerificationView>, checkpoint: bool) -> AuditPage {
    AuditPage {
        checkpoint: checkpoint.then(|| CheckpointView {
            size: 90,
            time: "2026-03-01 14:00:00 UTC".to_owned(),
            root: "cd".repeat(32),
            last_entry_hash: "ef".repeat(32),
            signature_ok: true,
        }),
        entries: 100,
        unsealed: 10,
        public_key: "01".repeat(32),
        verification,
        wait_secs: 15,
    }
}

fn keys_context(rotation: Option<RotationView>, can_rotate: bool) -> KeysPage {
    let kek = |id: &str, active: bool, data_keys: u64| KekLine {
        id: id.to_owned(),
        created: "2025-01-01 00:00:00 UTC".to_owned(),
        age: "1 year".to_owned(),
        active,
        data_keys,
    };
    KeysPage {
        keks: vec![kek("kek-1", false, 60), kek("kek-2", true, 40)],
        kinds: vec![KindLine {
            kind: "Search indexes".to_owned(),
            count: 1,
        }],
        pending: 60,
        residue: true,
        rotation,
        can_rotate,
    }
}

fn backups_context(found: bool) -> BackupsPage {
    let row = |what, when: &str, ok, seq| BackupRow {
        what,
        when: when.to_owned(),
        by: "root (command line)".to_owned(),
        outcome: if ok { "succeeded" } else { "failed" },
        ok,
        seq,
    };
    let good = row("Backup", "2026-03-01 02:00:00 UTC", true, 42);
    let bad = row("Restore", "2026-02-01 02:00:00 UTC", false, 12);
    BackupsPage {
        last_backup: found.then(|| good.clone()),
        last_check: None,
        last_restore: found.then(|| bad.clone()),
        rows: if found { vec![good, bad] } else { Vec::new() },
        scanned: 20_000,
        complete: !found,
    }
}

fn settings_sample() -> Settings {
    let rules = [
        RetentionRule {
            rtype: ResourceType::parse("Observation").unwrap(),
            max_age_secs: 10 * 365 * 86_400,
        },
        RetentionRule {
            rtype: ResourceType::parse("Encounter").unwrap(),
            max_age_secs: 30 * 86_400,
        },
    ];
    settings_context(&rules, &ConsentDefaults::default())
}

/// A rendered page and its template's name.
fn page<C: Serialize>(name: &str, context: C) -> (String, String) {
    (name.to_owned(), render(name, context))
}

/// Every page this part serves, in each of its states.
fn all_pages() -> Vec<(String, String)> {
    let mut pages = vec![page("console/home.html", home_context(None, None))];
    for r in [None, Some("verified"), Some("failed"), Some("unfinished")] {
        let v = || Some(verification(r));
        pages.push(page("console/home.html", home_context(v(), None)));
        pages.push(page("console/audit.html", audit_context(v(), true)));
    }
    for r in [None, Some("finished"), Some("failed"), Some("unfinished")] {
        let rot = || Some(rotation(r));
        pages.push(page("console/home.html", home_context(None, rot())));
        pages.push(page("console/keys.html", keys_context(rot(), true)));
    }
    let no_rules = settings_context(&[], &ConsentDefaults::default());
    pages.extend([
        page("console/audit.html", audit_context(None, false)),
        page("console/keys.html", keys_context(None, true)),
        page("console/keys.html", keys_context(None, false)),
        page("console/backups.html", backups_context(true)),
        page("console/backups.html", backups_context(false)),
        page("console/settings.html", settings_sample()),
        page("console/settings.html", no_rules),
    ]);
    pages
}

#[test]
fn templates_are_listed_and_hold_no_script_or_inline_style() {
    assert_eq!(TEMPLATES.len(), 5);
    for (name, source) in TEMPLATES {
        assert!(
            name.starts_with("console/") && name.ends_with(".html"),
            "{name}"
        );
        let lower = source.to_ascii_lowercase();
        for banned in [
            "<script",
            "<style",
            "style=",
            "javascript:",
            "<iframe",
            "|safe",
        ] {
            assert!(!lower.contains(banned), "{name}: {banned}");
        }
        assert!(
            source.contains("{% extends \"console/base.html\" %}"),
            "{name}"
        );
    }
}

#[test]
fn every_page_renders_with_one_heading_labels_and_the_nav() {
    for (name, html) in all_pages() {
        assert_eq!(html.matches("<h1").count(), 1, "{name}");
        assert!(
            html.contains("action=\"/signout\""),
            "{name}: the nav's sign-out"
        );
        assert!(
            html.contains("aria-current=\"page\""),
            "{name}: the active item"
        );
        for tag in html.split("<input").skip(1) {
            let tag = tag.split('>').next().unwrap();
            assert!(
                tag.contains("type=\"hidden\""),
                "{name}: a visible input: {tag}"
            );
        }
        for tag in html.split("<progress").skip(1) {
            let id = tag
                .split("id=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert!(
                html.contains(&format!("<label for=\"{id}\"")),
                "{name}: {id}"
            );
        }
        // Every form posts the CSRF token, escaped.
        for form in html.split("<form").skip(1) {
            let form = form.split("</form>").next().unwrap();
            assert!(
                form.contains("name=\"csrf\" value=\"tok&lt;en&gt;\""),
                "{name}: {form}"
            );
        }
        for table in html.split("<table").skip(1) {
            assert!(
                table.contains("<caption>"),
                "{name}: a table without caption"
            );
        }
    }
}

#[test]
fn the_verify_button_comes_before_the_result_and_its_count() {
    let html = render(
        "console/audit.html",
        audit_context(Some(verification(Some("verified"))), true),
    );
    let button = html.find("Verify now").unwrap();
    let result = html.find(">verified<").unwrap();
    assert!(button < result);
    assert!(html[result..].contains("1234 entries checked"));
    assert!(html.contains("by &lt;b&gt;alice&lt;"), "escaped");
    assert!(!html.contains("<b>alice"));

    let html = render(
        "console/audit.html",
        audit_context(Some(verification(Some("failed"))), true),
    );
    let result = html.find("failed").unwrap();
    assert!(html.find("Verify now").unwrap() < result);
    assert!(html[result..].contains("1234 entries checked"));
    assert!(html.contains("First bad entry: 17."));
    assert!(!html.contains(">verified<"));

    // Before any check, neither word appears.
    let html = render("console/audit.html", audit_context(None, false));
    assert!(html.contains("Verify now"));
    assert!(!html.contains("verified") && !html.contains("failed"));
    assert!(html.contains("No checkpoint has been signed yet"));

    let html = render(
        "console/audit.html",
        audit_context(Some(verification(None)), true),
    );
    assert!(html.contains("1234 of 2000 entries checked so far"));
}

#[test]
fn only_administrators_see_the_rotate_button_and_not_while_one_runs() {
    let button = "Rotate key-encryption key</button>";
    assert!(render("console/keys.html", keys_context(None, true)).contains(button));
    let auditor = render("console/keys.html", keys_context(None, false));
    assert!(!auditor.contains(button));
    assert!(auditor.contains("Only administrators can rotate keys."));
    let running = render(
        "console/keys.html",
        keys_context(Some(rotation(None)), true),
    );
    assert!(!running.contains(button));
    assert!(running.contains("40 of 100 data keys re-encrypted"));
    assert!(running.contains("value=\"40\""));
    let done = render(
        "console/keys.html",
        keys_context(Some(rotation(Some("finished"))), true),
    );
    assert!(done.contains(button));
    assert!(done.contains("Old key deleted: <code>kek-1</code>."));
    assert!(done.contains("A rotation is unfinished: 60 data keys"));
}

#[test]
fn backups_show_the_latest_of_each_kind() {
    let html = render("console/backups.html", backups_context(true));
    assert!(html.contains("2026-03-01 02:00:00 UTC by root (command line)"));
    assert!(html.contains("<tr class=\"highlight\"><td>2026-02-01"));
    assert!(html.contains("none found"), "no check recorded");
    let html = render("console/backups.html", backups_context(false));
    assert!(html.contains("No backup is recorded."));
    assert!(html.contains("The whole audit trail was searched."));
}

#[test]
fn settings_read_plainly() {
    let context = settings_sample();
    let line = |t: &str, p: &str| RetentionLine {
        resource_type: t.to_owned(),
        period: p.to_owned(),
    };
    assert_eq!(
        context.retention,
        vec![
            line("Encounter", "30 days"),
            line("Observation", "10 years")
        ]
    );
    assert_eq!(context.retention_every, "1 hour");
    assert_eq!(context.consent.len(), Purpose::ALL.len());
    let research = context.consent.iter().find(|c| c.code == "HRESCH").unwrap();
    assert!(!research.permit);
    assert_eq!(research.purpose, "Research");
    let treat = context.consent.iter().find(|c| c.code == "TREAT").unwrap();
    assert!(treat.permit);
    let html = render("console/settings.html", &context);
    assert!(html.contains("<td>Observation</td><td>10 years</td>"));
    assert!(html.contains("every 1 hour"));
    assert!(html.contains("<code>HRESCH</code>"));
    let none = render(
        "console/settings.html",
        settings_context(&[], &ConsentDefaults::default()),
    );
    assert!(none.contains("No retention periods are set"));
}

#[test]
fn the_overview_counts_link_to_their_pages() {
    let html = render(
        "console/home.html",
        home_context(Some(verification(Some("verified"))), None),
    );
    for link in [
        "/admin/console/users",
        "/admin/console/clients",
        "/admin/console/alerts",
        "/admin/console/break-glass",
        "/admin/console/audit",
        "/admin/console/keys",
        "/admin/console/backups",
        "/admin/console/settings",
    ] {
        assert!(html.contains(&format!("href=\"{link}\"")), "{link}");
    }
    assert!(html.contains("1000+"));
    assert!(
        html.contains("4</span> <span class=\"tile-label\">break-the-glass accesses to review")
    );
    assert!(html.contains("90 under the checkpoint of 2026-03-01 14:00:00 UTC"));
    assert!(html.contains(">verified</span> 1234 entries"));
}
