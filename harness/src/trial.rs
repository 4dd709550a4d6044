//! One trial end to end, as both the test target and `vmrepro run` do it:
//! run the cell, write its Markdown report beside its artifacts, compare its
//! snapshot, and make (and save) its row of the outcome table.

use crate::host;
use crate::project::Project;
use crate::report::{self, Row};
use crate::run::{self, Outcome, RunError, RunOptions};
use crate::scenario::{Cell, Scenario};
use crate::snapshot::{self, SnapshotError};

/// What a trial produced.
pub struct Checked {
    /// The table row (also saved as `row.json` beside the artifacts).
    pub row: Row,
    /// The finished flow, or why it could not finish.
    pub outcome: Result<Outcome, RunError>,
    /// The snapshot comparison (`Ok` when the flow did not finish).
    pub snapshot: Result<(), SnapshotError>,
}

impl Checked {
    /// Whether the flow finished, every expectation held and the snapshot
    /// matched.
    pub fn passed(&self) -> bool {
        self.snapshot.is_ok() && self.outcome.as_ref().is_ok_and(Outcome::passed)
    }
}

/// Runs one scenario on one cell and checks it.
pub fn check(project: &Project, scenario: &Scenario, cell: &Cell, options: &RunOptions) -> Checked {
    let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
    let outcome = run::run_cell(project, scenario, cell, options);
    let (row, snapshot) = match &outcome {
        Ok(outcome) => {
            let qemu = host::tool_version("qemu-system-x86_64").unwrap_or_default();
            let _ = std::fs::write(
                artifacts.join("report.md"),
                report::markdown(scenario, outcome, &qemu),
            );
            let snapshot = snapshot::compare_outcome(&project.snapshots_dir(), scenario, outcome);
            let row = Row::of(
                outcome,
                snapshot
                    .as_ref()
                    .map(|_| ())
                    .map_err(|_| "snapshot differs".to_owned()),
            );
            (row, snapshot)
        }
        Err(e) => {
            let _ = std::fs::create_dir_all(&artifacts);
            let _ = std::fs::write(
                artifacts.join("report.md"),
                report::markdown_error(scenario, &cell.to_string(), e),
            );
            let first = e.to_string().lines().next().unwrap_or("").to_owned();
            let verdict = match e {
                RunError::Image(crate::image::ImageError::Unreachable { reason, .. }) => {
                    format!("skipped: {reason}")
                }
                _ => format!("ERROR: {first}"),
            };
            (Row::without_outcome(&scenario.name, cell, verdict), Ok(()))
        }
    };
    report::save_row(&artifacts, &row);
    Checked {
        row,
        outcome,
        snapshot,
    }
}
