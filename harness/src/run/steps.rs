//! The step interpreter: a scenario's steps on a booted guest, the
//! captures before its last reboot and at the end, and what a failed step
//! or a boot that did not come back leaves to report.
//!
//! It asks the guest for what it needs through [`Machine`], which the real
//! guest ([`Live`]: its console and its QEMU) implements, and so does the
//! unit tests' stand-in (a local shell, with boots and disks scripted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::check::capture::{self, Capture, Taken};
use crate::check::evidence;
use crate::check::outcome::{NotBack, StepRecord, Timings};
use crate::guest::console::{CommandOutput, Console, ConsoleError};
use crate::guest::vm::{Vm, VmError};
use crate::host::progress::Events;
use crate::project::{Action, CaptureSpec, Cell, Expectations, GuestEnd, Scenario, StepStatus};

use super::cell::{RunError, StepFailure, StepProblem, SETTLE_TIMEOUT};

/// What the steps ask of a booted guest.
pub(super) trait Machine {
    /// The root shell on the control port: scripts, files written and
    /// copied in.
    fn console(&mut self) -> &mut Console;
    /// Pulls a disk out of the running machine (see [`Vm::detach`]).
    fn detach(&mut self, disk: &str, timeout: Duration) -> Result<(), VmError>;
    /// Reboots and waits for the new boot's shell (see
    /// [`Console::reboot`]).
    fn reboot(&mut self, what: &str, timeout: Duration) -> Result<(), ConsoleError>;
    /// Waits for systemd to finish starting; says the state it reached
    /// (see [`Console::wait_settled`]).
    fn wait_settled(&mut self, what: &str, timeout: Duration) -> Result<String, ConsoleError>;
    /// Where a quiet guest's processor is, as QEMU tells it.
    fn processor(&mut self) -> Result<String, VmError>;
    /// The kernel console's log file.
    fn console_log(&self) -> PathBuf;
    /// Whether QEMU still runs, given up to `grace` to end if it is going
    /// away (see [`Vm::check_running_within`]); an error describes its exit.
    fn check_running_within(&mut self, grace: Duration) -> Result<(), VmError>;
    /// Types on the kernel console, as at its keyboard.
    fn type_on_console(&mut self, text: &str) -> Result<(), VmError>;
    /// Waits for a control shell started from the emergency or rescue mode
    /// the boot ended in (see [`Console::wait_examination_shell`]).
    fn wait_examination_shell(&mut self, what: &str, timeout: Duration)
        -> Result<(), ConsoleError>;
    /// One round of captures, with `extra` scripts after them (see
    /// [`capture::take`]).
    fn capture(
        &mut self,
        specs: &[CaptureSpec],
        when: &str,
        extra: &[(String, String)],
    ) -> Result<Taken, ConsoleError>;
}

/// A guest running in QEMU, driven through its control port.
pub(super) struct Live<'a> {
    pub(super) console: &'a mut Console,
    pub(super) vm: &'a mut Vm,
}

impl Machine for Live<'_> {
    fn console(&mut self) -> &mut Console {
        self.console
    }

    fn detach(&mut self, disk: &str, timeout: Duration) -> Result<(), VmError> {
        self.vm.detach(disk, timeout)
    }

    fn reboot(&mut self, what: &str, timeout: Duration) -> Result<(), ConsoleError> {
        self.console.reboot(what, timeout)
    }

    fn wait_settled(&mut self, what: &str, timeout: Duration) -> Result<String, ConsoleError> {
        self.console.wait_settled(what, timeout)
    }

    fn processor(&mut self) -> Result<String, VmError> {
        self.vm.processor()
    }

    fn console_log(&self) -> PathBuf {
        self.vm.console_log().to_owned()
    }

    fn check_running_within(&mut self, grace: Duration) -> Result<(), VmError> {
        self.vm.check_running_within(grace)
    }

    fn type_on_console(&mut self, text: &str) -> Result<(), VmError> {
        self.vm.type_on_console(text)
    }

    fn wait_examination_shell(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<(), ConsoleError> {
        self.console.wait_examination_shell(what, timeout)
    }

    fn capture(
        &mut self,
        specs: &[CaptureSpec],
        when: &str,
        extra: &[(String, String)],
    ) -> Result<Taken, ConsoleError> {
        capture::take(self.console, self.vm, specs, when, extra)
    }
}

