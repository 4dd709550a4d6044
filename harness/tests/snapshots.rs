//! The snapshot review loop as a user meets it, with the real cargo-insta:
//! a cell's first run is NEW and leaves a pending snapshot that
//! `cargo insta pending-snapshots` lists and `cargo insta accept` commits;
//! a later change is listed and accepted the same way. It runs in a copy of
//! this project's layout (top-level package, `snapshots/` at the top), so
//! nothing in the working tree is touched.
//!
//! Ignored where cargo-insta is not installed, unless
//! `VMREPRO_CARGO_INSTA=require` (set by `.ci/run`, which installs it).

mod common;

use common::root;
use std::path::Path;
use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Failed, Trial};
use vmrepro::check::snapshot::{self, Meta, SnapshotError};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let installed = Command::new("cargo")
        .args(["insta", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut trial = Trial::test(
        "cargo_insta_sees_and_accepts_pending_snapshots",
        review_loop,
    );
    if !installed && std::env::var("VMREPRO_CARGO_INSTA").as_deref() != Ok("require") {
        eprintln!("snapshots: cargo-insta is not installed (cargo install cargo-insta); skipped");
        trial = trial.with_ignored_flag(true);
    }
    libtest_mimic::run(&args, vec![trial]).exit_code()
}

fn insta(project: &Path, args: &[&str]) -> Result<String, Failed> {
    let output = Command::new("cargo")
        .arg("insta")
        .args(args)
        .current_dir(project)
        .env_remove("INSTA_WORKSPACE_ROOT")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!("cargo insta {}: {text}", args.join(" ")).into());
    }
    Ok(text)
}

fn review_loop() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let project = dir.path();
    // The layout cargo-insta reads: the manifests, the lock file, the
    // sources the manifests name, and snapshots/ (with its empty library).
    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "snapshots/lib.rs",
        "harness/Cargo.toml",
    ] {
        std::fs::create_dir_all(project.join(path).parent().unwrap_or(project))?;
        common::copy(&root().join(path), &project.join(path))?;
    }
    for dir in ["harness/src", "harness/tests", "harness/benches"] {
        common::copy(&root().join(dir), &project.join(dir))?;
    }
    let snapshots = project.join("snapshots");
    // Pending snapshots are written outside CI too, for this test.
    std::env::set_var("INSTA_UPDATE", "new");
    let scenario_file = project.join("scenarios/selftest.toml");
    std::fs::create_dir_all(project.join("scenarios"))?;
    std::fs::write(&scenario_file, "# the scenario a snapshot's header names\n")?;
    let meta = Meta {
        description: "the review loop",
        input_file: Some(&scenario_file),
        info: None,
    };
    let name = "selftest@bookworm-stock";

    // First run: no committed snapshot, so NEW, with a pending file.
    match snapshot::compare(
        project,
        &snapshots,
        name,
        &meta,
        "== x (exit 0) ==\nfirst\n",
    ) {
        Err(SnapshotError::New { .. }) => {}
        other => return Err(format!("a first run must be NEW, got {other:?}").into()),
    }
    let listed = insta(project, &["pending-snapshots"])?;
    if !listed.contains(name) {
        return Err(format!("cargo insta does not list the new snapshot:\n{listed}").into());
    }
    insta(project, &["accept"])?;
    let committed = snapshots.join(format!("{name}.snap"));
    let text = std::fs::read_to_string(&committed)?;
    if !text.contains("first") || !text.contains("scenarios/selftest.toml") {
        return Err(format!("accepted snapshot:\n{text}").into());
    }
    // Second run, same captures: a pass.
    snapshot::compare(
        project,
        &snapshots,
        name,
        &meta,
        "== x (exit 0) ==\nfirst\n",
    )
    .map_err(|e| format!("after accepting, the same captures must match: {e}"))?;

    // A change: it differs, is listed, and accepting it updates the file.
    match snapshot::compare(
        project,
        &snapshots,
        name,
        &meta,
        "== x (exit 0) ==\nsecond\n",
    ) {
        Err(SnapshotError::Differs { .. }) => {}
        other => return Err(format!("a change must differ, got {other:?}").into()),
    }
    let listed = insta(project, &["pending-snapshots"])?;
    if !listed.contains(name) {
        return Err(format!("cargo insta does not list the changed snapshot:\n{listed}").into());
    }
    insta(project, &["accept"])?;
    let text = std::fs::read_to_string(&committed)?;
    if !text.contains("second") || snapshots.join(format!("{name}.snap.new")).exists() {
        return Err(format!("after accepting the change:\n{text}").into());
    }
    Ok(())
}
