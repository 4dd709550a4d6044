//! A Markdown report of one trial, to paste into a bug report.

use std::fmt::Write as _;

use crate::run::{Outcome, RunError};
use crate::scenario::{Action, Scenario};

/// Packages whose versions matter for the scenarios this project ships.
const INTERESTING: &[&str] = &[
    "systemd",
    "kmod",
    "iptables",
    "iptables-persistent",
    "netfilter-persistent",
    "udev",
];

/// Renders a finished trial.
pub fn markdown(scenario: &Scenario, outcome: &Outcome, qemu_version: &str) -> String {
    let mut md = String::new();
    let verdict = if outcome.passed() {
        "PASS: every expectation held".to_owned()
    } else {
        format!("FAIL: {}", outcome.failures.join("; "))
    };
    let _ = writeln!(md, "# vmrepro: {} on {}\n", scenario.name, outcome.cell);
    let _ = writeln!(md, "**Verdict:** {verdict}\n");
    let _ = writeln!(md, "{}\n", scenario.description);
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
    let _ = writeln!(
        md,
        "| kernel | {} (`{}`) |",
        outcome.cell.kernel, outcome.guest_kernel
    );
    for package in INTERESTING {
        if let Some(version) = outcome.packages.get(*package) {
            let _ = writeln!(md, "| {package} | {version} |");
        }
    }
    let _ = writeln!(
        md,
        "| timings | first boot to shell {:.1}s, whole trial {:.1}s |\n",
        outcome.first_boot_seconds, outcome.total_seconds
    );

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
        }
        if let Some(out) = &step.output {
            let text = format!("{}{}", out.stdout, out.stderr);
            if !text.trim().is_empty() {
                let _ = writeln!(
                    md,
                    "   Output (exit {}):\n   ```\n{}\n   ```",
                    out.status,
                    indent(text.trim_end())
                );
            } else {
                let _ = writeln!(md, "   Exit {}.", out.status);
            }
        }
    }

    let _ = writeln!(md, "\n## What did not survive the reboot\n");
    if outcome.before_reboot.is_empty() {
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
            let expected = scenario
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

    let _ = writeln!(md, "\n## Captures after the flow\n");
    for capture in &outcome.captures {
        let _ = writeln!(md, "### {} (exit {})\n", capture.name, capture.status);
        let _ = writeln!(md, "```sh\n$ {}\n```", capture.command.trim());
        let _ = writeln!(md, "```\n{}\n```\n", capture.raw.trim_end());
    }
    let _ = writeln!(
        md,
        "Artifacts (console log, captures): `{}`",
        outcome.artifacts.display()
    );
    md
}

/// Renders a trial that could not run to the end.
pub fn markdown_error(scenario: &Scenario, cell: &str, error: &RunError) -> String {
    format!(
        "# vmrepro: {} on {cell}\n\n**Verdict:** ERROR: the flow could not run to the end\n\n```\n{error}\n```\n",
        scenario.name
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
