//! The flow on a booted guest and the outcome it makes: the steps, a boot
//! that did not come back examined where it ended, the captures at the
//! end, and everything put together with the expectations checked. It
//! works on the [`Machine`] interface, so the whole of a trial after its
//! boot is unit-tested on the stand-in guest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::check::capture::Capture;
use crate::check::evidence;
use crate::check::outcome::{
    check_expectations, persistence_diff, write_artifacts, NotBack, Outcome, StepRecord, Timings,
};
use crate::guest::console::ConsoleError;
use crate::guest::vm::VmError;
use crate::host::progress::Events;
use crate::project::{Cell, Expectations, Scenario};

use super::cell::RunError;
use super::steps::{self, Finished, Flow, Ledger, Machine};

/// A trial's flow on a booted guest, start to outcome: `base` is what is
/// known of it before (see [`Outcome::before_the_flow`]), `started` when
/// the trial began. A flow that cannot run to its end is
/// [`RunError::Stopped`], with what was known of the trial by then.
pub(super) fn run(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    scenario: &Scenario,
    base: Outcome,
    started: Instant,
) -> Result<Outcome, RunError> {
    let mut records = Vec::new();
    let driven = drive(
        machine,
        ledger,
        scenario,
        &base.cell,
        &base.expect,
        &mut records,
    );
    // The steps, the guest's kernel and the time so far, from the ledger
    // the flow filled in.
    let known = Outcome {
        steps: records,
        guest_kernel: ledger.kernel_release.clone().unwrap_or_default(),
        timings: Timings {
            total: started.elapsed().as_secs_f64(),
            ..ledger.timings.clone()
        },
        ..base
    };
    match driven {
        Ok(driven) => Ok(conclude(
            known,
            driven,
            scenario,
            ledger.events,
            ledger.label,
        )),
        Err(e) => {
            let cause = explain(machine, e);
            ledger.events.finish(
                ledger.label,
                &format!("stopped after {:.1}s", known.timings.total),
            );
            Err(RunError::Stopped {
                cause: Box::new(cause),
                known: Box::new(known),
            })
        }
    }
}

/// What [`drive`] found out.
struct Driven {
    before_reboot: Vec<Capture>,
    not_back: Option<NotBack>,
    /// The captures at the end: where the boot did not come back, what
    /// could be taken where it ended, with no evidence and no units.
    end: Finished,
}

/// The flow on a booted guest: the steps, the captures at the end and the
/// states of the units the cell's expectations name.
fn drive(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    scenario: &Scenario,
    cell: &Cell,
    expect: &Expectations,
    records: &mut Vec<StepRecord>,
) -> Result<Driven, RunError> {
    let Flow {
        before_reboot,
        evidence_before,
        not_back,
    } = steps::run(machine, ledger, scenario, cell, records)?;
    if let Some(mut not_back) = not_back {
        // What the console said stands in for the captures; where the mode
        // the boot ended in gives a shell, the scenario's captures follow,
        // taken there.
        let (examined, taken) =
            super::rescue::examine(machine, ledger, &scenario.captures, &not_back);
        not_back.examined = Some(examined);
        let mut captures = vec![not_back.as_capture()];
        captures.extend(taken);
        return Ok(Driven {
            before_reboot,
            not_back: Some(not_back),
            end: Finished {
                evidence: None,
                captures,
                units: BTreeMap::new(),
            },
        });
    }
    Ok(Driven {
        before_reboot,
        not_back: None,
        end: steps::finish(machine, ledger, scenario, expect, evidence_before)?,
    })
}

