//! The `vmrepro` command as a user meets it: its exit statuses over real
//! guests (a pass, a skip, a failure, a first run without a snapshot), a
//! step stopped for running too long, `exec`, the interactive shell and
//! `--shell-fail` driven through a pseudo-terminal as a person types, and
//! its manners (a closed pipe, no terminal). The guest trials run bookworm
//! in a scratch project, with the harness's own image cache.

mod common;

use common::root;
use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use vmrepro::check::verdict::{EXIT_FAIL, EXIT_PASS, EXIT_SKIPPED};
use vmrepro::project::Project;
use vmrepro::run;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let guests = match common::settings()
        .project_at(&root())
        .map_err(|e| e.to_string())
        .and_then(|p| run::reachable(&p, &common::settings().cache(), "bookworm"))
    {
        Err(why) if !common::settings().required.contains("bookworm") => Some(why),
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
        with_guests("exec_prints_and_passes_the_status", exec_status),
        with_guests(
            "a_step_past_its_time_is_stopped_and_the_guest_still_captured",
            step_timeout,
        ),
        with_guests("the_shell_through_a_terminal", shell_in_a_terminal),
        with_guests(
            "shell_fail_lands_in_the_failed_guest",
            shell_fail_in_a_terminal,
        ),
        Trial::test(
            "shell_fail_without_a_terminal_is_refused",
            shell_fail_refused,
        ),
        Trial::test("copy_stays_in_the_project", copy_stays_in_the_project),
        with_guests("a_kernel_given_by_path_boots", kernel_by_path),
        with_guests("a_full_disk_still_gives_true_captures", disk_full),
        with_guests(
            "a_full_run_moves_the_harness_and_keeps_the_status",
            run_full,
        ),
        with_guests("escapes_from_a_guest_stay_inert", guest_escapes),
        with_guests("a_flooding_capture_keeps_its_ends", flood),
        with_guests("forged_markers_do_not_hide_the_status", forged_markers),
        with_guests(
            "an_unexpected_emergency_mode_is_named",
            unexpected_emergency,
        ),
        with_guests("a_kernel_panic_in_a_step_is_named", panic_in_a_step),
        with_guests("a_reboot_in_a_step_is_named", reboot_in_a_step),
        with_guests("a_power_off_in_a_step_is_named", power_off_in_a_step),
        with_guests("a_killed_control_shell_is_named", killed_shell),
        with_guests("a_boot_loop_is_named_and_asserted", boot_loop),
        with_guests(
            "a_detached_disk_is_gone_and_emergency_mode_is_looked_into",
            detached_disk,
        ),
        with_guests("what_a_reboot_lost_is_found_without_captures", reboot_loses),
        with_guests(
            "a_client_outside_meets_each_port_as_it_is",
            ports_from_outside,
        ),
        with_guests(
            "a_project_anywhere_with_packages_and_a_copied_deb",
            project_anywhere,
        ),
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
        .env("VMREPRO_CACHE", common::settings().cache().root())
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
    let unreachable = common::settings()
        .project_at(&root())
        .map_err(|e| e.to_string())
        .and_then(|p| run::reachable(&p, &common::settings().cache(), "jessie"))
        .is_err();
    let trial = Trial::test(name, nextest_skips);
    if installed && unreachable && !common::settings().required.contains("jessie") {
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
    // QEMU is killed as soon as the step has begun: whether its command
    // is still being typed or already running, the trial must end at once
    // saying that QEMU ended.
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
    let jessie_skips = common::settings()
        .project_at(project)
        .map_err(|e| e.to_string())
        .and_then(|p| run::reachable(&p, &common::settings().cache(), "jessie"))
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

/// `vmrepro exec`: the command's output and status, both kernels; 255 when
/// vmrepro itself cannot run it.
fn exec_status() -> Result<(), Failed> {
    let dir = common::scratch_project(&[])?;
    let project = dir.path();
    let exec = |kernel: &str, command: &[&str]| -> std::io::Result<Output> {
        vmrepro(project)
            .args(["exec", "--release", "bookworm", "--kernel", kernel, "--"])
            .args(command)
            .output()
    };
    let started = Instant::now();
    let output = exec("stock", &["uname", "-r"])?;
    let seconds = started.elapsed().as_secs_f64();
    let release = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // Debian's own kernels are named VERSION-ABI-FLAVOUR, as 6.1.0-50-cloud-amd64.
    let debian = regex::Regex::new(r"^\d+\.\d+\.\d+-\d+-[a-z0-9-]*amd64$")?;
    if output.status.code() != Some(0) || !debian.is_match(&release) {
        return Err(format!(
            "uname -r on stock: {:?}, {release:?}\n{}",
            output.status,
            said(&output)
        )
        .into());
    }
    eprintln!("cli: exec uname -r on bookworm × stock: {release} in {seconds:.1}s");
    // The other kernel only where it is built already: building it here
    // would hold up this test target for minutes that the scenario trials
    // spend beside other guests.
    let linode_built = Project::open(project)
        .ok()
        .and_then(|p| match p.kernels.get("linode") {
            Some(vmrepro::project::recipe::KernelSource::Recipe(recipe)) => {
                vmrepro::media::kernel::lookup_built(&common::settings().cache(), "linode", recipe)
            }
            _ => None,
        });
    if linode_built.is_some() {
        let output = exec("linode", &["uname", "-r"])?;
        let release = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.code() != Some(0) || !release.ends_with("-x86_64-linode") {
            return Err(format!("uname -r on linode: {:?}, {release:?}", output.status).into());
        }
    } else {
        eprintln!("cli: exec on linode not tried: that kernel is not built yet");
    }
    let output = exec("stock", &["false"])?;
    if output.status.code() != Some(1) {
        return Err(format!("false: {:?}\n{}", output.status, said(&output)).into());
    }
    // Several words are one command and its arguments, as given; one is a
    // shell command line.
    let output = exec("stock", &["printf", "%s|", "a  b", "$HOME"])?;
    if String::from_utf8_lossy(&output.stdout) != "a  b|$HOME|" {
        return Err(format!("arguments changed on the way: {}", said(&output)).into());
    }
    let output = exec("stock", &["echo out; echo err >&2; exit 7"])?;
    if output.status.code() != Some(7)
        || String::from_utf8_lossy(&output.stdout) != "out\n"
        || !String::from_utf8_lossy(&output.stderr).contains("err")
    {
        return Err(format!("a command line: {:?}\n{}", output.status, said(&output)).into());
    }
    let output = vmrepro(project)
        .args(["exec", "--release", "sid", "--", "true"])
        .output()?;
    if output.status.code() != Some(255) || !said(&output).contains("sid") {
        return Err(format!("an unknown release: {:?}\n{}", output.status, said(&output)).into());
    }
    Ok(())
}

const HANGS: &str = r#"
name = "hangs"
description = "A step that never ends, with a time limit."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
run = "echo 'before the hang' > /run/vmrepro-marker"
[[step]]
title = "hang"
run = "echo started; sleep 600"
timeout = 5
[[capture]]
name = "after the hang"
run = "cat /run/vmrepro-marker; grep -lx sleep /proc/[0-9]*/comm || echo 'no sleep left'"
"#;

/// A step over its limit fails in about its limit, stopped inside the
/// guest (its processes gone), and the captures still come from the same
/// guest.
fn step_timeout() -> Result<(), Failed> {
    let dir = common::scratch_project(&[("hangs.toml", HANGS)])?;
    let project = dir.path();
    let output = vmrepro_saying(project)
        .args(["-v", "repro", "hangs"])
        .output()?;
    let text = said(&output);
    if output.status.code() != Some(i32::from(EXIT_FAIL)) {
        return Err(format!("expected a failure: {:?}\n{text}", output.status).into());
    }
    let report = String::from_utf8_lossy(&output.stdout);
    for needed in [
        "step 2 (hang) was still running after its 5s limit and was stopped in the guest",
        "started",
        "## Captures after the failure",
        "before the hang",
        "no sleep left",
        // Everything known by the time the step was stopped.
        "## Environment",
        "| QEMU | ",
        "| release | bookworm |",
        "qemu-system-x86_64 ",
        "## Steps",
        "## Time",
    ] {
        if !report.contains(needed) {
            return Err(format!("the report lacks {needed:?}:\n{text}").into());
        }
    }
    // From the progress lines: when the step started and when it was
    // given up.
    let at = |needle: &str| -> Option<f64> {
        text.lines().find(|l| l.contains(needle)).and_then(|l| {
            l.trim_start_matches('[')
                .split('s')
                .next()
                .and_then(|n| n.trim().parse().ok())
        })
    };
    let (Some(started), Some(failed)) = (at("step 2/2 (hang)"), at("(hang) failed")) else {
        return Err(format!("no progress lines for the step:\n{text}").into());
    };
    let took = failed - started;
    eprintln!("cli: a 5 s limit stopped the step after {took:.1}s");
    if !(4.5..12.0).contains(&took) {
        return Err(format!("the step was stopped after {took:.1}s, not about 5s:\n{text}").into());
    }
    Ok(())
}

/// The QEMU processes started for `project` (their command lines name its
/// artifacts).
fn qemu_of(project: &Path) -> Vec<String> {
    Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{}", project.display())])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `vmrepro` in a pseudo-terminal, as a person at a terminal does.
fn in_terminal(project: &Path, args: &[&str]) -> Result<rexpect::session::PtySession, Failed> {
    let mut command = vmrepro_saying(project);
    command.args(args).env("TERM", "xterm");
    Ok(rexpect::session::spawn_with_options(
        command,
        rexpect::reader::Options::new()
            .timeout_ms(Some(300_000))
            .strip_ansi_escape_codes(true),
    )?)
}

/// Leaves the interactive shell with Ctrl-], waits for vmrepro to end and
/// checks that its guest went with it.
fn leave(
    session: &mut rexpect::session::PtySession,
    project: &Path,
    status: i32,
) -> Result<(), Failed> {
    if qemu_of(project).is_empty() {
        return Err("no QEMU runs while the shell is open".into());
    }
    session.send_control(']')?;
    session.exp_string("left the shell; the guest is stopped")?;
    session.exp_eof()?;
    match session.process().wait()? {
        nix::sys::wait::WaitStatus::Exited(_, code) if code == status => {}
        other => return Err(format!("vmrepro ended with {other:?}, expected {status}").into()),
    }
    let left = qemu_of(project);
    if !left.is_empty() {
        return Err(format!("QEMU still runs after the shell: {left:?}").into());
    }
    Ok(())
}

/// `vmrepro shell`: a root shell a person can type into; Ctrl-] leaves it
/// and stops the guest.
fn shell_in_a_terminal() -> Result<(), Failed> {
    let dir = common::scratch_project(&[])?;
    let project = dir.path();
    let mut session = in_terminal(
        project,
        &["shell", "--release", "bookworm", "--kernel", "stock"],
    )?;
    session.exp_string("Ctrl-] leaves")?;
    session.exp_string("[vmrepro bookworm-stock] ~#")?;
    session.send_line("echo \"$((6 * 7)) as $(id -un)\"")?;
    session.exp_string("42 as root")?;
    leave(&mut session, project, 0)
}

const FAILS_AN_EXPECTATION: &str = r#"
name = "fails-an-expectation"
description = "An expectation that cannot hold, after a step that leaves a trace."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
run = "echo 'left by step 1' > /root/trace"
[[capture]]
name = "trace"
run = "cat /root/trace"
[expect.contains]
"trace" = ["what is not there"]
"#;

/// `repro --shell-fail` of a failing trial: the report, a line saying what
/// failed, then a root shell in that very guest.
fn shell_fail_in_a_terminal() -> Result<(), Failed> {
    let dir = common::scratch_project(&[("fails.toml", FAILS_AN_EXPECTATION)])?;
    let project = dir.path();
    let mut session = in_terminal(project, &["repro", "fails-an-expectation", "--shell-fail"])?;
    session.exp_string("**Verdict:** FAIL")?;
    session.exp_string("trace lacks \"what is not there\"")?;
    session.exp_string("the guest is kept as the failure left it")?;
    session.exp_string("[vmrepro bookworm-stock] ~#")?;
    session.send_line("cat /root/trace")?;
    session.exp_string("left by step 1")?;
    leave(&mut session, project, i32::from(EXIT_FAIL))
}

/// Without a terminal there is nobody to type into the shell: refused at
/// once, before anything boots.
fn shell_fail_refused() -> Result<(), Failed> {
    let dir = common::scratch_project(&[("fails.toml", FAILS_AN_EXPECTATION)])?;
    let project = dir.path();
    for args in [
        &["repro", "fails-an-expectation", "--shell-fail"][..],
        &["run", "fails-an-expectation", "--shell-fail"][..],
    ] {
        let started = Instant::now();
        let output = vmrepro(project).args(args).stdin(Stdio::null()).output()?;
        let text = said(&output);
        if output.status.code() != Some(2)
            || !text.contains("needs a terminal")
            || started.elapsed().as_secs() > 10
        {
            return Err(format!("{args:?}: {:?}\n{text}", output.status).into());
        }
    }
    Ok(())
}

const ANYWHERE: &str = r#"
name = "anywhere"
description = "A project that is only this file and a package built on the host."
packages = ["procps"]

[matrix]
releases = ["bookworm"]
kernels = ["stock"]

[[step]]
copy = "../files/hello-vmrepro.deb"
to = "/root/hello-vmrepro.deb"

[[step]]
run = "dpkg -i /root/hello-vmrepro.deb"

[[step]]
title = "a sysctl set for good"
run = "sysctl -w vm.swappiness=17 && echo 'vm.swappiness = 17' > /etc/sysctl.d/90-vmrepro.conf"

[[step]]
reboot = true

[[capture]]
name = "hello-vmrepro"
run = "dpkg-query -W -f '${Package} ${Version} ${Status}\n' hello-vmrepro; cat /usr/share/hello-vmrepro/greeting"

[[capture]]
name = "swappiness"
run = "sysctl vm.swappiness"

[expect]
survive_reboot = ["swappiness"]

[expect.contains]
"hello-vmrepro" = ["hello-vmrepro 1.2-3 install ok installed", "built on the host"]
"swappiness" = ["vm.swappiness = 17"]
"#;

/// Builds a small `.deb` with dpkg-deb, as a maintainer would before an
/// upload.
fn build_deb(dir: &Path) -> Result<std::path::PathBuf, Failed> {
    let tree = dir.join("pkg");
    common::copy_text(
        "Package: hello-vmrepro\nVersion: 1.2-3\nArchitecture: all\nMaintainer: Nobody <nobody@example.org>\nDescription: a package built on the host\n",
        &tree.join("DEBIAN/control"),
    )?;
    common::copy_text(
        "built on the host\n",
        &tree.join("usr/share/hello-vmrepro/greeting"),
    )?;
    let deb = dir.join("hello-vmrepro.deb");
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()?;
    if !built.status.success() {
        return Err(format!("dpkg-deb: {}", said(&built)).into());
    }
    std::fs::remove_dir_all(&tree)?;
    Ok(deb)
}

/// The installed binary in a folder that holds nothing but a scenario
/// (and the file it copies): no images/, no Cargo.toml. The first run is
/// NEW and writes the pending snapshot there, `vmrepro accept` accepts it,
/// the second run passes. On the way: a package added to the image, a
/// `.deb` built on the host copied in and installed.
fn project_anywhere() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let project = dir.path();
    common::copy_text(ANYWHERE, &project.join("scenarios/anywhere.toml"))?;
    build_deb(&project.join("files"))?;
    let run = |args: &[&str]| -> std::io::Result<Output> {
        let mut command = vmrepro_saying(project);
        command
            .env_remove("VMREPRO_ROOT")
            .current_dir(project)
            .arg("-q")
            .args(args);
        command.output()
    };
    let output = run(&["run", "anywhere", "--format", "json"])?;
    let text = said(&output);
    if output.status.code() != Some(i32::from(EXIT_FAIL))
        || !text.contains("\"status\": \"new\"")
        || !text.contains("vmrepro accept anywhere@bookworm-stock")
    {
        return Err(format!(
            "a first run must be NEW and say how to accept it: {:?}\n{text}",
            output.status
        )
        .into());
    }
    let pending = project.join("snapshots/anywhere@bookworm-stock.snap.new");
    let snapshot = std::fs::read_to_string(&pending)
        .map_err(|e| format!("{}: {e}\n{text}", pending.display()))?;
    for needed in [
        "hello-vmrepro 1.2-3 install ok installed",
        "vm.swappiness = 17",
    ] {
        if !snapshot.contains(needed) {
            return Err(format!("the pending snapshot lacks {needed:?}:\n{snapshot}").into());
        }
    }
    let output = run(&["accept", "anywhere"])?;
    if !output.status.success()
        || !project
            .join("snapshots/anywhere@bookworm-stock.snap")
            .exists()
    {
        return Err(format!("accept: {:?}\n{}", output.status, said(&output)).into());
    }
    // The same packages again: the image is found, not built.
    let started = Instant::now();
    let output = run(&["run", "anywhere"])?;
    if output.status.code() != Some(i32::from(EXIT_PASS)) {
        return Err(format!(
            "after accepting, a pass: {:?}\n{}",
            output.status,
            said(&output)
        )
        .into());
    }
    eprintln!(
        "cli: the second run, the image with procps reused, took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A scenario cannot carry a file from outside its project into a guest:
/// not by an absolute path, not by `..`, not by a symbolic link.
fn copy_stays_in_the_project() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("scenarios/files"))?;
    std::fs::write(dir.path().join("secret"), "not for guests")?;
    std::os::unix::fs::symlink(
        dir.path().join("secret"),
        project.join("scenarios/files/link"),
    )?;
    for (source, why) in [
        ("/etc/passwd", "relative to the scenario file"),
        ("../../secret", "outside the scenario's project"),
        ("files/link", "outside the scenario's project"),
        ("files", "leads out of the project by a symbolic link"),
    ] {
        let text = format!(
            "name = \"copies\"\ndescription = \"d\"\n[matrix]\nreleases = [\"bookworm\"]\nkernels = [\"stock\"]\n\n[[step]]\ncopy = \"{source}\"\nto = \"/root/x\"\n"
        );
        std::fs::write(project.join("scenarios/copies.toml"), text)?;
        let output = vmrepro(&project).args(["list"]).output()?;
        let said = said(&output);
        if output.status.code() != Some(2) || !said.contains("copies.toml:7") || !said.contains(why)
        {
            return Err(format!("copy = {source:?}: {:?}\n{said}", output.status).into());
        }
    }
    Ok(())
}

const ON_A_PROVIDERS_KERNEL: &str = r#"
name = "on-a-providers-kernel"
description = "A flavour that is only a file in images/kernels/: a kernel image and its initrd, by path."
[matrix]
releases = ["bookworm"]
kernels = ["provider"]
[[step]]
run = "echo kept > /etc/kept"
[[step]]
reboot = true
[[capture]]
name = "kept"
run = "cat /etc/kept"
[[capture]]
name = "kernel"
run = "uname -r"
[expect]
survive_reboot = ["kept"]
"#;

/// A kernel flavour defined only by `images/kernels/provider.toml`, naming
/// a kernel image and an initrd by path (here: the ones bookworm's image
/// was built with, copied into the project), boots and runs a scenario;
/// its release comes from the image's header.
fn kernel_by_path() -> Result<(), Failed> {
    let dir = common::scratch_project(&[("provider.toml", ON_A_PROVIDERS_KERNEL)])?;
    let project = dir.path();
    let cache = common::settings().cache();
    let p = Project::open(project).map_err(|e| e.to_string())?;
    let image =
        vmrepro::media::image::image(&cache, p.recipe("bookworm").map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let kernels = project.join("images/kernels");
    std::fs::create_dir_all(kernels.join("provider"))?;
    for file in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.dir.join(file), kernels.join("provider").join(file))?;
    }
    std::fs::write(
        kernels.join("provider.toml"),
        "image = \"provider/vmlinuz\"\ninitrd = \"provider/initrd.img\"\n",
    )?;
    let output = vmrepro(project)
        .args(["repro", "on-a-providers-kernel"])
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    let release = &image.manifest.stock_kernel_release;
    if output.status.code() != Some(i32::from(EXIT_FAIL))
        || !report.contains("**Verdict:** NEW")
        || !report.contains(&format!("| kernel | provider (`{release}`) |"))
    {
        return Err(format!("{:?}\n{}", output.status, said(&output)).into());
    }
    // An unknown flavour is named, with the known ones.
    std::fs::remove_file(kernels.join("provider.toml"))?;
    let output = vmrepro(project).args(["list"]).output()?;
    if output.status.code() != Some(2)
        || !said(&output).contains("unknown kernel flavour \"provider\" (known: stock, linode")
    {
        return Err(format!("{:?}\n{}", output.status, said(&output)).into());
    }
    Ok(())
}

/// Runs `vmrepro repro` on the one scenario of a scratch project; returns
/// the project, the output, the report it printed and how long it took.
fn repro_misbehaving(
    file: &str,
    text: &str,
) -> Result<(tempfile::TempDir, Output, String, f64), Failed> {
    let dir = common::scratch_project(&[(file, text)])?;
    let name = file.trim_end_matches(".toml");
    let started = Instant::now();
    let output = vmrepro(dir.path()).args(["repro", name]).output()?;
    let wall = started.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let took = guest_worked(&report).unwrap_or(wall);
    eprintln!(
        "cli: {name}: exit {:?} after {wall:.1}s, the guest's part {took:.1}s",
        output.status.code()
    );
    Ok((dir, output, report, took))
}

/// The seconds the guest worked in a trial, from its report's time table
/// ("The guest worked 29.0s of it"): the trial without what was built for
/// it first (an image, the kernel), which a fresh machine pays once, in
/// whichever test comes first. What the checks against it catch is a wait
/// for a timeout (minutes), not slowness.
fn guest_worked(report: &str) -> Option<f64> {
    report
        .split("The guest worked ")
        .nth(1)?
        .split_once("s of it")?
        .0
        .parse()
        .ok()
}

/// The pending snapshot a first run wrote.
fn pending_snapshot(project: &Path, name: &str) -> Result<String, Failed> {
    let path = project.join(format!("snapshots/{name}@bookworm-stock.snap.new"));
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn lacks(what: &str, needed: &str, text: &str) -> Failed {
    format!("the {what} lacks {needed:?}:\n{text}").into()
}

const DISK_FULL: &str = r#"
name = "disk-full"
description = "A step fills the root file system; what the guest says must still come back."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "fill the disk"
run = "dd if=/dev/zero of=/fill bs=1M 2>/dev/null || true; df --output=target,pcent / | tail -1"
[[capture]]
name = "df"
run = "df --output=target,pcent / | tail -1"
"#;

/// A scenario that fills the guest's disk: the step's status is its
/// command's (0), its output and the capture read the real `df` line.
fn disk_full() -> Result<(), Failed> {
    let (dir, output, report, _) = repro_misbehaving("disk-full.toml", DISK_FULL)?;
    let text = said(&output);
    // A first run: every expectation held, no snapshot yet.
    if !report.contains("**Verdict:** NEW") {
        return Err(lacks("report", "**Verdict:** NEW", &text));
    }
    let full = |text: &str, after: &str| {
        text.split_once(after)
            .and_then(|(_, rest)| rest.lines().find(|l| !l.trim().is_empty()))
            .is_some_and(|l| l.trim_start().starts_with('/') && l.trim_end().ends_with("100%"))
    };
    if !full(&report, "Output (exit 0):\n   ```") {
        return Err(lacks("report", "the step's df line at exit 0", &text));
    }
    let snapshot = pending_snapshot(dir.path(), "disk-full")?;
    if !full(&snapshot, "== df (exit 0) ==") {
        return Err(lacks("snapshot", "the df line", &snapshot));
    }
    Ok(())
}

const ESCAPES: &str = r#"
name = "escapes"
description = "A guest prints terminal escapes, control characters and random bytes."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "print a terminal title"
run = "printf 'title: \\033]0;pwned\\007 done\\n'"
[[capture]]
name = "noise"
run = """
printf '\\033]0;pwned\\007\\033]52;c;cHduZWQ=\\007\\033[2J\\033]8;;http://x\\033\\\\link\\n'
for i in $(seq 0 255); do printf "\\\\$(printf %o $i)"; done
printf '\\302\\233C1\\n'
head -c 4096 /dev/urandom
"""
"#;

/// Every byte from a guest is data: no ESC, BEL or other control byte in
/// the report, the snapshot or what the command printed.
fn guest_escapes() -> Result<(), Failed> {
    let (dir, output, report, _) = repro_misbehaving("escapes.toml", ESCAPES)?;
    let snapshot = pending_snapshot(dir.path(), "escapes")?;
    let artifacts_report = std::fs::read_to_string(
        dir.path()
            .join("target/vmrepro/escapes/bookworm-stock/report.md"),
    )
    .unwrap_or_default();
    for (what, bytes) in [
        ("standard output", output.stdout.as_slice()),
        ("standard error", output.stderr.as_slice()),
        ("snapshot", snapshot.as_bytes()),
        ("saved report", artifacts_report.as_bytes()),
    ] {
        let text = String::from_utf8_lossy(bytes);
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() && *c != '\n' && *c != '\t')
        {
            return Err(format!("the {what} holds the control character {c:?}:\n{text}").into());
        }
    }
    for needed in [
        "title: \\u{1b}]0;pwned\\u{7} done",
        "\\u{1b}]52;c;cHduZWQ=\\u{7}",
        "\\u{9b}C1",
    ] {
        if !report.contains(needed) {
            return Err(lacks("report", needed, &report));
        }
        if needed != "title: \\u{1b}]0;pwned\\u{7} done" && !snapshot.contains(needed) {
            return Err(lacks("snapshot", needed, &snapshot));
        }
    }
    Ok(())
}

const FLOOD: &str = r#"
name = "flood"
description = "A capture prints about 20 MB."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[capture]]
name = "numbers"
run = "seq 1 2900000"
max_output = "64 KiB"
"#;