/// Where the steps say what they do and keep their time.
pub(super) struct Ledger<'a> {
    /// The progress events.
    pub(super) events: &'a Events,
    /// The trial's name in them.
    pub(super) label: &'a str,
    /// The trial's time table, filled in as the flow goes.
    pub(super) timings: &'a mut Timings,
    /// `uname -r` in the guest, once a round of captures has read it.
    pub(super) kernel_release: &'a mut Option<String>,
}

/// Runs a scenario's steps, recording what each did in `steps` (so that a
/// failure still shows the steps before it), and takes the captures (and
/// the evidence) just before the last reboot. A step that fails (wrong exit
/// status, its time run out, a wait that ended in failure) ends the flow
/// with [`RunError::Step`]; the captures are still taken, from the guest as
/// the failure left it, for the report. A reboot whose boot does not reach
/// the shell ends the flow too, in [`Flow::not_back`]: what the scenario
/// finds, for the expectations to judge.
pub(super) fn run(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    scenario: &Scenario,
    cell: &Cell,
    steps: &mut Vec<StepRecord>,
) -> Result<Flow, RunError> {
    let label = ledger.label;
    let last_reboot = scenario
        .steps
        .iter()
        .rposition(|s| s.action == Action::Reboot);
    let total = scenario.steps.len();
    let mut before_reboot = Vec::new();
    let mut evidence_before = None;
    let evidence = evidence_scripts(scenario, evidence::Moment::BeforeReboot);
    for (i, step) in scenario.steps.iter().enumerate() {
        let index = i + 1;
        let what = format!("step {index}/{total} ({})", step.title);
        if Some(i) == last_reboot && (!scenario.captures.is_empty() || !evidence.is_empty()) {
            ledger
                .events
                .note(label, "capturing state before the reboot");
            let capturing = Instant::now();
            let taken = machine.capture(&scenario.captures, "before the reboot", &evidence)?;
            *ledger.kernel_release = Some(taken.facts.kernel_release);
            before_reboot = taken.captures;
            evidence_before = taken.extra.first().map(|out| out.stdout.clone());
            ledger.timings.captures_before += capturing.elapsed().as_secs_f64();
        }
        ledger.events.note(label, &what);
        let step_started = Instant::now();
        let expected = step.status_for(cell);
        let ran = match &step.action {
            Action::Run { command, .. } => machine.console().run(&what, command, step.timeout),
            Action::Write {
                path,
                content,
                mode,
            } => machine
                .console()
                .write_file(&what, path, content, *mode, step.timeout),
            Action::Copy { from, source, to } => {
                let events = ledger.events.clone();
                let mut last_said = Instant::now();
                let console = machine.console();
                crate::guest::transfer::copy_in(
                    console,
                    &what,
                    source,
                    to,
                    step.timeout,
                    &mut |sent, total| {
                        // Only what takes a while is worth a line.
                        if total > 1 << 20 && last_said.elapsed() > Duration::from_secs(2) {
                            last_said = Instant::now();
                            events.note(
                                label,
                                &format!(
                                    "copying {from}: {:.1} of {:.1} MiB",
                                    sent as f64 / 1048576.0,
                                    total as f64 / 1048576.0
                                ),
                            );
                        }
                    },
                )
            }
            Action::WaitForUnit { unit, state } => {
                machine
                    .console()
                    .run(&what, &wait_for_unit_script(unit, state), step.timeout)
            }
            Action::WaitUntil { command } => {
                machine
                    .console()
                    .run(&what, &wait_until_script(command), step.timeout)
            }
            Action::Detach { disk } => {
                // QEMU removes the device at once; the guest's kernel lets
                // go of it a moment later, and a step after this one must
                // find it gone.
                machine.detach(disk, DETACH_TIMEOUT)?;
                machine
                    .console()
                    .run(&what, &detached_script(disk), step.timeout)
            }
            Action::Reboot => {
                match machine.reboot(&what, step.timeout) {
                    Ok(()) => {}
                    // A boot that ends anywhere but at the shell is what
                    // the scenario finds, not a fault of the harness: the
                    // flow ends here, and the expectations judge it.
                    Err(ConsoleError::GuestEnded {
                        mut ended,
                        console_tail,
                        ..
                    }) => {
                        if ended.end == GuestEnd::Hung {
                            // The console cannot say what a silent guest
                            // does; QEMU can say where its processor is.
                            ended.processor = Some(machine.processor().unwrap_or_else(|e| {
                                format!("QEMU did not say where its processor is: {e}")
                            }));
                        }
                        let seconds = step_started.elapsed().as_secs_f64();
                        ledger.timings.reboot_to_shell += seconds;
                        ledger.events.note(label, &format!("{what}: {ended}"));
                        steps.push(StepRecord {
                            title: step.title.clone(),
                            action: step.action.clone(),
                            output: None,
                            expected,
                            seconds,
                        });
                        return Ok(Flow {
                            before_reboot,
                            evidence_before,
                            not_back: Some(NotBack {
                                step: index,
                                ended: *ended,
                                console_tail,
                                examined: None,
                            }),
                        });
                    }
                    Err(other) => return Err(other.into()),
                }
                let shell = step_started.elapsed().as_secs_f64();
                let state = machine.wait_settled(
                    &format!("{what}: systemd to finish booting"),
                    SETTLE_TIMEOUT,
                )?;
                let seconds = step_started.elapsed().as_secs_f64();
                ledger.timings.reboot_to_shell += shell;
                ledger.timings.reboot_settle += seconds - shell;
                ledger.events.note(
                    label,
                    &format!("shell after {shell:.1}s, system {state} after {seconds:.1}s"),
                );
                steps.push(StepRecord {
                    title: step.title.clone(),
                    action: step.action.clone(),
                    output: None,
                    expected,
                    seconds: step_started.elapsed().as_secs_f64(),
                });
                continue;
            }
        };
        // A command that ran to its end but whose output the guest could
        // not keep (it filled the harness's memory file system, say) has
        // its status: the step is judged by it, and says what was lost.
        let ran = match ran {
            Err(ConsoleError::Unrecorded {
                status: Some(status),
                detail,
                ..
            }) => {
                ledger.events.note(
                    label,
                    &format!("{what}: exit status {status}; what it printed is lost"),
                );
                Ok(CommandOutput {
                    stdout: format!(
                        "[… what the command printed is lost: the guest could not {detail} …]\n"
                    ),
                    stderr: String::new(),
                    status,
                })
            }
            other => other,
        };
        // Writes and waits have no status of their own to expect: they
        // must succeed.
        let must = expected.unwrap_or(StepStatus::Exactly(0));
        let problem = match ran {
            Ok(out) if must.accepts(out.status) => {
                let seconds = step_started.elapsed().as_secs_f64();
                ledger.timings.steps += seconds;
                if step.action.is_wait() {
                    ledger.events.note(label, &format!("waited {seconds:.1}s"));
                }
                steps.push(StepRecord {
                    title: step.title.clone(),
                    action: step.action.clone(),
                    output: Some(out),
                    expected,
                    seconds,
                });
                continue;
            }
            Ok(out) => StepProblem::Status {
                got: out.status,
                expected: must,
                stdout: out.stdout,
                stderr: out.stderr,
            },
            Err(ConsoleError::GuestTimeout {
                waited,
                stdout_tail,
                stderr_tail,
                ..
            }) => StepProblem::TimedOut {
                after: waited,
                stdout: stdout_tail,
                stderr: stderr_tail,
            },
            Err(other) => return Err(other.into()),
        };
        // The failed step and the captures after it are the guest's work
        // too, in the report's time table.
        ledger.timings.steps += step_started.elapsed().as_secs_f64();
        ledger.events.note(
            label,
            &format!("{what} failed; capturing the state it left"),
        );
        let capturing = Instant::now();
        let captures = machine
            .capture(&scenario.captures, "after the failed step", &[])
            .map(|taken| {
                *ledger.kernel_release = Some(taken.facts.kernel_release);
                taken.captures
            })
            .map_err(|e| e.to_string());
        ledger.timings.captures_after += capturing.elapsed().as_secs_f64();
        return Err(RunError::Step(Box::new(StepFailure {
            index,
            title: step.title.clone(),
            problem,
            captures,
        })));
    }
    Ok(Flow {
        before_reboot,
        evidence_before,
        not_back: None,
    })
}