/// The outcome of a flow that ran to its end: `base` (what is known of the
/// trial besides the flow: its cell, its guest, its steps and times) with
/// the captures, the evidence, what changed and the expectations checked.
/// The captures and the evidence are also written beside the report, in
/// `base.artifacts`; a folder that cannot take them is said on `events`,
/// not hidden, and changes nothing else: the outcome travels in memory.
fn conclude(
    base: Outcome,
    driven: Driven,
    scenario: &Scenario,
    events: &Events,
    label: &str,
) -> Outcome {
    let Driven {
        before_reboot,
        not_back,
        end: Finished {
            evidence,
            mut captures,
            units,
        },
    } = driven;
    let artifacts = &base.artifacts;
    let written = evidence.as_ref().map_or(Ok(()), |read| {
        [("before-reboot", &read.before), ("after", &read.after)]
            .into_iter()
            .try_for_each(|(name, text)| {
                std::fs::write(artifacts.join(format!("evidence.{name}.txt")), text)
            })
    });
    let reboot_changes = evidence.map(|read| read.changes);
    if scenario.evidence.snapshot {
        if let Some(changes) = &reboot_changes {
            captures.push(evidence::as_capture(changes));
        }
    }
    if let Err(e) = written.and(write_artifacts(artifacts, &before_reboot, &captures)) {
        events.note(
            label,
            &format!(
                "could not write the captures to {}: {e}",
                artifacts.display()
            ),
        );
    }
    Outcome {
        changes: persistence_diff(&before_reboot, &captures),
        failures: check_expectations(
            &base.expect,
            not_back.as_ref(),
            reboot_changes.as_ref(),
            &units,
            &before_reboot,
            &captures,
        ),
        reboot_changes,
        not_back,
        before_reboot,
        captures,
        units,
        ..base
    }
}

/// The error to report for one that came from driving the guest: when
/// the console failed because QEMU is gone (its socket closed, nothing
/// more to read), QEMU's own exit status and output explain it.
pub(super) fn explain(machine: &mut dyn Machine, error: RunError) -> RunError {
    let RunError::Console(console) = error else {
        return error;
    };
    // A guest that powered itself off (or otherwise ended) is what the
    // console already named; QEMU ending after it is its consequence, not
    // the host's failure.
    if matches!(console, ConsoleError::GuestEnded { .. }) {
        return RunError::Console(console);
    }
    // A closed control port is QEMU going away, or gone.
    let grace = match console {
        ConsoleError::Closed { .. } | ConsoleError::Io { .. } => Duration::from_secs(2),
        _ => Duration::ZERO,
    };
    match machine.check_running_within(grace) {
        Err(exit @ VmError::Exited { .. }) => RunError::QemuEnded {
            during: console.to_string().lines().next().unwrap_or("").to_owned(),
            source: exit,
        },
        _ => RunError::Console(console),
    }
}

#[cfg(test)]
mod tests {
    //! A trial after its boot, whole, on the stand-in guest of
    //! [`crate::run::stand`]: the flow, the outcome and the verdict.

    use super::*;
    use crate::check::verdict::{self, Status};
    use crate::project::GuestEnd;
    use crate::run::stand::{dir, ended_in, outcome, scenario, Notes, Stand};

    /// The trial of `scenario` on `stand`, its artifacts in `artifacts`:
    /// the outcome (or why the flow stopped), and the notes it made.
    fn trial(
        stand: &mut Stand,
        scenario: &Scenario,
        artifacts: &std::path::Path,
    ) -> (Result<Outcome, RunError>, Vec<String>) {
        let (notes, events) = Notes::events();
        let (mut timings, mut kernel_release) = (Timings::default(), None);
        let mut ledger = Ledger {
            events: &events,
            label: "x bookworm-stock",
            timings: &mut timings,
            kernel_release: &mut kernel_release,
        };
        let result = run(
            stand,
            &mut ledger,
            scenario,
            outcome(scenario, artifacts),
            Instant::now(),
        );
        (result, notes.taken())
    }

    /// The verdict on a trial whose snapshot matched.
    fn verdict_of(outcome: &Outcome) -> verdict::Verdict {
        verdict::decide(verdict::Ended::Checked {
            outcome,
            snapshot: &Ok(()),
        })
    }

    fn status(outcome: &Outcome) -> Status {
        verdict_of(outcome).status
    }