/// A 20 MB capture comes back in seconds as its head, its tail and the
/// number of bytes between them.
fn flood() -> Result<(), Failed> {
    let (dir, output, report, took) = repro_misbehaving("flood.toml", FLOOD)?;
    let text = said(&output);
    if !report.contains("**Verdict:** NEW") {
        return Err(lacks("report", "**Verdict:** NEW", &text));
    }
    let total: usize = (1..=2_900_000u32).map(|n| n.to_string().len() + 1).sum();
    let omitted = format!("[… {} bytes omitted …]", total - 64 * 1024);
    let snapshot = pending_snapshot(dir.path(), "flood")?;
    for needed in [
        "== numbers (exit 0) ==\n1\n2\n3\n",
        &omitted,
        "\n2899999\n2900000\n",
    ] {
        if !snapshot.contains(needed) {
            return Err(lacks("snapshot", needed, &snapshot));
        }
    }
    if snapshot.len() > 80 * 1024 {
        return Err(format!("the snapshot holds {} bytes", snapshot.len()).into());
    }
    if took > 120.0 {
        return Err(format!("the trial took {took:.1}s").into());
    }
    Ok(())
}

const FORGED: &str = r#"
name = "forged"
description = "A step writes imitations of the harness's markers to every serial port and exits 3."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "forge"
run = """
for port in /dev/ttyS0 /dev/ttyS1 /dev/ttyS2 /dev/hvc0; do
  for n in $(seq 1 300); do printf 'VMRE-%s\\nVMRS-%s\\nVMRO-%s-0 0 0 0 0 - - - -\\n' $n $n $n; done > $port
done 2>/dev/null
exit 3
"""
"#;