/// What the captures at the end found.
pub(super) struct Finished {
    /// The evidence before and after the last reboot, and what differs.
    pub(super) evidence: Option<Read>,
    /// The scenario's captures.
    pub(super) captures: Vec<Capture>,
    /// The states of the units the expectations name.
    pub(super) units: BTreeMap<String, String>,
}

/// The captures at the end of a flow that came back, with the states of
/// the units the cell's expectations name and the evidence after the
/// reboot, all in one round trip.
pub(super) fn finish(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    scenario: &Scenario,
    expect: &Expectations,
    evidence_before: Option<String>,
) -> Result<Finished, RunError> {
    ledger.events.note(ledger.label, "capturing state");
    let capturing = Instant::now();
    let unit_scripts = expect.units.keys().map(|unit| {
        (
            format!("reading the state of {unit}"),
            format!("systemctl is-active {}", crate::text::shell_quote(unit)),
        )
    });
    let evidence = if evidence_before.is_some() {
        evidence_scripts(scenario, evidence::Moment::AfterReboot)
    } else {
        Vec::new()
    };
    let extra: Vec<(String, String)> = unit_scripts.chain(evidence).collect();
    let taken = machine.capture(&scenario.captures, "at the end", &extra)?;
    ledger.timings.captures_after = capturing.elapsed().as_secs_f64();
    let units = expect
        .units
        .keys()
        .zip(&taken.extra)
        .map(|(unit, out)| (unit.clone(), out.stdout.trim().to_owned()))
        .collect();
    let evidence = evidence_before.and_then(|before| {
        let after = taken.extra.get(expect.units.len())?.stdout.clone();
        let changes = evidence::compare(
            &evidence::Evidence::parse(&before),
            &evidence::Evidence::parse(&after),
        );
        Some(Read {
            before,
            after,
            changes,
        })
    });
    *ledger.kernel_release = Some(taken.facts.kernel_release);
    Ok(Finished {
        evidence,
        captures: taken.captures,
        units,
    })
}

