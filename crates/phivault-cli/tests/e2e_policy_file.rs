//! Operator policies (`policy_file`): a valid file is loaded next to the default set and takes
//! effect; an invalid one stops the server before it serves anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use phivault_testkit::{Server, backends, fixtures};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

const NO_APP_DELETES: &str = r#"
// Apps may read and write, but never delete.
@id("no-app-deletes")
forbid (principal is PhiVault::Client, action == PhiVault::Action::"delete", resource);
"#;

#[tokio::test(flavor = "multi_thread")]
async fn operator_policy_file_is_loaded_and_applies() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.cedar");
        std::fs::write(&file, NO_APP_DELETES).unwrap();

        // Without the file, the system app may delete.
        let plain = Server::start(BIN, &backend, &[]).await;
        let r = plain
            .post_json("Patient", &fixtures::patient("Policyfree", "Pat"))
            .await;
        r.assert_status(201);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(plain.delete(&format!("Patient/{id}")).await.status, 204);
        drop(plain);

        // With it, the same delete is refused and the resource stays.
        let path = file.to_str().unwrap();
        let s = Server::start(BIN, &backend, &["--policy-file", path]).await;
        let r = s
            .post_json("Patient", &fixtures::patient("Policybound", "Pat"))
            .await;
        r.assert_status(201);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let del = s.delete(&format!("Patient/{id}")).await;
        assert_eq!(del.status, 403, "{del:?}");
        assert!(del.text.contains("access denied"), "{del:?}");
        assert_eq!(s.get(&format!("Patient/{id}")).await.status, 200);
    }
}

#[test]
fn invalid_policy_file_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.cedar");
    std::fs::write(
        &file,
        r#"@id("by-ward") permit (principal, action == PhiVault::Action::"read", resource)
           when { principal.ward == "ICU" };"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--policy-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains("by-ward") && stderr.contains("ward"),
        "the error names the policy and the attribute: {stderr}"
    );

    // `phivault policy check` gives the same verdict without starting anything.
    let check = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    std::fs::write(&file, NO_APP_DELETES).unwrap();
    let check = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}
