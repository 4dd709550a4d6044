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
    let with_guests = |name: &str, test: fn() -> Result<(), Failed>| {
        let trial = Trial::test(name, test);
        match &guests {
            Some(why) => {
                eprintln!("cli: {name} skipped: {why}");
                trial.with_ignored_flag(true)
            }
            None => trial,
        }
    };
    let trials = vec![
        Trial::test("a_closed_pipe_ends_quietly", closed_pipe),
        with_guests("exit_statuses_over_real_guests", exit_statuses),
        with_guests("a_trial_whose_qemu_is_killed_fails_at_once", qemu_killed),
        nextest_trial(),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// The command with `-q`: results only.
fn vmrepro(project: &Path) -> Command {
    let mut command = vmrepro_saying(project);
    command.arg("-q");
    command
}

/// The command, its progress lines on standard error.
fn vmrepro_saying(project: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmrepro"));
    command
        .env("VMREPRO_ROOT", project)
        .env("VMREPRO_CACHE", Cache::from_env().root())
        // Pending snapshots are written even where CI is set.
        .env("INSTA_UPDATE", "new")
        .env_remove("INSTA_FORCE_PASS")
        .env_remove("VMREPRO_REQUIRE_ALL")
        .env_remove("VMREPRO_REQUIRE")
        .env_remove("VMREPRO_SHARD");
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

/// Under cargo-nextest, trials of a release that cannot be fetched here
/// show as skipped, never as passed. Ignored where nextest is not installed,
/// or where jessie can be fetched (its trials would then really run).
fn nextest_trial() -> Trial {
    let name = "nextest_shows_unreachable_releases_as_skipped";
    let installed = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let unreachable = Project::open(&root())
        .map_err(|e| e.to_string())
        .and_then(|p| trial::reachable(&p, &Cache::from_env(), "jessie"))
        .is_err();
    let trial = Trial::test(name, nextest_skips);
    if installed && unreachable && !trial::required("jessie") {
        trial
    } else {
        eprintln!("cli: {name} skipped: needs cargo-nextest and a host that cannot fetch jessie");
        trial.with_ignored_flag(true)
    }
}

fn nextest_skips() -> Result<(), Failed> {
    let output = Command::new("cargo")
        .args([
            "nextest",
            "run",
            "--test",
            "scenarios",
            "--no-tests",
            "pass",
        ])
        .args(["-E", "test(/::jessie::/)"])
        .current_dir(root())
        .env_remove("VMREPRO_REQUIRE_ALL")
        .env_remove("VMREPRO_REQUIRE")
        .output()?;
    let text = said(&output);
    let summary = text
        .lines()
        .find(|l| l.trim_start().starts_with("Summary"))
        .unwrap_or("");
    if !output.status.success() || !summary.contains(" 0 passed") || !summary.contains("skipped") {
        return Err(format!("nextest must skip jessie's trials, not pass them:\n{text}").into());
    }
    Ok(())
}

const HANGING: &str = r#"
name = "hanging"
description = "A step that would run for ten minutes."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "wait"
run = "sleep 600"
timeout = 900
[[capture]]
name = "uptime"
run = "cat /proc/uptime"
"#;

/// QEMU killed from outside in the middle of a step: the trial fails
/// within seconds (not when the step's 15-minute timeout runs out), and
/// says that QEMU ended and how.
fn qemu_killed() -> Result<(), Failed> {
    use std::io::BufRead as _;
    let dir = common::scratch_project(&[("hanging.toml", HANGING)])?;
    let project = dir.path();
    let mut child = vmrepro_saying(project)
        .arg("-v")
        .args(["run", "hanging"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Until the step runs in the guest.
    let mut said = Vec::new();
    let started = Instant::now();
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(300)) {
            Ok(line) => {
                let in_step = line.contains("step 1/1 (wait)");
                said.push(line);
                if in_step {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                return Err(format!(
                    "the step never started ({}s):\n{}",
                    started.elapsed().as_secs(),
                    said.join("\n")
                )
                .into());
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let qemu = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "qemu-system"])
        .output()?;
    let qemu_pid = String::from_utf8_lossy(&qemu.stdout).trim().to_owned();
    if qemu_pid.is_empty() || qemu_pid.contains('\n') {
        let _ = child.kill();
        return Err(format!("expected one QEMU child of {pid}, found {qemu_pid:?}").into());
    }
    let killed = Instant::now();
    Command::new("kill").args(["-KILL", &qemu_pid]).status()?;
    let status = child.wait()?;
    let seconds = killed.elapsed().as_secs_f64();
    said.extend(lines.try_iter());
    let text = said.join("\n");
    eprintln!("cli: QEMU killed; vmrepro ended {seconds:.1}s later with {status}");
    if !text.contains("QEMU ended while") || !text.contains("signal: 9") {
        return Err(format!("the error must say that QEMU ended and how:\n{text}").into());
    }
    // The step alone would have run for ten minutes.
    if seconds > 15.0 {
        return Err(format!("noticed only after {seconds:.1}s").into());
    }
    if status.code() != Some(3) {
        return Err(format!(
            "exit status {status}, expected 3 (the host could not run it)\n{text}"
        )
        .into());
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
    let dir = common::scratch_project(&[("passing.toml", PASSING)])?;
    let project = dir.path();
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