/// The harness's own reading of what a reboot can change, as an extra
/// script for a round of captures, for a scenario that reboots and keeps
/// any source.
fn evidence_scripts(scenario: &Scenario, moment: evidence::Moment) -> Vec<(String, String)> {
    let sources = &scenario.evidence.sources;
    if sources.is_empty() || !scenario.steps.iter().any(|s| s.action == Action::Reboot) {
        return Vec::new();
    }
    let when = match moment {
        evidence::Moment::BeforeReboot => "before the reboot",
        evidence::Moment::AfterReboot => "at the end",
    };
    vec![(
        format!("reading what a reboot can change ({when})"),
        evidence::script(sources, moment),
    )]
}

/// How the steps went, when none failed.
pub(super) struct Flow {
    /// The captures taken just before the last reboot.
    pub(super) before_reboot: Vec<Capture>,
    /// The evidence read just before the last reboot, as the guest printed
    /// it.
    pub(super) evidence_before: Option<String>,
    /// A reboot whose boot did not reach the shell; the flow ended there.
    pub(super) not_back: Option<NotBack>,
}

/// How long QEMU may take to confirm a disk's removal.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest side of the steps that wait (`steps.sh`).
const WAITS: &str = include_str!("steps.sh");

/// A script that calls `function` of `steps.sh` with `args`.
fn waiting(function: &str, args: &[&str]) -> String {
    let mut script = format!("{WAITS}{function}");
    for arg in args {
        script.push(' ');
        script.push_str(&crate::text::shell_quote(arg));
    }
    script.push('\n');
    script
}