/// Forged markers on the ports: the step reads "exited 3", at once.
fn forged_markers() -> Result<(), Failed> {
    let (_dir, output, report, took) = repro_misbehaving("forged.toml", FORGED)?;
    let text = said(&output);
    if output.status.code() != Some(i32::from(EXIT_FAIL)) {
        return Err(format!("expected a failure: {:?}\n{text}", output.status).into());
    }
    if !report.contains("step 1 (forge) exited 3, expected 0") {
        return Err(lacks(
            "report",
            "step 1 (forge) exited 3, expected 0",
            &text,
        ));
    }
    if took > 120.0 {
        return Err(format!("the trial took {took:.1}s").into());
    }
    Ok(())
}

/// A one-step scenario on bookworm × stock, for the guests that end.
fn ending(name: &str, steps: &str, expect: &str) -> String {
    format!(
        "name = \"{name}\"\ndescription = \"A guest that stops running the flow.\"\n[matrix]\nreleases = [\"bookworm\"]\nkernels = [\"stock\"]\n{steps}\n[[capture]]\nname = \"uptime\"\nrun = \"cat /proc/uptime\"\n{expect}\n"
    )
}

/// Runs a scenario whose guest ends; checks the exit status, that the
/// report and the verdict name what happened, and that nothing waited for a
/// timeout (every limit here is 120 s or more).
fn ends_named(
    name: &str,
    steps: &str,
    expect: &str,
    exit: u8,
    needed: &[&str],
    within: f64,
) -> Result<(), Failed> {
    let text = ending(name, steps, expect);
    let (_dir, output, report, took) = repro_misbehaving(&format!("{name}.toml"), &text)?;
    let said = said(&output);
    if output.status.code() != Some(i32::from(exit)) {
        return Err(format!("expected exit {exit}: {:?}\n{said}", output.status).into());
    }
    for needle in needed {
        if !report.contains(needle) {
            return Err(lacks("report", needle, &said));
        }
    }
    if took > within {
        return Err(format!("{name} took {took:.1}s, more than {within}s:\n{said}").into());
    }
    Ok(())
}

