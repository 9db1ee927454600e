//! End-to-end: `phivault breach notify` turns a JSON breach report into one letter per
//! reachable patient (HTML and PDF, in the patient's language, values escaped, nothing about
//! anyone else), the regulator summary with its 72-hour deadline, and a manifest, in an
//! owner-only directory; erased patients are counted, not addressed; the run is audited
//! naming exactly the notified patients; `--encrypt-to` leaves no plaintext; bad input is
//! named and writes nothing. On every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use phivault_audit::{AuditEntry, Outcome};
use phivault_testkit::fixtures;
use phivault_testkit::{Server, backends, random_username};
use serde_json::{Value, json};
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// The templates shipped in the repository.
fn shipped_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates/breach")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// `2026-12-01 08:15 UTC`, as the documents print instants.
fn printed(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap()
}

/// The text of a PDF's uncompressed content streams: every literal `( )` and hex `< >`
/// string, decoded as WinAnsi (Latin-1 for letters), one per line.
fn pdf_text(pdf: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    let latin1 = |bytes: &[u8]| bytes.iter().map(|&b| char::from(b)).collect::<String>();
    while i < pdf.len() {
        match pdf[i] {
            b'(' => {
                let mut bytes = Vec::new();
                let mut depth = 1;
                i += 1;
                while i < pdf.len() {
                    match pdf[i] {
                        b'\\' => {
                            i += 1;
                            match pdf.get(i) {
                                Some(b'n') => bytes.push(b'\n'),
                                Some(d @ b'0'..=b'7') => {
                                    let mut v = u32::from(d - b'0');
                                    for _ in 0..2 {
                                        match pdf.get(i + 1) {
                                            Some(d @ b'0'..=b'7') => {
                                                v = v * 8 + u32::from(d - b'0');
                                                i += 1;
                                            }
                                            _ => break,
                                        }
                                    }
                                    bytes.push(u8::try_from(v & 0xff).unwrap());
                                }
                                Some(&c) => bytes.push(c),
                                None => {}
                            }
                        }
                        b'(' => {
                            depth += 1;
                            bytes.push(b'(');
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                            bytes.push(b')');
                        }
                        c => bytes.push(c),
                    }
                    i += 1;
                }
                out.push_str(&latin1(&bytes));
                out.push('\n');
            }
            b'<' if pdf.get(i + 1) != Some(&b'<') => {
                let end = pdf[i..].iter().position(|&b| b == b'>').unwrap() + i;
                let hex: Vec<u8> = pdf[i + 1..end]
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                if let Ok(bytes) = hex::decode(&hex) {
                    out.push_str(&latin1(&bytes));
                    out.push('\n');
                }
                i = end;
            }
            b'<' => i += 1,
            _ => {}
        }
        i += 1;
    }
    out
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Every audit entry of the trail, in order.
async fn trail(server: &Server) -> Vec<AuditEntry> {
    let db = server.db().await;
    let rows = sqlx::query("SELECT body FROM audit_entries ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| AuditEntry::from_canonical(&r.get::<Vec<u8>, _>("body")).unwrap())
        .collect()
}

/// The `cli breach notify` entries of the trail.
async fn notify_entries(server: &Server) -> Vec<AuditEntry> {
    trail(server)
        .await
        .into_iter()
        .filter(|e| e.action == "cli breach notify")
        .collect()
}

/// A Patient speaking `language` (BCP 47), if any.
fn patient(family: &str, given: &str, language: Option<&str>) -> Value {
    let mut p = fixtures::patient(family, given);
    if let Some(code) = language {
        p["communication"] = json!([
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]},
             "preferred": true}
        ]);
    }
    p
}

fn incident(detected_at: &str) -> String {
    format!(
        r#"controller = "Clínica Ejemplo"
description = "A clinician's password was used by someone else."
detected_at = "{detected_at}"
likely_consequences = "The person may have read the records listed."
measures_taken = "The account was disabled and its sessions ended."
recommendations = "Be careful with calls that mention your care."

[contact]
name = "Data Protection Officer"
email = "dpo@example.org"
phone = "+00 123 456"
"#
    )
}