/// Waits until the guest's kernel no longer has the disk with serial
/// `name`.
fn detached_script(name: &str) -> String {
    waiting("wait_detached", &[name])
}

/// Polls a unit's state in the guest until it is `state`. Prints each state
/// it sees, so a wait that runs out of time shows where the unit stood.
fn wait_for_unit_script(unit: &str, state: &str) -> String {
    waiting("wait_for_unit", &[unit, state])
}

/// Runs `command` in the guest every half second until it succeeds.
fn wait_until_script(command: &str) -> String {
    waiting("wait_until", &[command])
}

/// The evidence of the boots before and after the last reboot, as the
/// guest printed it, and what differs.
pub(super) struct Read {
    pub(super) before: String,
    pub(super) after: String,
    pub(super) changes: evidence::Changes,
}

#[cfg(test)]
mod tests {
    //! The interpreter against the stand-in guest of [`crate::run::stand`].

    use super::*;
    use crate::run::stand::{dir, ended_in, scenario, Stand};

    /// What a flow left: its result, the step records, the time table.
    struct Ran {
        result: Result<Flow, RunError>,
        records: Vec<StepRecord>,
        timings: Timings,
        kernel_release: Option<String>,
    }

    fn run_on(stand: &mut Stand, scenario: &Scenario) -> Ran {
        let cell = scenario.matrix.cells()[0].clone();
        let (mut records, mut timings, mut kernel_release) = (Vec::new(), Timings::default(), None);
        let result = run(
            stand,
            &mut Ledger {
                events: &Events::silent(),
                label: "x bookworm/stock",
                timings: &mut timings,
                kernel_release: &mut kernel_release,
            },
            scenario,
            &cell,
            &mut records,
        );
        Ran {
            result,
            records,
            timings,
            kernel_release,
        }
    }

    fn ended(end: GuestEnd) -> ConsoleError {
        ConsoleError::GuestEnded {
            what: "step 2/3 (reboot)".into(),
            ended: Box::new(ended_in(end)),
            console_tail: "You are in emergency mode.".into(),
        }
    }