fn unexpected_emergency() -> Result<(), Failed> {
    ends_named(
        "emergency",
        "[[step]]\nrun = \"mkdir -p /srv/data; echo '/dev/disk/by-label/DATA /srv/data ext4 defaults,x-systemd.device-timeout=5 0 2' >> /etc/fstab\"\n[[step]]\nreboot = true\n",
        "",
        EXIT_FAIL,
        &[
            "FAIL: the guest did not come back after step 2: the guest is in emergency mode: Timed out waiting for device /dev/disk/by-label/DATA",
            "Dependency failed for /srv/data",
        ],
        240.0,
    )
}

fn panic_in_a_step() -> Result<(), Failed> {
    ends_named(
        "panic",
        "[[step]]\ntitle = \"crash the kernel\"\nrun = \"echo c > /proc/sysrq-trigger\"\n",
        "",
        EXIT_FAIL,
        &["step 1/1 (crash the kernel): the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash"],
        90.0,
    )
}

fn reboot_in_a_step() -> Result<(), Failed> {
    ends_named(
        "reboots",
        "[[step]]\ntitle = \"reboot from a command\"\nrun = \"systemctl reboot; sleep 60\"\n",
        "",
        EXIT_FAIL,
        &["step 1/1 (reboot from a command): the guest rebooted without a reboot step"],
        90.0,
    )
}

