//! What can be checked of the deployment files on this machine, is: the daemon's systemd unit with
//! `systemd-analyze verify` (no warning) and `systemd-analyze security` (its exposure score below 3.0, "OK"), the
//! compose file against the Compose Specification's schema and the Helm chart's values against its
//! `values.schema.json` (the schema Helm itself enforces), with `check-jsonschema` from PyPI. Not checked here:
//! building the OCI image (no base images can be pulled) and rendering the chart (no Helm binary in the
//! registries this project may use); README says so.

use std::process::Command;

use edgefleet_e2e::{bin, cache, repo};

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The unit with its ExecStart pointed at the daemon this build made (`verify` checks the binary exists).
fn unit_in(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("packaging/systemd/edgefleet-daemon.service")).expect("unit");
    let text = text.replace("/usr/bin/edgefleet-daemon", &bin("edgefleet-daemon").display().to_string());
    let path = dir.join("edgefleet-daemon.service");
    std::fs::write(&path, edit(text)).expect("write unit");
    path
}

#[test]
fn the_daemon_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_in(dir.path(), |t| t);
    let (ok, _, err) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok && err.trim().is_empty(), "systemd-analyze verify: {err}");
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=30"]).arg(&unit));
    assert!(ok, "exposure above 3.0:\n{out}{err}");
    assert!(out.contains("Overall exposure level"), "{out}");

    // The checks can fail: a misspelt key, and a unit without its hardening, are caught.
    let typo = unit_in(dir.path(), |t| t.replace("ProtectSystem=strict", "ProtectSytem=strict"));
    let (_, _, err) = run(Command::new("systemd-analyze").arg("verify").arg(&typo));
    assert!(err.contains("ProtectSytem"), "{err}");
    let soft = unit_in(dir.path(), |t| {
        t.lines().filter(|l| !l.starts_with("Protect") && !l.starts_with("Restrict")).collect::<Vec<_>>().join("\n")
    });
    let (ok, out, _) =
        run(Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=30"]).arg(&soft));
    assert!(!ok, "an unhardened unit passes the threshold:\n{out}");
}

#[test]
fn the_compose_file_and_chart_values_follow_their_schemas() {
    let check = cache("venv/bin/check-jsonschema");
    let deploy = repo().join("deploy");
    let (ok, out, err) =
        run(Command::new(&check).args(["--builtin-schema", "vendor.compose-spec"]).arg(deploy.join("compose.yaml")));
    assert!(ok, "compose.yaml: {out}{err}");
    let chart = deploy.join("helm/edgefleet");
    let (ok, out, err) = run(Command::new(&check)
        .arg("--schemafile")
        .arg(chart.join("values.schema.json"))
        .arg(chart.join("values.yaml")));
    assert!(ok, "values.yaml: {out}{err}");

    // And they can fail: a service with an unknown key, values with a bad blob URL.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_compose = dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(deploy.join("compose.yaml")).expect("compose");
    std::fs::write(&bad_compose, text.replace("    restart: unless-stopped", "    restrat: unless-stopped"))
        .expect("w");
    let (ok, ..) = run(Command::new(&check).args(["--builtin-schema", "vendor.compose-spec"]).arg(&bad_compose));
    assert!(!ok, "a misspelt compose key passes");
    let bad_values = dir.path().join("values.yaml");
    let text = std::fs::read_to_string(chart.join("values.yaml")).expect("values");
    std::fs::write(&bad_values, text.replace("url: s3://edgefleet-blobs/fleet", "url: http://not-a-bucket"))
        .expect("w");
    let (ok, ..) = run(Command::new(&check).arg("--schemafile").arg(chart.join("values.schema.json")).arg(&bad_values));
    assert!(!ok, "a blob URL that is not s3:// passes");
}