    #[test]
    fn every_kind_of_step_runs_in_order() {
        let (_keep, dir) = dir();
        std::fs::write(dir.join("units/hello.socket"), "active").expect("unit");
        std::fs::create_dir_all(dir.join("files")).expect("files");
        std::fs::write(dir.join("files/motd"), "from the host\n").expect("motd");
        let scenario = scenario(
            &dir,
            r#"
[[disk]]
name = "data"
size = "32 MiB"

[[step]]
run = "echo hello; echo to-stderr >&2"

[[step]]
write = "{dir}/guest/etc/app.conf"
content = "level = 3\n"
mode = "0600"

[[step]]
copy = "files/motd"
to = "{dir}/guest/etc/motd"

[[step]]
wait_for_unit = "hello.socket"

[[step]]
run = "touch {dir}/ready"

[[step]]
wait_until = "test -e {dir}/ready"

[[step]]
detach = "data"

[[step]]
reboot = true

[[capture]]
name = "config"
run = "cat {dir}/guest/etc/app.conf"
"#,
        );
        let mut stand = Stand::new(&dir);
        let ran = run_on(&mut stand, &scenario);
        let flow = ran.result.expect("the flow");
        assert!(flow.not_back.is_none());
        // The captures before the reboot are taken once, just before it.
        assert_eq!(
            stand.asked,
            [
                "detach data",
                "capture before the reboot",
                "reboot",
                "settle"
            ]
        );
        assert_eq!(flow.before_reboot.len(), 1);
        assert_eq!(flow.before_reboot[0].text, "level = 3\n");
        assert_eq!(ran.kernel_release.as_deref(), Some("6.1.0-stand-in"));
        // The evidence (the units' states only) was read with them.
        let before = flow.evidence_before.expect("evidence before the reboot");
        assert!(before.contains("hello.socket loaded active"), "{before}");

        let outputs: Vec<Option<&str>> = ran
            .records
            .iter()
            .map(|r| r.output.as_ref().map(|o| o.stdout.as_str()))
            .collect();
        assert_eq!(ran.records.len(), 8);
        assert_eq!(outputs[0], Some("hello\n"));
        assert_eq!(
            ran.records[0].output.as_ref().map(|o| o.stderr.as_str()),
            Some("to-stderr\n")
        );
        assert_eq!(outputs[3], Some("hello.socket: active\n"));
        assert_eq!(outputs[6], Some("the guest no longer has disk data\n"));
        assert_eq!(outputs[7], None, "a reboot prints nothing of its own");
        let conf = dir.join("guest/etc/app.conf");
        assert_eq!(std::fs::read_to_string(&conf).expect("conf"), "level = 3\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&conf).expect("mode").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join("guest/etc/motd")).expect("motd"),
            "from the host\n"
        );
        assert!(ran.timings.steps > 0.0 && ran.timings.reboot_to_shell >= 0.0);
    }