fn power_off_in_a_step() -> Result<(), Failed> {
    ends_named(
        "powers-off",
        "[[step]]\ntitle = \"power off from a command\"\nrun = \"systemctl poweroff; sleep 60\"\n",
        "",
        EXIT_FAIL,
        &["step 1/1 (power off from a command): the guest powered off"],
        90.0,
    )
}

fn killed_shell() -> Result<(), Failed> {
    // The login shell leads the session the commands run in.
    ends_named(
        "kills-its-shell",
        "[[step]]\ntitle = \"kill the control shell\"\nrun = \"kill -KILL $(cut -d' ' -f6 /proc/$$/stat)\"\n",
        "",
        EXIT_FAIL,
        &["step 1/1 (kill the control shell): the guest control shell died: a new login appeared in its place"],
        90.0,
    )
}

fn boot_loop() -> Result<(), Failed> {
    // A unit that reboots the machine early in every boot, before the
    // control shell's getty starts. Asserted, so the trial holds every
    // expectation: NEW only because a scratch project has no snapshot.
    ends_named(
        "boot-loop",
        "[[step]]\nwrite = \"/etc/systemd/system/reboot-again.service\"\ncontent = \"[Unit]\\nDefaultDependencies=no\\nAfter=local-fs.target\\n[Service]\\nType=oneshot\\nExecStart=/bin/systemctl --no-block reboot\\n[Install]\\nWantedBy=sysinit.target\\n\"\n[[step]]\nrun = \"systemctl --no-reload enable reboot-again.service\"\n[[step]]\nreboot = true\n",
        "[expect]\nboot = \"boot-loop\"\n",
        EXIT_FAIL,
        &[
            "**Verdict:** NEW: every expectation held",
            "did not come back: boot-loop",
            "### how the boot after step 3 ended (exit 0)",
        ],
        300.0,
    )
}