    /// A setting made by hand and gone after the reboot.
    const LOST: &str = r#"
[[step]]
run = "echo 17 > {dir}/swappiness"

[[step]]
reboot = true

[[capture]]
name = "swappiness"
run = "cat {dir}/swappiness"
"#;

    #[test]
    fn a_setting_the_reboot_loses_reproduces_the_bug_that_says_so() {
        let (_keep, dir) = dir();
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts).expect("artifacts");
        let scenario = scenario(
            &dir,
            &format!("{LOST}\n[expect]\nlost_on_reboot = [\"swappiness\"]\n"),
        );
        let mut stand = Stand::new(&dir);
        stand.at_boot = format!("rm {}/swappiness", dir.display());
        let (outcome, notes) = trial(&mut stand, &scenario, &artifacts);
        let outcome = outcome.expect("the flow ran to its end");
        assert_eq!(outcome.failures, Vec::<String>::new());
        assert_eq!(outcome.before_reboot[0].text, "17\n");
        assert_eq!(outcome.captures[0].status, 1, "{:?}", outcome.captures);
        assert_eq!(outcome.changes.len(), 1, "{:?}", outcome.changes);
        assert_eq!(outcome.steps.len(), 2);
        assert_eq!(status(&outcome), Status::Reproduced);
        // The captures are beside the report, as the guest printed them.
        assert_eq!(
            std::fs::read_to_string(artifacts.join("swappiness.before-reboot.txt")).expect("file"),
            "17\n"
        );
        assert!(artifacts.join("swappiness.after.txt").exists());
        assert!(
            artifacts.join("evidence.before-reboot.txt").exists(),
            "the units' states are read by default"
        );
        assert!(!notes.iter().any(|n| n.contains("could not")), "{notes:?}");
    }

    #[test]
    fn a_setting_that_survives_fails_a_scenario_that_says_it_is_lost() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            &format!("{LOST}\n[expect]\nlost_on_reboot = [\"swappiness\"]\n"),
        );
        let mut stand = Stand::new(&dir);
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("the flow ran to its end");
        assert_eq!(outcome.changes.len(), 0);
        assert_eq!(outcome.failures.len(), 1, "{:?}", outcome.failures);
        assert!(
            outcome.failures[0].contains("swappiness"),
            "{}",
            outcome.failures[0]
        );
        assert_eq!(status(&outcome), Status::Fail);
    }

    #[test]
    fn a_unit_failed_by_the_reboot_is_in_the_snapshot_when_the_scenario_asks() {
        let (_keep, dir) = dir();
        std::fs::write(dir.join("units/app.service"), "active").expect("unit");
        let scenario = scenario(
            &dir,
            r#"
[[step]]
reboot = true

[evidence]
skip = ["journal", "sysctl", "mounts", "network", "modules", "firewall"]
snapshot = true
"#,
        );
        let mut stand = Stand::new(&dir);
        stand.at_boot = format!("echo failed > {}/units/app.service", dir.display());
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("the flow ran to its end");
        let changes = outcome.reboot_changes.as_ref().expect("the evidence");
        assert!(!changes.is_empty());
        let last = outcome.captures.last().expect("the evidence as a capture");
        assert!(last.text.contains("app.service"), "{}", last.text);
        let after = std::fs::read_to_string(dir.join("evidence.after.txt")).expect("file");
        assert!(after.contains("app.service loaded failed"), "{after}");
        // No expectation is broken, but the verdict says what changed.
        let verdict = verdict_of(&outcome);
        assert_eq!(verdict.status, Status::Pass);
        assert!(
            verdict.text.contains("the reboot changed"),
            "{}",
            verdict.text
        );
    }

    #[test]
    fn what_the_guest_logged_on_its_way_down_is_told_and_breaks_an_unchanged_journal() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            r#"
[[step]]
reboot = true

[evidence]
skip = ["units", "sysctl", "mounts", "network", "modules", "firewall"]