    #[test]
    fn a_step_with_a_status_the_cell_does_not_expect_ends_the_flow_with_the_captures() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            r#"
[[step]]
run = "exit 1"
status = "any"

[[step]]
run = "echo 2 > {dir}/state; exit 2"
status = 2

[[step]]
title = "the failing one"
run = "echo out; echo err >&2; exit 3"

[[step]]
run = "touch {dir}/not-reached"

[[step]]
reboot = true

[[capture]]
name = "state"
run = "cat {dir}/state"
"#,
        );
        let mut stand = Stand::new(&dir);
        let ran = run_on(&mut stand, &scenario);
        let Err(RunError::Step(failure)) = ran.result else {
            panic!("a step failure, not {:?}", ran.result.err());
        };
        assert_eq!(
            (failure.index, failure.title.as_str()),
            (3, "the failing one")
        );
        let StepProblem::Status {
            got,
            expected,
            stdout,
            stderr,
        } = &failure.problem
        else {
            panic!("{:?}", failure.problem);
        };
        assert_eq!(
            (*got, *expected, stdout.as_str(), stderr.as_str()),
            (3, StepStatus::Exactly(0), "out\n", "err\n")
        );
        // The state the failure left is captured; nothing after it runs.
        let captures = failure.captures.as_ref().expect("captures");
        assert_eq!(captures[0].text, "2\n");
        assert_eq!(stand.asked, ["capture after the failed step"]);
        assert!(!dir.join("not-reached").exists());
        assert_eq!(ran.records.len(), 2, "the steps that passed are recorded");
        assert_eq!(ran.records[0].output.as_ref().map(|o| o.status), Some(1));
        let message = failure.to_string();
        assert!(
            message.starts_with(
                "step 3 (the failing one) exited 3, expected 0\n--- stdout ---\nout\n"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_step_past_its_time_is_stopped_and_the_guest_still_captured() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            r#"
[[step]]
run = "echo started; sleep 30"
timeout = 1

[[capture]]
name = "after"
run = "echo the shell still answers"
"#,
        );
        let mut stand = Stand::new(&dir);
        let started = Instant::now();
        let ran = run_on(&mut stand, &scenario);
        assert!(started.elapsed() < Duration::from_secs(20));
        let Err(RunError::Step(failure)) = ran.result else {
            panic!("a step failure, not {:?}", ran.result.err());
        };
        let StepProblem::TimedOut { after, stdout, .. } = &failure.problem else {
            panic!("{:?}", failure.problem);
        };
        assert_eq!(*after, Duration::from_secs(1));
        assert_eq!(stdout, "started");
        assert_eq!(
            failure.captures.as_ref().expect("captures")[0].text,
            "the shell still answers\n"
        );
    }

    #[test]
    fn waits_end_in_failure_when_what_they_wait_for_cannot_come() {
        let (_keep, dir) = dir();
        std::fs::write(dir.join("units/hello.service"), "failed").expect("unit");
        let scenario = scenario(
            &dir,
            r#"
[[step]]
wait_for_unit = "hello.service"
"#,
        );
        let mut stand = Stand::new(&dir);
        let ran = run_on(&mut stand, &scenario);
        let Err(RunError::Step(failure)) = ran.result else {
            panic!("a step failure, not {:?}", ran.result.err());
        };
        let StepProblem::Status {
            got,
            stdout,
            stderr,
            ..
        } = &failure.problem
        else {
            panic!("{:?}", failure.problem);
        };
        assert_eq!(*got, 1);
        assert_eq!(stdout, "hello.service: failed\n");
        assert_eq!(stderr, "hello.service failed while waiting for active\n");

        // A wait for a command shows where the command stood when its time
        // ran out.
        let scenario = self::scenario(
            &dir,
            r#"
[[step]]
wait_until = "echo not there; test -e {dir}/never"
timeout = 2
"#,
        );
        let ran = run_on(&mut stand, &scenario);
        let Err(RunError::Step(failure)) = ran.result else {
            panic!("a step failure, not {:?}", ran.result.err());
        };
        let StepProblem::TimedOut { stdout, .. } = &failure.problem else {
            panic!("{:?}", failure.problem);
        };
        assert_eq!(stdout, "not yet: exit 1\nnot there");
    }

    #[test]
    fn a_reboot_that_does_not_come_back_ends_the_flow_for_the_expectations() {
        let (_keep, dir) = dir();
        let text = r#"
[[step]]
run = "echo before"

[[step]]
reboot = true

[[step]]
run = "touch {dir}/not-reached"

[[step]]
reboot = true

[[capture]]
name = "c"
run = "echo c"
"#;
        let scenario = scenario(&dir, text);
        let mut stand = Stand::new(&dir);
        stand.reboots.push_back(Err(ended(GuestEnd::Emergency)));
        let ran = run_on(&mut stand, &scenario);
        let flow = ran.result.expect("the flow ends, not the run");
        let not_back = flow.not_back.expect("not back");
        assert_eq!(not_back.step, 2);
        assert_eq!(not_back.ended.end, GuestEnd::Emergency);
        assert_eq!(not_back.ended.processor, None);
        assert_eq!(not_back.console_tail, "You are in emergency mode.");
        // The last reboot never came, so neither did the captures before
        // it, and the step after the failed reboot did not run.
        assert!(flow.before_reboot.is_empty());
        assert_eq!(stand.asked, ["reboot"]);
        assert!(!dir.join("not-reached").exists());
        assert_eq!(ran.records.len(), 2);
        assert!(ran.records[1].output.is_none());

        // A hung guest is looked at through QEMU as well.
        let mut stand = Stand::new(&dir);
        stand.reboots.push_back(Err(ended(GuestEnd::Hung)));
        let flow = run_on(&mut stand, &scenario).result.expect("the flow");
        let processor = flow.not_back.expect("not back").ended.processor;
        assert_eq!(
            processor.as_deref(),
            Some("its processor is in long mode, at 1000 in both looks")
        );
        assert_eq!(stand.asked, ["reboot", "processor"]);
    }

    #[test]
    fn what_the_harness_cannot_go_on_from_is_the_runs_error() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            r#"