#[tokio::test]
async fn letters_and_the_regulator_summary_from_a_report() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let label = backend.name();
        let s = server.api().clone();
        let start = rfc3339(OffsetDateTime::now_utc() - time::Duration::seconds(2));

        // (family, given, language); the erased one is read, then erased.
        let people = [
            ("Núñez", "Lucía", Some("es")),
            ("<script>alert(1)</script>", "Eve", None),
            ("Müller", "Jürgen", Some("de-AT")),
            ("Smithson", "Alan", Some("en-US")),
            ("Erasedperson", "Gone", None),
        ];
        let mut ids = Vec::new();
        for (family, given, language) in people {
            ids.push(s.create(&patient(family, given, language)).await);
        }
        let observation = s
            .create(&fixtures::observation(
                &format!("Patient/{}", ids[0]),
                fixtures::coding(Some("http://loinc.org"), "8867-4", "Heart rate"),
                "2026-01-01T10:00:00Z",
            ))
            .await;
        let doc = random_username();
        let session = server.staff_session(&doc, "clinician").await;
        for pid in &ids {
            server.grant(&doc, pid, &[], None).await;
        }
        let as_doc = server.api_as(&session);
        for pid in &ids {
            as_doc
                .get(&format!("Patient/{pid}"))
                .await
                .assert_status(200);
        }
        as_doc
            .get(&format!("Observation/{observation}"))
            .await
            .assert_status(200);
        server
            .cli(&["erase", &ids[4], "--yes"], None)
            .await
            .assert_ok("phivault erase");
        let end = rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(60));

        let work = tempfile::tempdir().unwrap();
        let report = work.path().join("report.json");
        let report_s = report.display().to_string();
        server
            .cli(
                &[
                    "breach", "report", "--actor", &doc, "--from", &start, "--to", &end,
                    "--format", "json", "--out", &report_s,
                ],
                None,
            )
            .await
            .assert_ok("phivault breach report");

        // Detected four days ago: the notification is late.
        let detected = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap()
            .replace_second(0)
            .unwrap()
            - time::Duration::days(4);
        let incident_file = work.path().join("incident.toml");
        std::fs::write(&incident_file, incident(&rfc3339(detected))).unwrap();
        let incident_s = incident_file.display().to_string();
        let templates = shipped_templates().display().to_string();
        let out = work.path().join("notice");
        let out_s = out.display().to_string();
        assert!(notify_entries(&server).await.is_empty());
        let run = server
            .cli(
                &[
                    "breach",
                    "notify",
                    "--report",
                    &report_s,
                    "--incident",
                    &incident_s,
                    "--template",
                    &templates,
                    "--out",
                    &out_s,
                ],
                None,
            )
            .await;
        run.assert_ok("phivault breach notify");
        for (family, given, _) in people {
            assert!(
                !run.stderr.contains(family) && !run.stderr.contains(given),
                "{label}: no name on stderr: {}",
                run.stderr
            );
        }

        // One HTML and one PDF letter per reachable patient; the erased one has none.
        let notified: BTreeSet<String> = ids[..4].iter().cloned().collect();
        let mut want: Vec<String> = notified
            .iter()
            .flat_map(|id| [format!("letters/{id}.html"), format!("letters/{id}.pdf")])
            .collect();
        want.extend(
            [
                "manifest.json",
                "regulator-summary.html",
                "regulator-summary.pdf",
            ]
            .map(String::from),
        );
        want.sort();
        assert_eq!(files_under(&out), want, "{label}");
        #[cfg(unix)]
        {
            assert_eq!(mode(&out), 0o700, "{label}");
            assert_eq!(mode(&out.join("letters")), 0o700, "{label}");
            for f in &want {
                assert_eq!(mode(&out.join(f)), 0o600, "{label}: {f}");
            }
        }
        let siblings: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .collect();
        assert!(siblings.is_empty(), "{label}: {siblings:?}");

        let html =
            |id: &str| std::fs::read_to_string(out.join(format!("letters/{id}.html"))).unwrap();
        let pdf = |id: &str| std::fs::read(out.join(format!("letters/{id}.pdf"))).unwrap();
        // Spanish for the Spanish patient, with the category of her Observation.
        let es = html(&ids[0]);
        assert!(es.contains("lang=\"es\""), "{label}: {es}");
        assert!(es.contains("Estimado/a Lucía Núñez"), "{label}: {es}");
        assert!(
            es.contains("resultados de pruebas y mediciones"),
            "{label}: {es}"
        );
        // German through the primary subtag of de-AT; English for en-US and for no language.
        assert!(html(&ids[2]).contains("Guten Tag Jürgen Müller"), "{label}");
        assert!(html(&ids[3]).contains("Dear Alan Smithson"), "{label}");
        // The name is escaped in HTML, and printed as it is in the PDF.
        let script = html(&ids[1]);
        assert!(!script.contains("<script>"), "{label}: {script}");
        assert!(
            script.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{label}: {script}"
        );
        assert!(pdf_text(&pdf(&ids[1])).contains("Eve <script>alert(1)</script>"));
        // The PDFs hold the patient's own name, accents included, and nobody else's.
        for (i, id) in ids[..4].iter().enumerate() {
            let bytes = pdf(id);
            assert!(bytes.starts_with(b"%PDF-"), "{label}");
            let text = pdf_text(&bytes);
            let letter = html(id);
            assert!(text.contains(people[i].0), "{label}: {id}: {text}");
            for (j, (family, given, _)) in people.iter().enumerate() {
                if i != j {
                    for doc_text in [&text, &letter] {
                        assert!(!doc_text.contains(family), "{label}: {family} in {id}");
                        assert!(!doc_text.contains(given), "{label}: {given} in {id}");
                    }
                }
            }
            for other in ids.iter().filter(|o| *o != id) {
                assert!(!letter.contains(other.as_str()), "{label}: {other} in {id}");
            }
            assert!(
                !letter.contains(&observation),
                "{label}: a resource id in {id}"
            );
            assert!(
                !letter.contains(&doc) && !text.contains(&doc),
                "{label}: the actor"
            );
        }
        assert!(pdf_text(&pdf(&ids[0])).contains("Estimado/a Lucía Núñez"));

        // The summary: counts, the deadline and the delay.
        let deadline = printed(detected + time::Duration::hours(72));
        let summary = std::fs::read_to_string(out.join("regulator-summary.html")).unwrap();
        let summary_pdf = std::fs::read(out.join("regulator-summary.pdf")).unwrap();
        assert!(summary_pdf.starts_with(b"%PDF-"));
        let summary_text = pdf_text(&summary_pdf);
        for text in [&summary, &summary_text] {
            assert!(
                text.contains(&format!("72-hour deadline (Article 33(1)): {deadline}")),
                "{label}: {text}"
            );
            assert!(
                text.contains("after the 72-hour deadline"),
                "{label}: {text}"
            );
            assert!(text.contains("add delay_reasons"), "{label}: {text}");
            for (family, _, _) in &people {
                assert!(!text.contains(family), "{label}: {family} in the summary");
            }
            for id in &ids {
                assert!(!text.contains(id.as_str()), "{label}: an id in the summary");
            }
        }
        assert!(
            summary.contains("<strong>5</strong> patients"),
            "{label}: {summary}"
        );
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["subjects"]["total"], 5, "{manifest}");
        assert_eq!(manifest["subjects"]["notified"], 4, "{manifest}");
        assert_eq!(manifest["subjects"]["erased"], 1, "{manifest}");
        assert_eq!(manifest["not_notified"][0]["patient"], ids[4].as_str());
        assert_eq!(manifest["not_notified"][0]["reason"], "erased");
        assert_eq!(manifest["encrypted"], false);

        // Audited: one entry naming exactly the notified patients.
        let entries = notify_entries(&server).await;
        assert_eq!(entries.len(), 1, "{label}: {entries:?}");
        let entry = &entries[0];
        assert_eq!(entry.outcome, Outcome::Allowed);
        let concerned: BTreeSet<String> = entry.patients_concerned().into_iter().collect();
        assert_eq!(concerned, notified, "{label}");

        // Encrypted: every file sealed, none in plaintext, and it opens with the identity.
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let sealed = work.path().join("sealed");
        let sealed_s = sealed.display().to_string();
        server
            .cli(
                &[
                    "breach",
                    "notify",
                    "--report",
                    &report_s,
                    "--incident",
                    &incident_s,
                    "--template",
                    &templates,
                    "--out",
                    &sealed_s,
                    "--encrypt-to",
                    &recipient,
                ],
                None,
            )
            .await
            .assert_ok("phivault breach notify --encrypt-to");
        let files = files_under(&sealed);
        assert_eq!(files.len(), want.len(), "{label}: {files:?}");
        for f in &files {
            assert!(f.ends_with(".age"), "{label}: {f} is not sealed");
            let bytes = std::fs::read(sealed.join(f)).unwrap();
            assert!(
                !bytes.windows(7).any(|w| w == b"Smithso"),
                "{label}: plaintext in {f}"
            );
        }
        let open = |name: &str| {
            age::decrypt(&identity, &std::fs::read(sealed.join(name)).unwrap()).unwrap()
        };
        let letter = String::from_utf8(open(&format!("letters/{}.html.age", ids[0]))).unwrap();
        assert!(letter.contains("Lucía Núñez"), "{label}");
        let letter_pdf = open(&format!("letters/{}.pdf.age", ids[0]));
        assert!(letter_pdf.starts_with(b"%PDF-") && pdf_text(&letter_pdf).contains("Núñez"));
        let manifest: Value = serde_json::from_slice(&open("manifest.json.age")).unwrap();
        assert_eq!(manifest["encrypted"], true);

        // Mistakes are named and write nothing (not even an audit entry).
        let no_description = work.path().join("no-description.toml");
        std::fs::write(
            &no_description,
            incident(&rfc3339(detected)).replace("description = ", "summary = "),
        )
        .unwrap();
        let malformed = work.path().join("malformed.json");
        std::fs::write(&malformed, br#"{"patients": [{"patient": "x"}]}"#).unwrap();
        let bad_instant = work.path().join("bad-instant.toml");
        std::fs::write(&bad_instant, incident("last tuesday")).unwrap();
        let cases: [(PathBuf, PathBuf, PathBuf, &str); 4] = [
            (
                report.clone(),
                no_description,
                shipped_templates(),
                "description",
            ),
            (
                report.clone(),
                bad_instant,
                shipped_templates(),
                "detected_at",
            ),
            (
                report.clone(),
                incident_file.clone(),
                work.path().join("no-templates"),
                "no-templates",
            ),
            (
                malformed,
                incident_file.clone(),
                shipped_templates(),
                "not a JSON breach report",
            ),
        ];
        for (i, (report, incident, templates, mention)) in cases.into_iter().enumerate() {
            let bad_out = work.path().join(format!("out-bad-{i}"));
            let run = server
                .cli(
                    &[
                        "breach",
                        "notify",
                        "--report",
                        &report.display().to_string(),
                        "--incident",
                        &incident.display().to_string(),
                        "--template",
                        &templates.display().to_string(),
                        "--out",
                        &bad_out.display().to_string(),
                    ],
                    None,
                )
                .await;
            run.assert_error("a bad input", mention);
            assert!(
                !bad_out.exists(),
                "{label}: {mention}: wrote {}",
                bad_out.display()
            );
        }
        // An existing non-empty --out is refused too.
        let run = server
            .cli(
                &[
                    "breach",
                    "notify",
                    "--report",
                    &report_s,
                    "--incident",
                    &incident_s,
                    "--template",
                    &templates,
                    "--out",
                    &out_s,
                ],
                None,
            )
            .await;
        run.assert_error("a non-empty --out", "not empty");
        assert_eq!(
            notify_entries(&server).await.len(),
            2,
            "{label}: mistakes are not audited"
        );
        let leftovers: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-") || n.starts_with("out-bad-"))
            .collect();
        assert!(leftovers.is_empty(), "{label}: {leftovers:?}");
    }
}