[expect]
unchanged = ["journal"]
"#,
        );
        let mut stand = Stand::new(&dir);
        // The stand-in's boot is the host's: its journal of the boot
        // before has an entry from long before the harness's look, and one
        // from long after it.
        let entry = |at: &str, message: &str| {
            format!(
                r#"printf '{{"__MONOTONIC_TIMESTAMP":"{at}","_BOOT_ID":"%s","PRIORITY":"4","_SYSTEMD_UNIT":"slow.service","MESSAGE":"{message}"}}\n' "$id""#
            )
        };
        stand.at_boot = format!(
            "id=$(tr -d - </proc/sys/kernel/random/boot_id); {{ {}; {}; }} > {}/journal-before",
            entry("1", "Started long ago."),
            entry("999999999999999", "Stopping timed out. Terminating."),
            dir.display()
        );
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("the flow ran to its end");
        let changes = outcome.reboot_changes.as_ref().expect("the evidence");
        assert_eq!(
            changes.going_down,
            vec![(
                "slow.service".to_owned(),
                "Stopping timed out. Terminating.".to_owned()
            )],
            "{changes:#?}"
        );
        assert_eq!(
            outcome.failures,
            vec!["the reboot changed journal — journal slow.service: Stopping timed out. Terminating. (going down)".to_owned()]
        );
        let verdict = verdict_of(&outcome);
        assert_eq!(verdict.status, Status::Fail);
        assert!(
            verdict.text.contains("1 warning going down"),
            "{}",
            verdict.text
        );
    }

    #[test]
    fn a_step_whose_output_is_lost_is_judged_by_its_status_and_the_flow_goes_on() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            &format!(
                "[[step]]\nrun = '''\n{}\n'''\nstatus = 3\n\n[[step]]\nrun = \"echo after\"\n",
                crate::guest::console::tests::LOSES_ITS_OUTPUT
            ),
        );
        let mut stand = Stand::new(&dir);
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("the flow ran to its end");
        assert_eq!(outcome.steps.len(), 2);
        let lost = outcome.steps[0].output.as_ref().expect("a record");
        assert_eq!(lost.status, 3);
        assert!(
            lost.stdout.starts_with(
                "[… what the command printed is lost: the guest could not record what the command printed in "
            ),
            "{}",
            lost.stdout
        );
        let after = outcome.steps[1].output.as_ref().expect("a record");
        assert_eq!(after.stdout, "after\n");
        assert_eq!(status(&outcome), Status::Pass);
    }

    #[test]
    fn a_boot_that_ended_in_emergency_mode_is_judged_from_where_it_ended() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            "[[step]]\nreboot = true\n\n[[capture]]\nname = \"fstab\"\nrun = \"echo LABEL=DATA /srv/data\"\n\n[expect]\nboot = \"emergency\"\n",
        );
        let mut stand = Stand::new(&dir);
        std::fs::write(
            &stand.console_log,
            "[    0.0] Linux version 6.1\r\nYou are in emergency mode.\r\nPress Enter for maintenance\r\n(or press Control-D to continue): ",
        )
        .expect("log");
        stand.reboots.push_back(Err(ConsoleError::GuestEnded {
            what: "step 1/1 (reboot)".into(),
            ended: Box::new(ended_in(GuestEnd::Emergency)),
            console_tail: "You are in emergency mode.".into(),
        }));
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("a boot that did not come back is an outcome");
        let not_back = outcome.not_back.as_ref().expect("not back");
        assert!(not_back.examined.is_some());
        assert_eq!(outcome.captures.len(), 2, "{:?}", outcome.captures);
        assert_eq!(outcome.captures[1].text, "LABEL=DATA /srv/data\n");
        assert!(outcome.reboot_changes.is_none());
        assert_eq!(status(&outcome), Status::Reproduced);

        // The same boot, where the scenario expects the guest back: a
        // failure that says how the boot ended.
        let scenario = super::super::stand::scenario(&dir, "[[step]]\nreboot = true\n");
        let mut stand = Stand::new(&dir);
        stand.reboots.push_back(Err(ConsoleError::GuestEnded {
            what: "step 1/1 (reboot)".into(),
            ended: Box::new(ended_in(GuestEnd::Emergency)),
            console_tail: String::new(),
        }));
        let (outcome, _) = trial(&mut stand, &scenario, &dir);
        let outcome = outcome.expect("an outcome");
        assert_eq!(status(&outcome), Status::Fail);
        assert!(
            outcome.failures.iter().any(|f| f.contains("emergency")),
            "{:?}",
            outcome.failures
        );
    }

    #[test]
    fn captures_that_cannot_be_written_are_said_and_the_outcome_stands() {
        let (_keep, dir) = dir();
        let scenario = scenario(&dir, LOST);
        // A file where the folder should be.
        let artifacts = dir.join("not-a-folder");
        std::fs::write(&artifacts, "").expect("file");
        let mut stand = Stand::new(&dir);
        let (outcome, notes) = trial(&mut stand, &scenario, &artifacts);
        let outcome = outcome.expect("the flow ran to its end");
        assert_eq!(outcome.before_reboot[0].text, "17\n");
        assert_eq!(status(&outcome), Status::Pass);
        let said: Vec<_> = notes.iter().filter(|n| n.contains("could not")).collect();
        assert_eq!(said.len(), 1, "{notes:?}");
        assert!(
            said[0].starts_with("could not write the captures to"),
            "{}",
            said[0]
        );
    }

    #[test]
    fn a_closed_console_is_explained_by_qemu_s_exit_when_qemu_is_gone() {
        let (_keep, dir) = dir();
        let closed = || {
            RunError::Console(ConsoleError::Closed {
                what: "step 1/2 (a command)".into(),
                console_tail: String::new(),
            })
        };
        let mut stand = Stand::new(&dir);
        // QEMU still runs: the console's own error stands.
        assert!(matches!(
            explain(&mut stand, closed()),
            RunError::Console(ConsoleError::Closed { .. })
        ));
        stand.qemu_exited = Some("signal: 9 (SIGKILL)".into());
        let RunError::QemuEnded { during, source } = explain(&mut stand, closed()) else {
            panic!("QEMU's exit explains a closed console");
        };
        assert!(during.contains("step 1/2"), "{during}");
        assert!(source.to_string().contains("SIGKILL"), "{source}");
        // A guest that ended itself is what the console named, whatever
        // QEMU did after it; other errors pass through.
        let ended = RunError::Console(ConsoleError::GuestEnded {
            what: "step 1/2".into(),
            ended: Box::new(ended_in(GuestEnd::PowerOff)),
            console_tail: String::new(),
        });
        assert!(matches!(
            explain(&mut stand, ended),
            RunError::Console(ConsoleError::GuestEnded { .. })
        ));
        let step = RunError::Vm(VmError::Monitor {
            command: "device_del".into(),
            message: "no".into(),
        });
        assert!(matches!(explain(&mut stand, step), RunError::Vm(_)));
        assert_eq!(stand.asked, ["running?", "running?"]);
    }

    #[test]
    fn a_flow_that_stops_keeps_what_was_known_of_the_trial() {
        let (_keep, dir) = dir();
        let scenario = scenario(
            &dir,
            "[[step]]\nrun = \"echo first\"\n\n[[step]]\nrun = \"exit 4\"\n\n[[step]]\nreboot = true\n",
        );
        let mut stand = Stand::new(&dir);
        let (result, _) = trial(&mut stand, &scenario, &dir);
        let Err(RunError::Stopped { cause, known }) = result else {
            panic!("a stopped flow, not {:?}", result.map(|o| o.failures));
        };
        assert!(matches!(*cause, RunError::Step(_)), "{cause}");
        assert_eq!(known.steps.len(), 1, "the step that ran is known");
        assert_eq!(known.guest_kernel, "6.1.0-stand-in");
        assert!(known.timings.total >= known.timings.steps);
        assert!(known.captures.is_empty() && known.failures.is_empty());
    }
}