[[disk]]
name = "data"
size = "32 MiB"

[[step]]
detach = "data"
"#,
        );
        let mut stand = Stand::new(&dir);
        stand.detach_refused = true;
        let ran = run_on(&mut stand, &scenario);
        assert!(
            matches!(ran.result, Err(RunError::Vm(VmError::Monitor { .. }))),
            "{:?}",
            ran.result.err()
        );

        let scenario = self::scenario(&dir, "[[step]]\nreboot = true\n");
        let mut stand = Stand::new(&dir);
        stand.reboots.push_back(Err(ConsoleError::Closed {
            what: "step 1/1 (reboot)".into(),
            console_tail: String::new(),
        }));
        let ran = run_on(&mut stand, &scenario);
        assert!(
            matches!(
                ran.result,
                Err(RunError::Console(ConsoleError::Closed { .. }))
            ),
            "{:?}",
            ran.result.err()
        );

        // Captures that cannot be taken after a failed step are said so in
        // the failure; the failure is still the step's.
        let scenario = self::scenario(
            &dir,
            "[[step]]\nrun = \"exit 4\"\n\n[[capture]]\nname = \"c\"\nrun = \"echo c\"\n",
        );
        let mut stand = Stand::new(&dir);
        stand.captures_fail = true;
        let Err(RunError::Step(failure)) = run_on(&mut stand, &scenario).result else {
            panic!("a step failure");
        };
        let why = failure.captures.expect_err("no captures");
        assert!(why.contains("No space left on device"), "{why}");
    }

    #[test]
    fn the_end_reads_the_units_and_what_the_reboot_changed() {
        let (_keep, dir) = dir();
        std::fs::write(dir.join("units/hello.service"), "active").expect("unit");
        std::fs::write(dir.join("units/steady.service"), "active").expect("unit");
        let scenario = scenario(
            &dir,
            r#"
[[step]]
reboot = true

[[capture]]
name = "c"
run = "echo c"

[expect]
units = { "hello.service" = "failed", "steady.service" = "active" }
"#,
        );
        let mut stand = Stand::new(&dir);
        stand.at_boot = format!("echo failed > {}/units/hello.service", dir.display());
        let cell = scenario.matrix.cells()[0].clone();
        let flow = run_on(&mut stand, &scenario).result.expect("the flow");
        let (mut timings, mut kernel_release) = (Timings::default(), None);
        let finished = finish(
            &mut stand,
            &mut Ledger {
                events: &Events::silent(),
                label: "x",
                timings: &mut timings,
                kernel_release: &mut kernel_release,
            },
            &scenario,
            &scenario.expectations_for(&cell),
            flow.evidence_before,
        )
        .expect("finished");
        assert_eq!(
            finished.units,
            BTreeMap::from([
                ("hello.service".to_owned(), "failed".to_owned()),
                ("steady.service".to_owned(), "active".to_owned()),
            ])
        );
        assert_eq!(finished.captures[0].text, "c\n");
        let read = finished.evidence.expect("evidence");
        assert!(
            read.after.contains("hello.service loaded failed"),
            "{}",
            read.after
        );
        let failed: Vec<&str> = read
            .changes
            .failed_units
            .iter()
            .map(|(unit, _)| unit.as_str())
            .collect();
        assert_eq!(failed, ["hello.service"]);
        assert_eq!(kernel_release.as_deref(), Some("6.1.0-stand-in"));
        assert_eq!(
            stand.asked,
            [
                "capture before the reboot",
                "reboot",
                "settle",
                "capture at the end"
            ]
        );

        // A scenario with no reboot reads no evidence.
        let quiet = self::scenario(&dir, "[[step]]\nrun = \"true\"\n");
        assert!(evidence_scripts(&quiet, evidence::Moment::AfterReboot).is_empty());
    }
}
