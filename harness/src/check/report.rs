//! A Markdown report of one trial, to paste into a bug report.

use std::fmt::Write as _;

use crate::check::capture::Capture;
use crate::check::outcome::{Examined, NotBack, Outcome};
use crate::check::snapshot::SnapshotError;
use crate::check::verdict::{self, Ended, Status, Verdict};
use crate::project::{Action, Scenario, StepStatus};

/// Renders a finished trial; `row` is its row of the outcome table, whose
/// status is the verdict.
pub(crate) fn markdown(
    scenario: &Scenario,
    outcome: &Outcome,
    row: &Row,
    snapshot: &Result<(), SnapshotError>,
    qemu_version: &str,
) -> String {
    let mut md = String::new();
    let verdict = match row.status {
        Status::Reproduced => "REPRODUCED: the state is lost across the reboot, as this cell expects; every expectation held and the snapshot matches".to_owned(),
        Status::Pass => "PASS: every expectation held and the snapshot matches".to_owned(),
        _ => row.verdict.clone(),
    };
    let _ = writeln!(md, "# vmrepro: {} on {}\n", scenario.name, outcome.cell);
    let _ = writeln!(md, "**Verdict:** {verdict}\n");
    let _ = writeln!(
        md,
        "**After the reboot:** {}; units not active: {}\n",
        row.after_reboot, row.units
    );
    let explaining = explaining_lines(outcome);
    if !explaining.is_empty() {
        // From the evidence, not from the lines: a guest's message may end
        // in the same words as the mark.
        let way_down = outcome.reboot_changes.as_ref().is_some_and(|c| {
            c.compared
                .contains(&crate::check::evidence::Source::Journal)
                && !c.going_down.is_empty()
        });
        let whence = if way_down {
            "the boot after the reboot, and the way down to it where marked"
        } else {
            "the boot after the reboot"
        };
        let _ = writeln!(md, "Journal lines that explain it ({whence}):\n\n```");
        for line in &explaining {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```\n");
    }
    let _ = writeln!(md, "{}\n", scenario.description);
    write_environment(&mut md, scenario, outcome, qemu_version);
    write_steps(&mut md, outcome);

    write_reboot_changes(&mut md, outcome);
    let _ = writeln!(md, "\n## What did not survive the reboot\n");
    if let Some(not_back) = &outcome.not_back {
        let _ = writeln!(
            md,
            "The guest did not come back after step {}: {}. This is what its kernel console showed last (all of it is in `console.log` beside the artifacts):\n\n```\n{}\n```",
            not_back.step,
            not_back.ended,
            not_back.console_tail.trim_end()
        );
        write_examined(&mut md, not_back);
    } else if outcome.before_reboot.is_empty() {
        let _ = writeln!(md, "No reboot, or nothing captured before it.");
    } else if outcome.changes.is_empty() {
        let _ = writeln!(
            md,
            "Everything captured before the reboot read the same after it."
        );
    } else {
        for change in &outcome.changes {
            let _ = writeln!(md, "- **{}**", change.name);
            let _ = writeln!(md, "  ```diff");
            for line in &change.lost {
                let _ = writeln!(md, "  -{line}");
            }
            for line in &change.gained {
                let _ = writeln!(md, "  +{line}");
            }
            let _ = writeln!(md, "  ```");
        }
    }

    if !outcome.units.is_empty() {
        let _ = writeln!(md, "\n## Units\n");
        for (unit, state) in &outcome.units {
            // The cell's own expectations, overrides applied.
            let expected = outcome
                .expect
                .units
                .get(unit)
                .map(String::as_str)
                .unwrap_or("");
            let mark = if state == expected {
                "as expected"
            } else {
                "EXPECTED "
            };
            let _ = writeln!(
                md,
                "- `{unit}`: {state} ({mark}{})",
                if state == expected { "" } else { expected }
            );
        }
    }

    if let Err(SnapshotError::Differs { diff, path, .. }) = snapshot {
        let _ = writeln!(
            md,
            "\n## What differs from the snapshot\n\nThe committed `{path}` against this run's captures:\n\n```diff\n{}\n```",
            diff.trim_end()
        );
    }
    let _ = writeln!(md, "\n## Captures after the flow\n");
    write_captures(&mut md, &outcome.captures);
    write_timings(&mut md, outcome);
    let _ = writeln!(
        md,
        "Artifacts (console log, captures): `{}`",
        outcome.artifacts.display()
    );
    md
}