const DETACHED: &str = r#"
name = "detached"
description = "A data disk mounted from fstab is pulled out of the running guest; the next boot stops in emergency mode."
[matrix]
releases = ["bookworm"]
kernels = ["linode"]
[[disk]]
name = "data"
size = "16 MiB"
label = "DATA"
files = "data"
[[step]]
title = "mount the data disk from fstab and read it"
run = """
mkdir -p /srv/data
echo 'LABEL=DATA /srv/data ext4 defaults,x-systemd.device-timeout=5 0 2' >> /etc/fstab
mount /srv/data && cat /srv/data/hello.txt && stat -c '%U %a' /srv/data/hello.txt && umount /srv/data
"""
[[step]]
detach = "data"
[[step]]
title = "the disk is gone"
run = "! blkid -L DATA && ! ls /dev/sda"
[[step]]
reboot = true
[[capture]]
name = "block devices"
run = "lsblk -d -n -o NAME,TYPE | tr -s ' '"
[expect]
boot = "emergency"
"#;

/// A disk made from the project's folder, read in the guest, detached from
/// the running guest on the Linode-style kernel (no ACPI), and missed at
/// the next boot: emergency mode named at once, and the capture taken from
/// the shell opened there.
fn detached_disk() -> Result<(), Failed> {
    let dir = common::scratch_project(&[("detached.toml", DETACHED)])?;
    let data = dir.path().join("scenarios/data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("hello.txt"), "hello from the data disk\n")?;
    let started = Instant::now();
    let output = vmrepro(dir.path()).args(["repro", "detached"]).output()?;
    let wall = started.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let said = said(&output);
    let took = guest_worked(&report).ok_or_else(|| lacks("report", "its time table", &said))?;
    eprintln!(
        "cli: detached: exit {:?} after {wall:.1}s, the guest's part {took:.1}s",
        output.status.code()
    );
    for needle in [
        "**Verdict:** NEW: every expectation held",
        "did not come back: emergency (Timed out waiting for device /dev/disk/by-label/DATA)",
        "hello from the data disk\n   root 644",
        "Disk `data` unplugged from the running guest",
        "### Read from the guest in emergency mode",
        "Dependency failed for /srv/data",
    ] {
        if !report.contains(needle) {
            return Err(lacks("report", needle, &said));
        }
    }
    // The capture came from the emergency shell: the root disk only.
    let snapshot = std::fs::read_to_string(
        dir.path()
            .join("snapshots/detached@bookworm-linode.snap.new"),
    )?;
    if !snapshot.contains("== block devices (exit 0) ==\nvda disk\n") {
        return Err(lacks("snapshot", "the root disk alone", &snapshot));
    }
    if took > 240.0 {
        return Err(format!("the guest's part took {took:.1}s:\n{said}").into());
    }
    Ok(())
}

const LOSES: &str = r#"
name = "loses"
description = "Settings made by hand, which a reboot loses, and a unit that fails at boot; the scenario captures nothing."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "forward packets, by hand"
run = "echo 1 > /proc/sys/net/ipv4/ip_forward"
[[step]]
title = "a firewall rule, by hand"
run = "iptables -A INPUT -p tcp --dport 9 -j DROP"
[[step]]
write = "/etc/systemd/system/broken.service"
content = """
[Unit]
Description=A service that fails at boot
[Service]
Type=oneshot
ExecStart=/bin/false
[Install]
WantedBy=multi-user.target
"""
[[step]]
run = "systemctl --no-reload enable broken.service"
[[step]]
reboot = true
[expect]
unchanged = ["sysctl:net.ipv4.ip_forward", "mounts"]
"#;

/// With no capture at all, the report says what the reboot lost: the
/// setting, the rule and the failed unit; the expectation on the setting
/// fails naming it, the one on mounts holds.
fn reboot_loses() -> Result<(), Failed> {
    let (_dir, output, report, _) = repro_misbehaving("loses.toml", LOSES)?;
    let said = said(&output);
    if output.status.code() != Some(i32::from(EXIT_FAIL)) {
        return Err(format!("expected exit {EXIT_FAIL}: {:?}\n{said}", output.status).into());
    }
    for needle in [
        "FAIL: the reboot changed sysctl:net.ipv4.ip_forward — sysctl net.ipv4.ip_forward: 1 → 0",
        "(the reboot changed: failed: broken.service,",
        "## What the reboot changed",
        "- **broken.service failed** after the reboot",
        "Failed to start broken.service - A service that fails at boot.",
        "`sysctl net.ipv4.ip_forward: 1 → 0`",
        "iptables: lost `-A INPUT -p tcp -m tcp --dport 9 -j DROP`",
    ] {
        if !report.contains(needle) {
            return Err(lacks("report", needle, &said));
        }
    }
    if report.contains("the reboot changed mounts") {
        return Err(lacks("report", "mounts unchanged", &said));
    }
    Ok(())
}

const PORTS: &str = r#"
name = "ports"
description = """
What a client outside the guest meets on four ports: a socket-activated
service, a port nothing listens on, one a firewall drops and one a
firewall rejects with a reset.
"""
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "serve a line of text on tcp/8080 through socket activation"
run = """
printf '[Socket]\\nListenStream=8080\\nAccept=yes\\n' > /etc/systemd/system/hello.socket
printf '[Service]\\nExecStart=/bin/echo hello\\nStandardOutput=socket\\n' > /etc/systemd/system/hello@.service
systemctl start hello.socket
"""
[[step]]
title = "drop tcp/8082, reject tcp/8083 with a reset"
run = """
iptables -A INPUT -p tcp --dport 8082 -j DROP
iptables -A INPUT -p tcp --dport 8083 -j REJECT --reject-with tcp-reset
"""
[[capture]]
name = "served"
probe_tcp = 8080
[[capture]]
name = "nothing listens"
probe_tcp = 8081
[[capture]]
name = "dropped"
probe_tcp = 8082
[[capture]]
name = "rejected"
probe_tcp = 8083
"#;

/// The probes of one round wait together and stop waiting once the guest
/// has dealt with their SYNs: each port still reads as what it is.
fn ports_from_outside() -> Result<(), Failed> {
    let (dir, output, _, _) = repro_misbehaving("ports.toml", PORTS)?;
    let snapshot = pending_snapshot(dir.path(), "ports")?;
    for needle in [
        "== served (exit 0) ==\nopen\n",
        "== nothing listens (exit 0) ==\nrefused\n",
        "== dropped (exit 0) ==\nno answer\n",
        "== rejected (exit 0) ==\nrefused\n",
    ] {
        if !snapshot.contains(needle) {
            return Err(lacks(
                "snapshot",
                needle,
                &format!("{snapshot}\n{}", said(&output)),
            ));
        }
    }
    Ok(())
}

const RUN_FULL: &str = r#"
name = "run-full"
description = "A step fills /run, the memory file system the harness keeps its files in."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
title = "fill /run"
run = "dd if=/dev/zero of=/run/fill bs=1M 2>/dev/null; df --output=pcent /run | tail -n 1"
[[step]]
title = "a step after it"
run = "echo still here"
[[capture]]
name = "/run"
run = "df --output=pcent /run | tail -n 1"
"#;

/// A step that fills /run: its status stands and the report says its
/// output is lost; the harness moves to another home, and the step after
/// it and the capture read the real state.
fn run_full() -> Result<(), Failed> {
    let (dir, output, report, _) = repro_misbehaving("run-full.toml", RUN_FULL)?;
    let text = said(&output);
    for needle in [
        "**Verdict:** NEW",
        "[… what the command printed is lost: the guest could not record what the command printed in /run/vmrepro, which is full or read-only …]",
        "still here",
    ] {
        if !report.contains(needle) {
            return Err(lacks("report", needle, &text));
        }
    }
    let snapshot = pending_snapshot(dir.path(), "run-full")?;
    if !snapshot.contains("== /run (exit 0) ==\n100%\n") {
        return Err(lacks("snapshot", "/run at 100%", &snapshot));
    }
    Ok(())
}
