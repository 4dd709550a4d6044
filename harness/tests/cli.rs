//! The `vmrepro` command as a user meets it: its exit statuses over real
//! guests (a pass, a skip, a failure, a first run without a snapshot), and
//! its manners (a closed pipe). The guest trials run bookworm × stock in a
//! scratch project, with the harness's own image cache.

mod common;

use common::root;
use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use vmrepro::cache::Cache;
use vmrepro::project::Project;
use vmrepro::trial;
use vmrepro::verdict::{EXIT_FAIL, EXIT_PASS, EXIT_SKIPPED};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let guests = match Project::open(&root())
        .map_err(|e| e.to_string())
        .and_then(|p| trial::reachable(&p, &Cache::from_env(), "bookworm"))
    {
        Err(why) if !trial::required("bookworm") => Some(why),
        _ => None,
    };
    let mut exit_statuses = Trial::test("exit_statuses_over_real_guests", exit_statuses);
    if let Some(why) = guests {
        eprintln!("cli: exit_statuses_over_real_guests skipped: {why}");
        exit_statuses = exit_statuses.with_ignored_flag(true);
    }
    let trials = vec![
        Trial::test("a_closed_pipe_ends_quietly", closed_pipe),
        exit_statuses,
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

fn vmrepro(project: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmrepro"));
    command
        .env("VMREPRO_ROOT", project)
        .env("VMREPRO_CACHE", Cache::from_env().root())
        // Pending snapshots are written even where CI is set.
        .env("INSTA_UPDATE", "new")
        .env_remove("INSTA_FORCE_PASS")
        .env_remove("VMREPRO_REQUIRE_ALL")
        .env_remove("VMREPRO_REQUIRE")
        .env_remove("VMREPRO_SHARD")
        .arg("-q");
    command
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `vmrepro list | head -1`: the reader goes away, vmrepro ends with 0 and
/// no panic. The read end is closed before vmrepro writes, so the closed
/// pipe is certain, not a race.
fn closed_pipe() -> Result<(), Failed> {
    let mut child = vmrepro(&root())
        .args(["list", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() != Some(0) || stderr.contains("panicked") {
        return Err(format!("status {:?}: {stderr}", output.status).into());
    }
    Ok(())
}

const PASSING: &str = r#"
name = "passing"
description = "A flow that holds on bookworm; jessie cannot be fetched everywhere."
[matrix]
releases = ["bookworm", "jessie"]
kernels = ["stock"]
[[step]]
run = "echo 'kept' > /etc/vmrepro-cli-test"
[[capture]]
name = "file"
run = "cat /etc/vmrepro-cli-test"
[expect.contains]
"file" = ["kept"]
"#;

const FAILING: &str = r#"
name = "failing"
description = "An expectation that cannot hold."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
run = "true"
[[capture]]
name = "file"
run = "echo something else"
[expect.contains]
"file" = ["what is not there"]
"#;

fn exit_statuses() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let project = dir.path();
    common::copy(&root().join("images"), &project.join("images"))?;
    std::fs::create_dir_all(project.join("scenarios"))?;
    std::fs::create_dir_all(project.join("snapshots"))?;
    std::fs::write(project.join("scenarios/passing.toml"), PASSING)?;
    // Where jessie can be fetched, its cell runs instead of being skipped.
    let jessie_skips = Project::open(project)
        .map_err(|e| e.to_string())
        .and_then(|p| trial::reachable(&p, &Cache::from_env(), "jessie"))
        .is_err();

    // A release that cannot be fetched is found out in seconds.
    if jessie_skips {
        let started = Instant::now();
        let output = vmrepro(project)
            .args([
                "repro",
                "passing",
                "--release",
                "jessie",
                "--kernel",
                "stock",
            ])
            .output()?;
        let seconds = started.elapsed().as_secs();
        if output.status.code() != Some(i32::from(EXIT_SKIPPED)) || seconds > 30 {
            return Err(format!(
                "repro of an unreachable release: {:?} after {seconds}s\n{}",
                output.status,
                said(&output)
            )
            .into());
        }
        if !said(&output).contains("SKIPPED") {
            return Err(format!("the report must say SKIPPED:\n{}", said(&output)).into());
        }
    }

    // First run: no committed snapshot, so NEW, which is not a pass.
    let output = vmrepro(project)
        .args(["run", "passing", "--format", "json"])
        .output()?;
    let text = said(&output);
    if output.status.code() != Some(i32::from(EXIT_FAIL)) || !text.contains("\"status\": \"new\"") {
        return Err(format!(
            "a first run must be NEW and exit {EXIT_FAIL}: {:?}\n{text}",
            output.status
        )
        .into());
    }
    let pending = project.join("snapshots/passing@bookworm-stock.snap.new");
    if !pending.exists() {
        return Err(format!("no pending snapshot at {}\n{text}", pending.display()).into());
    }
    // Accepted (as `cargo insta accept` does): now it passes; with the
    // jessie cell skipped, that is "passed with skips".
    std::fs::rename(
        &pending,
        project.join("snapshots/passing@bookworm-stock.snap"),
    )?;
    let output = vmrepro(project).args(["run", "passing"]).output()?;
    let expected = if jessie_skips {
        EXIT_SKIPPED
    } else {
        EXIT_PASS
    };
    if output.status.code() != Some(i32::from(expected)) {
        return Err(format!(
            "pass (+ skip): expected {expected}, got {:?}\n{}",
            output.status,
            said(&output)
        )
        .into());
    }

    // A failing cell wins over the skip.
    std::fs::write(project.join("scenarios/failing.toml"), FAILING)?;
    let output = vmrepro(project)
        .args(["run", "passing", "failing"])
        .output()?;
    if output.status.code() != Some(i32::from(EXIT_FAIL)) {
        return Err(format!(
            "a failure must exit {EXIT_FAIL}: {:?}\n{}",
            output.status,
            said(&output)
        )
        .into());
    }
    Ok(())
}