/// The environment table and the QEMU command line: what it takes to start
/// the same guest by hand.
fn write_environment(md: &mut String, scenario: &Scenario, outcome: &Outcome, qemu_version: &str) {
    let _ = writeln!(md, "## Environment\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| vmrepro | {} |", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(md, "| QEMU | {qemu_version} |");
    let _ = writeln!(
        md,
        "| accelerator | {} ({}) |",
        outcome.accel.accel.name(),
        outcome.accel.reason
    );
    let _ = writeln!(md, "| release | {} |", outcome.cell.release);
    let _ = writeln!(md, "| image | {} |", outcome.image_origin);
    if outcome.guest_kernel.is_empty() {
        let _ = writeln!(
            md,
            "| kernel | {} (release not read) |",
            outcome.cell.kernel
        );
    } else {
        let _ = writeln!(
            md,
            "| kernel | {} (`{}`) |",
            outcome.cell.kernel, outcome.guest_kernel
        );
    }
    // The packages the scenario names (`versions`, else its `packages`).
    for package in &scenario.versions {
        match outcome.packages.get(package) {
            Some(version) => {
                let _ = writeln!(md, "| {package} | {version} |");
            }
            None => {
                let _ = writeln!(md, "| {package} | not installed |");
            }
        }
    }
    let _ = writeln!(md, "| machine | {} |", outcome.setup.machine);
    let _ = writeln!(
        md,
        "| kernel command line | `{}` |",
        outcome.setup.kernel_cmdline
    );
    let _ = writeln!(md, "| first boot | {} |", outcome.start.describe());
    let t = &outcome.timings;
    let _ = writeln!(
        md,
        "| time | whole trial {:.1}s: the guest's work {:.1}s, the harness's own {:.1}s (see [Time](#time)) |\n",
        t.total,
        t.guest(),
        t.harness()
    );

    // To start the same guest without vmrepro (its disk overlay and sockets
    // were temporary: give it your own).
    let _ = writeln!(
        md,
        "QEMU command line (also in `qemu-command.txt` beside the artifacts):\n\n```sh\n{}\n```\n",
        outcome.setup.qemu_command
    );
}

/// What each step that ran did.
fn write_steps(md: &mut String, outcome: &Outcome) {
    let _ = writeln!(md, "## Steps\n");

    for (i, step) in outcome.steps.iter().enumerate() {
        let _ = writeln!(md, "{}. **{}** ({:.1}s)", i + 1, step.title, step.seconds);
        match &step.action {
            Action::Run { command, .. } => {
                let _ = writeln!(md, "\n   ```sh\n{}\n   ```", indent(command.trim_end()));
            }
            Action::Write { path, content, .. } => {
                let _ = writeln!(
                    md,
                    "\n   `{path}`:\n   ```\n{}\n   ```",
                    indent(content.trim_end())
                );
            }
            Action::Reboot => {}
            Action::Detach { disk } => {
                let _ = writeln!(
                    md,
                    "\n   Disk `{disk}` unplugged from the running guest; its kernel let go of it."
                );
                continue;
            }
            Action::Copy { from, to, .. } => {
                let _ = writeln!(md, "\n   `{from}` (from the scenario's project) to `{to}`");
            }
            Action::WaitForUnit { .. } => {
                let _ = writeln!(md, "\n   Waited {:.1}s.", step.seconds);
                continue;
            }
            Action::WaitUntil { command } => {
                let _ = writeln!(
                    md,
                    "\n   ```sh\n{}\n   ```\n   Waited {:.1}s.",
                    indent(command.trim_end()),
                    step.seconds
                );
                continue;
            }
        }
        if let Some(out) = &step.output {
            // Say what this cell expected wherever it is not a plain 0, so a
            // step that fails on purpose reads as the finding it is.
            let exit = match step.expected {
                Some(expected) if expected != StepStatus::Exactly(0) => {
                    format!("exit {}; this cell expects {expected}", out.status)
                }
                _ => format!("exit {}", out.status),
            };
            let text = format!("{}{}", out.stdout, out.stderr);
            if !text.trim().is_empty() {
                let _ = writeln!(
                    md,
                    "   Output ({exit}):\n   ```\n{}\n   ```",
                    indent(text.trim_end())
                );
            } else {
                let _ = writeln!(md, "   {}.", capitalise(&exit));
            }
        }
    }
}

/// The trial's time, phase by phase.
fn write_timings(md: &mut String, outcome: &Outcome) {
    let t = &outcome.timings;
    let resumed = matches!(outcome.start, crate::guest::warm::Start::Warm { .. });
    let _ = writeln!(md, "\n## Time\n");
    let _ = writeln!(md, "| phase | seconds |\n|---|---:|");
    for (phase, seconds) in t.phases(resumed) {
        let _ = writeln!(md, "| {phase} | {seconds:.1} |");
    }
    let _ = writeln!(md, "| **whole trial** | **{:.1}** |", t.total);
    let _ = writeln!(
        md,
        "\nThe guest worked {:.1}s of it; the harness's own time (preparing, stopping and between phases) was {:.1}s.\n",
        t.guest(),
        t.harness()
    );
}

/// Renders a trial that could not run to the end, with its verdict, what
/// was known of it by then (`known`: environment, command lines, the steps
/// that ran, the time) and, where the guest could still be read after the
/// failure, its captures.
pub fn markdown_error(
    scenario: &Scenario,
    cell: &str,
    status: Status,
    error: &dyn std::fmt::Display,
    captures_after: Option<&Result<Vec<Capture>, String>>,
    known: Option<&Outcome>,
    qemu_version: &str,
) -> String {
    let why = match status {
        Status::Skipped => "SKIPPED: the release cannot be fetched here",
        Status::Error => "ERROR: this host could not run the flow",
        _ => "FAIL: the flow could not run to the end",
    };
    let mut md = format!(
        "# vmrepro: {} on {cell}\n\n**Verdict:** {why}\n\n```\n{error}\n```\n",
        scenario.name
    );
    if let Some(known) = known {
        let _ = writeln!(md, "\n{}\n", scenario.description);
        write_environment(&mut md, scenario, known, qemu_version);
        if known.steps.is_empty() {
            let _ = writeln!(
                md,
                "## Steps\n\nNone finished: the error above says where the flow stopped."
            );
        } else {
            write_steps(&mut md, known);
            let _ = writeln!(
                md,
                "\nSteps that finished: {} of {}; the error above says where the flow stopped.",
                known.steps.len(),
                scenario.steps.len()
            );
        }
    }
    match captures_after {
        None => {}
        Some(Err(why)) => {
            let _ = writeln!(
                md,
                "\n## Captures after the failure\n\nNone could be taken:\n\n```\n{why}\n```"
            );
        }
        Some(Ok(captures)) => {
            let _ = writeln!(md, "\n## Captures after the failure\n");
            let _ = writeln!(md, "From the same guest, as the failed step left it.\n");
            write_captures(&mut md, captures);
        }
    }
    if let Some(known) = known {
        write_timings(&mut md, known);
        let _ = writeln!(
            md,
            "Artifacts (console log, QEMU command line): `{}`",
            known.artifacts.display()
        );
    }
    md
}

fn write_captures(md: &mut String, captures: &[Capture]) {
    for capture in captures {
        let _ = writeln!(md, "### {} (exit {})\n", capture.name, capture.status);
        let _ = writeln!(md, "```sh\n$ {}\n```", capture.command.trim());
        let _ = writeln!(md, "```\n{}\n```\n", capture.raw.trim_end());
    }
}

/// Journal lines of the final boot that report a failure.
fn explaining_lines(outcome: &Outcome) -> Vec<String> {
    const SIGNS: &[&str] = &[
        "fail",
        "Fail",
        "error",
        "Error",
        "not implemented",
        "NOT loaded",
        "could not",
        "Dependency",
    ];
    // What the journal itself ranks warning or worse: the failed units'
    // lines and the boot's new warnings, read on the harness's own.
    if let Some(changes) = outcome.reboot_changes.as_ref().filter(|c| {
        c.compared
            .contains(&crate::check::evidence::Source::Journal)
    }) {
        return changes
            .failed_units
            .iter()
            .flat_map(|(unit, lines)| lines.iter().map(move |l| format!("{unit}: {l}")))
            .chain(
                changes
                    .going_down
                    .iter()
                    .map(|(who, message)| format!("{who}: {message}{ON_THE_WAY_DOWN}")),
            )
            .chain(
                changes
                    .changes
                    .iter()
                    .filter(|c| c.source == crate::check::evidence::Source::Journal)
                    .filter_map(|c| c.after.as_ref().map(|m| format!("{}: {m}", c.item))),
            )
            .collect();
    }
    // A guest that did not come back: the warnings of its boot, as its
    // emergency shell listed them.
    if let Some(Examined::Shell { journal, .. }) =
        outcome.not_back.as_ref().and_then(|n| n.examined.as_ref())
    {
        return journal.lines().map(str::to_owned).collect();
    }
    outcome
        .captures
        .iter()
        .filter(|c| c.name.starts_with("journal"))
        .flat_map(|c| c.raw.lines())
        .filter(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .map(str::to_owned)
        .collect()
}

/// How a journal line that explains a verdict is marked when the boot
/// before logged it on its way down to the reboot.
const ON_THE_WAY_DOWN: &str = " (on the way down)";

/// What the harness found the last reboot changed, most telling first:
/// failed units with their journal lines, new warnings, then settings,
/// firewall, mounts, network and modules.
fn write_reboot_changes(md: &mut String, outcome: &Outcome) {
    let Some(changes) = &outcome.reboot_changes else {
        return;
    };
    let _ = writeln!(md, "\n## What the reboot changed\n");
    let compared = changes
        .compared
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ");
    if changes.is_empty() {
        let _ = writeln!(
            md,
            "Nothing that vmrepro reads on its own ({compared}) differs between the boot before the last reboot and the boot after it."
        );
        return;
    }
    let _ = writeln!(
        md,
        "Read by vmrepro before the last reboot and after it, without the scenario asking ({compared}); only what differs:\n"
    );
    for (unit, lines) in &changes.failed_units {
        let _ = writeln!(md, "- **{unit} failed** after the reboot");
        if !lines.is_empty() {
            let _ = writeln!(md, "  ```");
            for line in lines {
                let _ = writeln!(md, "  {line}");
            }
            let _ = writeln!(md, "  ```");
        }
    }
    if !changes.going_down.is_empty() {
        let _ = writeln!(
            md,
            "- **Warnings on the way down**: what the boot before logged at priority warning or worse after vmrepro's look before the reboot, as the journal kept it"
        );
        for (who, message) in &changes.going_down {
            let _ = writeln!(md, "  - {who}: `{message}`");
        }
    }
    for source in crate::check::evidence::Source::ALL {
        let of_source: Vec<_> = changes
            .changes
            .iter()
            .filter(|c| c.source == source)
            .collect();
        if of_source.is_empty() {
            continue;
        }
        let heading = match source {
            crate::check::evidence::Source::Units => "Units whose state changed",
            crate::check::evidence::Source::Journal => {
                "New journal entries of priority warning or worse"
            }
            crate::check::evidence::Source::Sysctl => "Kernel settings",
            crate::check::evidence::Source::Firewall => "Firewall",
            crate::check::evidence::Source::Mounts => "Mounts",
            crate::check::evidence::Source::Network => "Addresses and routes",
            crate::check::evidence::Source::Modules => "Kernel modules",
        };
        let _ = writeln!(md, "- **{heading}**");
        for change in of_source {
            let line = match source {
                crate::check::evidence::Source::Firewall
                | crate::check::evidence::Source::Journal => {
                    match (&change.before, &change.after) {
                        (Some(before), None) => format!("{}: lost `{before}`", change.item),
                        (None, Some(after)) => format!("{}: `{after}`", change.item),
                        _ => change.describe(),
                    }
                }
                _ => format!("`{}`", change.describe()),
            };
            let _ = writeln!(md, "  - {line}");
        }
    }
}

/// What was read from a guest that did not come back, or why nothing was.
fn write_examined(md: &mut String, not_back: &NotBack) {
    let mode = not_back.ended.end.name();
    match &not_back.examined {
        Some(Examined::Shell {
            failed_units,
            journal,
        }) => {
            let _ = writeln!(
                md,
                "\n### Read from the guest in {mode} mode\n\nsulogin opened a root shell on the console (the image sets `SYSTEMD_SULOGIN_FORCE=1` for the {mode} service), and the harness started its control shell from there: the captures after the flow, after the stand-in for the boot's end, were taken in {mode} mode. The harness's own login is in the journal from then on.\n\nFailed units:\n\n```\n{}\n```\n\nThe boot's journal, priority warning or worse:\n\n```\n{}\n```",
                or_none(failed_units),
                or_none(journal)
            );
        }
        Some(Examined::Closed { why }) => {
            let _ = writeln!(
                md,
                "\nNothing could be read from the guest after the reboot: {why}. The console above is the evidence."
            );
        }
        None => {}
    }
}

fn or_none(text: &str) -> &str {
    match text.trim_end() {
        "" => "(none)",
        text => text,
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line of the outcome table: a scenario on a cell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The scenario.
    pub(crate) scenario: String,
    /// The release.
    pub release: String,
    /// The kernel flavour.
    pub kernel: String,
    /// What the reboot did to the state the scenario watches:
    /// `restored`, `NOT restored: …`, or `-` without such expectations.
    pub(crate) after_reboot: String,
    /// Units that did not end active, with their states.
    pub(crate) units: String,
    /// The verdict.
    pub status: Status,
    /// The verdict in words: the status, and for anything but a pass why
    /// (`FAIL: …`, `NEW: …`, `ERROR: …`, `skipped: …`).
    pub verdict: String,
    /// The accelerator the guest ran under (`kvm`, `tcg`), empty when no
    /// guest ran.
    #[serde(default)]
    pub accel: String,
    /// How the boot after the last reboot ended: `up` when the guest came
    /// back, or how it ended instead (`emergency`, `panic`…); empty when
    /// the flow has no reboot or did not get that far.
    #[serde(default)]
    pub boot: String,
    /// What the last reboot changed, found by the harness on its own, in
    /// short (`failed: x.service, 2 kernel settings`); `nothing` when it
    /// changed nothing the evidence shows, empty when none was read.
    #[serde(default)]
    pub reboot_changed: String,
}

impl Row {
    /// The row of a finished trial; `snapshot` is the snapshot comparison.
    pub(crate) fn of(outcome: &Outcome, snapshot: &Result<(), SnapshotError>) -> Row {
        let watched: Vec<&String> = outcome
            .expect
            .survive_reboot
            .iter()
            .chain(outcome.expect.lost_on_reboot.iter())
            .collect();
        let lost: Vec<&crate::check::outcome::Change> = outcome
            .changes
            .iter()
            .filter(|c| watched.contains(&&c.name))
            .collect();
        let mut after_reboot = if watched.is_empty() {
            "-".to_owned()
        } else if let Some(first) = lost.first() {
            let detail = outcome
                .captures
                .iter()
                .find(|c| c.name == first.name)
                .map(|c| {
                    if c.status != 0 {
                        format!("{} exited {}", c.name, c.status)
                    } else {
                        crate::check::outcome::describe(c)
                    }
                })
                .unwrap_or_default();
            let detail = match outcome.captures.iter().find(|c| c.name == first.name) {
                // A capture without a summary of its own says what went.
                Some(c)
                    if c.status == 0 && !c.has_summary() && c.text.trim().lines().count() > 1 =>
                {
                    format!(
                        "{}: {} lines lost, {} gained",
                        first.name,
                        first.lost.len(),
                        first.gained.len()
                    )
                }
                Some(c) if c.status == 0 && !c.has_summary() => format!("{}: {detail}", first.name),
                _ => detail,
            };
            format!("NOT restored ({detail})")
        } else {
            "restored".to_owned()
        };
        // What a client would find, from a packet rather than a rule text.
        let named = lost.first().map(|c| c.name.as_str());
        let probes: Vec<String> = outcome
            .captures
            .iter()
            .filter(|c| c.probe.is_some() && Some(c.name.as_str()) != named)
            .map(crate::check::outcome::describe)
            .collect();
        if !probes.is_empty() {
            after_reboot = match after_reboot.as_str() {
                "-" => probes.join(", "),
                _ => format!("{after_reboot}; {}", probes.join(", ")),
            };
        }
        if let Some(not_back) = &outcome.not_back {
            let why = not_back
                .ended
                .reasons
                .first()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            after_reboot = format!("did not come back: {}{why}", not_back.ended.end.name());
        }
        let reboot_changed = match &outcome.reboot_changes {
            Some(changes) if changes.is_empty() => "nothing".to_owned(),
            Some(changes) => changes.short(),
            None => String::new(),
        };
        if !reboot_changed.is_empty() && reboot_changed != "nothing" {
            after_reboot = match after_reboot.as_str() {
                "-" => format!("changed: {reboot_changed}"),
                _ => format!("{after_reboot}; changed: {reboot_changed}"),
            };
        }
        let units: Vec<String> = outcome
            .units
            .iter()
            .filter(|(_, state)| state.as_str() != "active")
            .map(|(unit, state)| format!("{} {state}", unit.trim_end_matches(".service")))
            .collect();
        let Verdict {
            status,
            text: verdict,
        } = verdict::decide(Ended::Checked { outcome, snapshot });
        Row {
            scenario: outcome.scenario.clone(),
            release: outcome.cell.release.clone(),
            kernel: outcome.cell.kernel.to_string(),
            after_reboot,
            units: if outcome.not_back.is_some() {
                "-".into()
            } else if units.is_empty() {
                "all active".into()
            } else {
                units.join(", ")
            },
            status,
            verdict,
            accel: outcome.accel.accel.name().to_owned(),
            reboot_changed,
            boot: match &outcome.not_back {
                Some(not_back) => not_back.ended.end.name().to_owned(),
                None if outcome.steps.iter().any(|s| s.action == Action::Reboot) => "up".into(),
                None => String::new(),
            },
        }
    }

    /// The row of a trial that did not finish or did not run; `why` is
    /// one line.
    pub fn without_outcome(
        scenario: &str,
        cell: &crate::project::Cell,
        status: Status,
        why: &str,
    ) -> Row {
        let verdict = match status {
            Status::Skipped => format!("skipped: {why}"),
            Status::Error => format!("ERROR: {why}"),
            Status::Fail => format!("FAIL: {why}"),
            other => format!("{}: {why}", other.name().to_uppercase()),
        };
        Row {
            scenario: scenario.to_owned(),
            release: cell.release.clone(),
            kernel: cell.kernel.to_string(),
            after_reboot: "-".into(),
            units: "-".into(),
            status,
            verdict,
            accel: String::new(),
            boot: String::new(),
            reboot_changed: String::new(),
        }
    }
}

/// The outcome table as aligned plain text, sorted by scenario, release
/// (in the order given) and kernel.
pub fn table(rows: &[Row]) -> String {
    let headers = [
        "scenario",
        "release",
        "kernel",
        "after reboot",
        "units not active",
        "verdict",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.release.clone(),
                r.kernel.clone(),
                r.after_reboot.clone(),
                r.units.clone(),
                first_line_of(&r.verdict, 90),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |values: &[String]| -> String {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i + 1 == values.len() {
                    v.clone()
                } else {
                    format!("{v:<width$}", width = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(&headers.map(String::from));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// The outcome table as Markdown: one row per trial, with the accelerator
/// and the status, for job summaries.
pub fn markdown_table(rows: &[Row]) -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out = String::from(
        "| scenario | release | kernel | accel | after reboot | units not active | status | verdict |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | **{}** | {} |\n",
            cell(&r.scenario),
            cell(&r.release),
            cell(&r.kernel),
            if r.accel.is_empty() { "-" } else { &r.accel },
            cell(&r.after_reboot),
            cell(&r.units),
            r.status,
            cell(&first_line_of(&r.verdict, 200)),
        ));
    }
    out
}

fn first_line_of(text: &str, max: usize) -> String {
    crate::text::ellipsize(text.lines().next().unwrap_or(""), max)
}

/// File name of a trial's table row inside its artifacts directory.
const ROW_FILE: &str = "row.json";

/// Saves a trial's row beside its artifacts, for `vmrepro matrix`.
pub fn save_row(artifacts: &std::path::Path, row: &Row) -> std::io::Result<()> {
    std::fs::create_dir_all(artifacts)?;
    let text = serde_json::to_string_pretty(row).map_err(std::io::Error::other)?;
    std::fs::write(artifacts.join(ROW_FILE), text)
}

/// The rows saved under an artifacts root (`target/vmrepro`).
pub fn load_rows(root: &std::path::Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let Ok(scenarios) = std::fs::read_dir(root) else {
        return rows;
    };
    for scenario in scenarios.flatten() {
        let Ok(cells) = std::fs::read_dir(scenario.path()) else {
            continue;
        };
        for cell in cells.flatten() {
            if let Ok(text) = std::fs::read_to_string(cell.path().join(ROW_FILE)) {
                if let Ok(row) = serde_json::from_str::<Row>(&text) {
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Orders rows by scenario, then release in Debian's order, then kernel.
pub fn sort_rows(rows: &mut [Row]) {
    const ORDER: &[&str] = &[
        "jessie", "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "sid",
    ];
    let rank = |r: &str| ORDER.iter().position(|o| *o == r).unwrap_or(ORDER.len());
    rows.sort_by(|a, b| {
        (&a.scenario, rank(&a.release), &a.release, &a.kernel).cmp(&(
            &b.scenario,
            rank(&b.release),
            &b.release,
            &b.kernel,
        ))
    });
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::capture::Capture;
    use crate::check::outcome as run;
    use crate::guest::vm::{Accel, AccelChoice};
    use crate::guest::warm::Start;
    use crate::project::{Cell, KernelFlavour};
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The founding scenario's shape: rules must survive everywhere, except
    /// on jessie × linode, where they are expected lost and both units fail.
    const SCENARIO: &str = r#"
name = "s"
description = "d"
[matrix]
releases = ["bookworm", "jessie"]
kernels = ["linode"]
[[step]]
reboot = true
[[capture]]
name = "rules"
run = "iptables-save"
normalize = ["iptables"]
[expect]
survive_reboot = ["rules"]
units = { "netfilter-persistent.service" = "active" }
[[expect.cell]]
releases = ["jessie"]
survive_reboot = []
lost_on_reboot = ["rules"]
units = { "netfilter-persistent.service" = "inactive", "systemd-modules-load.service" = "failed" }
"#;

    fn scenario() -> Scenario {
        Scenario::parse(
            Path::new("scenarios/s.toml"),
            SCENARIO,
            &crate::project::Known {
                releases: vec!["bookworm".into(), "jessie".into()],
                kernels: vec!["stock".into(), "linode".into()],
            },
        )
        .expect("valid")
    }

    fn capture(text: &str) -> Capture {
        Capture {
            name: "rules".into(),
            command: "iptables-save".into(),
            status: 0,
            text: text.into(),
            raw: text.into(),
            probe: None,
            normalize: vec![crate::project::Normalizer::Iptables],
        }
    }

    const RULES: &str = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";

    /// A finished trial on `release` × linode whose rules read `after`
    /// after the reboot and whose units are in `units`.
    fn outcome(release: &str, after: &str, units: &[(&str, &str)]) -> Outcome {
        let scenario = scenario();
        let cell = Cell {
            release: release.into(),
            kernel: KernelFlavour::named("linode"),
        };
        let expect = scenario.expectations_for(&cell);
        let units: BTreeMap<String, String> = units
            .iter()
            .map(|(u, s)| (u.to_string(), s.to_string()))
            .collect();
        let before = vec![capture(RULES)];
        let captures = vec![capture(after)];
        Outcome {
            scenario: "s".into(),
            cell,
            accel: AccelChoice {
                accel: Accel::Tcg,
                reason: "test".into(),
            },
            guest_kernel: "6.1.0-x86_64-linode".into(),
            setup: crate::guest::vm::VmSetup {
                qemu_command: "qemu-system-x86_64 -nodefaults -kernel vmlinuz".into(),
                kernel_cmdline: "console=ttyS0 root=/dev/vda rw".into(),
                machine: "pc".into(),
            },
            packages: BTreeMap::new(),
            image_origin: "mmdebstrap".into(),
            steps: Vec::new(),
            changes: run::persistence_diff(&before, &captures),
            reboot_changes: None,
            failures: run::check_expectations(&expect, None, None, &units, &before, &captures),
            before_reboot: before,
            captures,
            units,
            expect,
            start: Start::Cold,
            timings: run::Timings {
                prepare: 0.2,
                start: 1.0,
                start_settle: 0.5,
                steps: 0.3,
                captures_before: 0.4,
                reboot_to_shell: 10.0,
                reboot_settle: 0.6,
                captures_after: 0.5,
                stop: 0.1,
                total: 14.0,
            },
            artifacts: "target/vmrepro/s/x".into(),
            not_back: None,
        }
    }

    #[test]
    fn the_way_down_is_its_own_part_of_what_the_reboot_changed() {
        use crate::check::evidence::{Changes, Source};
        let mut o = outcome("bookworm", "", &[]);
        o.reboot_changes = Some(Changes {
            going_down: vec![(
                "slow.service".into(),
                "slow.service: Stopping timed out. Terminating.".into(),
            )],
            compared: vec![Source::Journal],
            ..Changes::default()
        });
        let md = markdown(&scenario(), &o, &Row::of(&o, &Ok(())), &Ok(()), "QEMU 10");
        for needle in [
            "Journal lines that explain it (the boot after the reboot, and the way down to it where marked):",
            "slow.service: slow.service: Stopping timed out. Terminating. (on the way down)",
            "- **Warnings on the way down**: ",
            "  - slow.service: `slow.service: Stopping timed out. Terminating.`",
        ] {
            assert!(md.contains(needle), "{needle:?} not in\n{md}");
        }
        // Nothing on the way down: the lines are the boot after's alone.
        o.reboot_changes = Some(Changes {
            changes: vec![crate::check::evidence::Change {
                source: Source::Journal,
                item: "app.service".into(),
                before: None,
                after: Some("Failed to start app".into()),
            }],
            compared: vec![Source::Journal],
            ..Changes::default()
        });
        let md = markdown(&scenario(), &o, &Row::of(&o, &Ok(())), &Ok(()), "QEMU 10");
        assert!(
            md.contains("Journal lines that explain it (the boot after the reboot):\n\n```\napp.service: Failed to start app\n"),
            "{md}"
        );
    }

    #[test]
    fn the_report_says_where_the_time_went() {
        let o = outcome("bookworm", "", &[]);
        let md = markdown(&scenario(), &o, &Row::of(&o, &Ok(())), &Ok(()), "QEMU 10");
        let time = &md[md.find("## Time").expect("a Time section")..];
        for line in [
            "| booting to a shell | 1.0 |",
            "| settling after the boot | 0.5 |",
            "| reboot to a shell | 10.0 |",
            "| settling after the reboot | 0.6 |",
            "| captures after | 0.5 |",
            "| stopping QEMU | 0.1 |",
            "| harness, between phases | 0.4 |",
            "| **whole trial** | **14.0** |",
            "The guest worked 13.3s of it; the harness's own time (preparing, stopping and between phases) was 0.7s.",
        ] {
            assert!(time.contains(line), "{line:?} not in\n{time}");
        }
        assert!(md.contains("whole trial 14.0s: the guest's work 13.3s, the harness's own 0.7s"));
    }

    #[test]
    fn a_stopped_trial_reports_what_was_known_by_then() {
        let mut known = outcome("bookworm", "", &[]);
        known.guest_kernel = String::new();
        known.steps = vec![crate::check::outcome::StepRecord {
            title: "fill the disk".into(),
            action: Action::Run {
                command: "dd if=/dev/zero of=/fill".into(),
                status: StepStatus::Exactly(0),
            },
            output: Some(crate::guest::console::CommandOutput {
                stdout: "No space left\n".into(),
                stderr: String::new(),
                status: 0,
            }),
            expected: None,
            seconds: 2.0,
        }];
        let md = markdown_error(
            &scenario(),
            "bookworm-linode",
            Status::Fail,
            &"step 2/2 (x): timed out after 300s",
            Some(&Ok(vec![capture("after")])),
            Some(&known),
            "QEMU 10",
        );
        for part in [
            "**Verdict:** FAIL",
            "step 2/2 (x): timed out after 300s",
            "| QEMU | QEMU 10 |",
            "| release | bookworm |",
            "| kernel | linode (release not read) |",
            "qemu-system-x86_64 -nodefaults -kernel vmlinuz",
            "console=ttyS0 root=/dev/vda rw",
            "1. **fill the disk** (2.0s)",
            "No space left",
            "## Captures after the failure",
            "## Time",
            "| **whole trial** | **14.0** |",
        ] {
            assert!(md.contains(part), "{part:?} not in\n{md}");
        }
        // Without what was known (a trial that never booted), only the
        // verdict and the error.
        let bare = markdown_error(
            &scenario(),
            "c",
            Status::Error,
            &"no QEMU",
            None,
            None,
            "QEMU 10",
        );
        assert!(!bare.contains("## Environment") && bare.contains("no QEMU"));
    }

    #[test]
    fn a_boot_that_did_not_come_back_is_reported_and_judged() {
        use crate::guest::life::{Ended, GuestEnd};
        let not_back = run::NotBack {
            step: 2,
            ended: Ended {
                end: GuestEnd::Emergency,
                reasons: vec![
                    "Timed out waiting for device /dev/disk/by-label/DATA".into(),
                    "Dependency failed for /srv/data".into(),
                ],
                last_line: String::new(),
                quiet: None,
                before_kernel: false,
                host: None,
                processor: None,
            },
            console_tail: "You are in emergency mode.".into(),
            examined: None,
        };
        let judge = |o: &Outcome, not_back: Option<&run::NotBack>| {
            run::check_expectations(
                &o.expect,
                not_back,
                None,
                &o.units,
                &o.before_reboot,
                &o.captures,
            )
        };
        let mut o = outcome("bookworm", "", &[]);
        o.steps = vec![crate::check::outcome::StepRecord {
            title: "reboot".into(),
            action: Action::Reboot,
            output: None,
            expected: None,
            seconds: 30.0,
        }];
        o.captures = vec![not_back.as_capture()];
        o.expect.survive_reboot.clear();
        // Not expected: a failure that names the end.
        o.failures = judge(&o, Some(&not_back));
        o.not_back = Some(not_back.clone());
        let row = Row::of(&o, &Ok(()));
        assert_eq!(row.status, Status::Fail);
        assert_eq!(
            row.verdict,
            "FAIL: the guest did not come back after step 2: the guest is in emergency mode: Timed out waiting for device /dev/disk/by-label/DATA; Dependency failed for /srv/data"
        );
        assert_eq!(
            row.after_reboot,
            "did not come back: emergency (Timed out waiting for device /dev/disk/by-label/DATA)"
        );
        assert_eq!((row.boot.as_str(), row.units.as_str()), ("emergency", "-"));
        let md = markdown(&scenario(), &o, &row, &Ok(()), "QEMU 10");
        assert!(
            md.contains("The guest did not come back after step 2"),
            "{md}"
        );
        assert!(md.contains("```\nYou are in emergency mode.\n```"), "{md}");
        assert!(!md.contains("read the same after it"), "{md}");
        // Expected: reproduced; and a guest that comes back fails.
        o.expect.boot = Some(GuestEnd::Emergency);
        o.failures = judge(&o, Some(&not_back));
        assert_eq!(Row::of(&o, &Ok(())).status, Status::Reproduced);
        o.expect.boot = Some(GuestEnd::Panic);
        let failures = judge(&o, Some(&not_back));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("otherwise than this cell expects (panic)"),
            "{failures:?}"
        );
        o.expect.boot = Some(GuestEnd::Emergency);
        let failures = judge(&o, None);
        assert!(
            failures[0].starts_with("the guest came back after the reboot"),
            "{failures:?}"
        );
        // The capture that stands in the snapshot: the end, reasons sorted.
        assert_eq!(
            not_back.as_capture().text,
            "emergency\nDependency failed for /srv/data\nTimed out waiting for device /dev/disk/by-label/DATA\n"
        );
    }

    #[test]
    fn the_report_shows_what_differs_from_the_snapshot() {
        let o = outcome("bookworm", "", &[]);
        let differs = Err(SnapshotError::Differs {
            name: "s@bookworm-linode".into(),
            path: "snapshots/s@bookworm-linode.snap".into(),
            diff: "--- committed\n+++ this run\n@@ -1 +1 @@\n-old\n+new\n".into(),
        });
        let md = markdown(&scenario(), &o, &Row::of(&o, &differs), &differs, "QEMU 10");
        assert!(md.contains("## What differs from the snapshot"), "{md}");
        assert!(
            md.contains("```diff\n--- committed\n+++ this run\n@@ -1 +1 @@\n-old\n+new\n```"),
            "{md}"
        );
        assert!(!md.contains("cargo insta"), "{md}");
    }

    #[test]
    fn the_units_section_uses_the_cells_own_expectations() {
        let jessie = outcome(
            "jessie",
            "",
            &[
                ("netfilter-persistent.service", "inactive"),
                ("systemd-modules-load.service", "failed"),
            ],
        );
        assert!(jessie.passed(), "{:?}", jessie.failures);
        let row = Row::of(&jessie, &Ok(()));
        let md = markdown(&scenario(), &jessie, &row, &Ok(()), "QEMU 10");
        assert!(!md.contains("EXPECTED"), "{md}");
        assert!(
            md.contains("`netfilter-persistent.service`: inactive (as expected)"),
            "{md}"
        );
        assert!(md.contains("**Verdict:** REPRODUCED"), "{md}");
        // Enough to start the same guest by hand.
        assert!(
            md.contains("qemu-system-x86_64 -nodefaults -kernel vmlinuz"),
            "{md}"
        );
        assert!(
            md.contains("| kernel command line | `console=ttyS0 root=/dev/vda rw` |"),
            "{md}"
        );
    }

    #[test]
    fn rows_carry_a_typed_verdict() {
        let units = [("netfilter-persistent.service", "active")];
        let pass = outcome("bookworm", RULES, &units);
        let row = Row::of(&pass, &Ok(()));
        assert_eq!(
            (row.status, row.after_reboot.as_str()),
            (Status::Pass, "restored")
        );
        assert_eq!(row.accel, "tcg");

        // Lost on a cell that expects it kept: a failure, said in the row.
        let lost = outcome("bookworm", "", &units);
        let row = Row::of(&lost, &Ok(()));
        assert_eq!(row.status, Status::Fail);
        assert_eq!(row.after_reboot, "NOT restored (no rules at all)");

        // A capture with no summary of its own: its value, or its lines.
        let mut generic = outcome("bookworm", "", &units);
        for (capture, text) in [
            (&mut generic.before_reboot[0], "vm.swappiness = 10\n"),
            (&mut generic.captures[0], "vm.swappiness = 60\n"),
        ] {
            capture.normalize.clear();
            capture.text = text.into();
        }
        generic.changes = run::persistence_diff(&generic.before_reboot, &generic.captures);
        let row = Row::of(&generic, &Ok(()));
        assert_eq!(
            row.after_reboot,
            "NOT restored (rules: \"vm.swappiness = 60\")"
        );
        generic.captures[0].text = "a\nb\n".into();
        generic.changes = run::persistence_diff(&generic.before_reboot, &generic.captures);
        let row = Row::of(&generic, &Ok(()));
        assert_eq!(
            row.after_reboot,
            "NOT restored (rules: 1 lines lost, 2 gained)"
        );
        assert!(
            row.verdict.contains("rules not restored after reboot"),
            "{row:?}"
        );

        // Expectations held but nothing committed yet: NEW, never a pass.
        let new = Row::of(
            &pass,
            &Err(SnapshotError::New {
                name: "s@bookworm-linode".into(),
                path: "snapshots/s@bookworm-linode.snap".into(),
            }),
        );
        assert_eq!(new.status, Status::New);
        assert!(!new.status.passed());
        let differs = Row::of(
            &pass,
            &Err(SnapshotError::Differs {
                diff: String::new(),
                name: "s@bookworm-linode".into(),
                path: "snapshots/s@bookworm-linode.snap".into(),
            }),
        );
        assert_eq!(differs.status, Status::Fail);

        // The JSON row has the status as a field of its own.
        let json = serde_json::to_value(&row).expect("serialises");
        assert_eq!(json["status"], "fail");
    }

    #[test]
    fn an_override_that_expects_the_loss_makes_a_kept_state_a_failure() {
        let kept = outcome(
            "jessie",
            RULES,
            &[
                ("netfilter-persistent.service", "inactive"),
                ("systemd-modules-load.service", "failed"),
            ],
        );
        assert_eq!(kept.failures.len(), 1, "{:?}", kept.failures);
        assert!(kept.failures[0].contains("survived the reboot"));
        assert_eq!(Row::of(&kept, &Ok(())).status, Status::Fail);
    }

    #[test]
    fn the_persistence_diff_lists_lost_and_gained_lines() {
        let changes = run::persistence_diff(
            &[capture(RULES)],
            &[capture("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")],
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].lost,
            [":INPUT DROP [0:0]", "-A INPUT -i lo -j ACCEPT"]
        );
        assert_eq!(changes[0].gained, [":INPUT ACCEPT [0:0]"]);
        assert!(run::persistence_diff(&[capture(RULES)], &[capture(RULES)]).is_empty());
    }

    #[test]
    fn the_markdown_table_escapes_pipes_and_shows_the_status() {
        let row = Row::without_outcome(
            "s",
            &Cell {
                release: "jessie".into(),
                kernel: KernelFlavour::stock(),
            },
            Status::Skipped,
            "a | b",
        );
        let table = markdown_table(&[row]);
        assert!(
            table.contains("| s | jessie | stock | - | - | - | **skipped** | skipped: a \\| b |"),
            "{table}"
        );
    }
}
