//! What a trial came to, as a type: the report, the outcome table, its
//! colours, the JSON rows and the exit status all read it, so none of them
//! has to search a rendered string.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::check::outcome::Outcome;
use crate::check::snapshot::SnapshotError;

/// The verdict of one trial (a scenario on one matrix cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every expectation held and the captures match the committed snapshot.
    Pass,
    /// As `Pass`, on a cell that expects the state to be lost across the
    /// reboot: the bug is reproduced, as the scenario asserts.
    Reproduced,
    /// Every expectation held, but the cell has no committed snapshot yet;
    /// a pending one was written for review. Never counted as a pass.
    New,
    /// The guest did something the scenario does not expect: an expectation,
    /// a step's exit status, the snapshot, or a guest that stopped answering.
    Fail,
    /// The cell could not be run here: an image, a kernel or QEMU could not
    /// be had, or a release that must run could not be fetched.
    Error,
    /// The cell was not run: its release cannot be fetched from this host.
    Skipped,
}

impl Status {
    /// Every status, in the order the documentation lists them.
    #[cfg(test)]
    pub(crate) const ALL: &'static [Status] = &[
        Status::Pass,
        Status::Reproduced,
        Status::New,
        Status::Fail,
        Status::Error,
        Status::Skipped,
    ];

    /// The name used in tables, JSON and reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Reproduced => "reproduced",
            Status::New => "new",
            Status::Fail => "fail",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }

    /// Whether the trial is a success for a test runner.
    pub fn passed(self) -> bool {
        matches!(self, Status::Pass | Status::Reproduced)
    }

    /// The exit status a run made of this one trial ends with.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Pass | Status::Reproduced => EXIT_PASS,
            Status::New | Status::Fail => EXIT_FAIL,
            Status::Error => EXIT_ENV,
            Status::Skipped => EXIT_SKIPPED,
        }
    }

    /// ANSI colour code for terminals.
    pub fn colour(self) -> &'static str {
        match self {
            Status::Pass | Status::Reproduced => "32",
            Status::New | Status::Skipped => "33",
            Status::Fail | Status::Error => "31",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whose doing it was that a trial's flow could not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// The guest's: a step with the wrong exit status, a guest that
    /// stopped answering, rebooted, powered off or panicked in a step.
    Guest,
    /// The host's: an image, a kernel or QEMU that cannot be had.
    Host,
    /// Nobody's here: the release's archive cannot be reached.
    Unreachable,
}

/// How a trial ended, for [`decide`].
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    /// The flow ran (to its end, or to a boot that did not come back) and
    /// its outcome was compared with the committed snapshot.
    Checked {
        /// What the trial found.
        outcome: &'a Outcome,
        /// The comparison with the committed snapshot.
        snapshot: &'a Result<(), SnapshotError>,
    },
    /// The flow could not run to its end.
    Unfinished {
        /// Whose doing it was.
        why: Unfinished,
        /// What happened, in one line.
        message: &'a str,
        /// The cell's release.
        release: &'a str,
        /// Whether the release must boot in this run (an unreachable
        /// archive is then an error, not a skip).
        required: bool,
    },
}

/// A trial's verdict: its status and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The status, from which the exit status follows.
    pub status: Status,
    /// The verdict line of the table and the report.
    pub text: String,
}

/// Decides a trial's verdict. This is the one place that does: the table's
/// rows, the reports, the JSON, `cargo test` and the exit status all take
/// it from here.
pub fn decide(ended: Ended<'_>) -> Verdict {
    let (status, text) = match ended {
        Ended::Unfinished {
            why: Unfinished::Unreachable,
            message,
            release,
            required: true,
        } => (
            Status::Error,
            format!("{release} is required here and cannot be fetched: {message}"),
        ),
        Ended::Unfinished { why, message, .. } => (
            match why {
                Unfinished::Guest => Status::Fail,
                Unfinished::Host => Status::Error,
                Unfinished::Unreachable => Status::Skipped,
            },
            message.to_owned(),
        ),
        Ended::Checked { outcome, snapshot } => {
            let (status, text) = match (outcome.passed(), snapshot) {
                (false, _) => (
                    Status::Fail,
                    format!("FAIL: {}", outcome.failures.join("; ")),
                ),
                (true, Err(SnapshotError::New { name, path })) => (
                    Status::New,
                    format!("NEW: every expectation held; no committed snapshot yet: read {path}.new, then `vmrepro accept {name}`"),
                ),
                (true, Err(e @ SnapshotError::Failed { .. })) => (Status::Error, e.to_string()),
                (true, Err(e)) => (Status::Fail, format!("FAIL: {e}")),
                // A cell that asserts a loss, or how the boot ends,
                // proves the bug when every expectation holds.
                (true, Ok(()))
                    if !outcome.expect.lost_on_reboot.is_empty()
                        || outcome.expect.boot.is_some() =>
                {
                    (Status::Reproduced, "reproduced".to_owned())
                }
                (true, Ok(())) => (Status::Pass, "pass".to_owned()),
            };
            match outcome.reboot_changes.as_ref().filter(|c| !c.is_empty()) {
                Some(changes) => (
                    status,
                    format!("{text} (the reboot changed: {})", changes.short()),
                ),
                None => (status, text),
            }
        }
    };
    Verdict { status, text }
}

/// Exit status: every trial passed (or reproduced the bug it asserts).
pub const EXIT_PASS: u8 = 0;
/// Exit status: a trial failed, or has no committed snapshot yet (new).
pub const EXIT_FAIL: u8 = 1;
/// Exit status: bad usage or input (a malformed scenario, an unknown name).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the environment could not run a trial (missing tools, an
/// image or kernel that cannot be built, QEMU trouble, a required release
/// that cannot be fetched).
pub const EXIT_ENV: u8 = 3;
/// Exit status: every trial that ran passed, but some were skipped because
/// their release cannot be fetched here.
pub const EXIT_SKIPPED: u8 = 4;

/// The exit status of a run made of these trials: a failure wins over an
/// environment problem, which wins over skips; no trials at all is a pass
/// only when nothing was asked for (callers refuse empty selections).
pub fn exit_code(statuses: impl IntoIterator<Item = Status>) -> u8 {
    let mut code = EXIT_PASS;
    for status in statuses {
        code = worse(code, status.exit_code());
    }
    code
}

/// The more serious of two exit statuses.
pub(crate) fn worse(a: u8, b: u8) -> u8 {
    let rank = |code: u8| match code {
        EXIT_PASS => 0,
        EXIT_SKIPPED => 1,
        EXIT_ENV => 2,
        EXIT_USAGE => 3,
        _ => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_wins_over_an_environment_problem_and_both_over_skips() {
        use Status::*;
        assert_eq!(exit_code([Pass, Reproduced]), EXIT_PASS);
        assert_eq!(exit_code([Pass, Skipped]), EXIT_SKIPPED);
        assert_eq!(exit_code([Skipped, Error, Pass]), EXIT_ENV);
        assert_eq!(exit_code([Error, Fail, Skipped]), EXIT_FAIL);
        assert_eq!(exit_code([Fail, Error]), EXIT_FAIL);
        assert_eq!(exit_code([New, Pass]), EXIT_FAIL);
        assert_eq!(exit_code([]), EXIT_PASS);
    }

    #[test]
    fn only_pass_and_reproduced_are_passes() {
        let passes: Vec<Status> = Status::ALL.iter().copied().filter(|s| s.passed()).collect();
        assert_eq!(passes, [Status::Pass, Status::Reproduced]);
    }

    #[test]
    fn an_unfinished_trial_is_judged_by_whose_doing_it_was() {
        let judge = |why, required| {
            decide(Ended::Unfinished {
                why,
                message: "it broke",
                release: "jessie",
                required,
            })
        };
        assert_eq!(judge(Unfinished::Guest, true).status, Status::Fail);
        assert_eq!(judge(Unfinished::Host, false).status, Status::Error);
        assert_eq!(
            judge(Unfinished::Unreachable, false).status,
            Status::Skipped
        );
        assert_eq!(judge(Unfinished::Unreachable, false).text, "it broke");
        let required = judge(Unfinished::Unreachable, true);
        assert_eq!(required.status, Status::Error);
        assert_eq!(
            required.text,
            "jessie is required here and cannot be fetched: it broke"
        );
    }

    #[test]
    fn statuses_serialise_as_their_names() {
        for status in Status::ALL {
            let json = serde_json::to_string(status).expect("serialises");
            assert_eq!(json, format!("\"{}\"", status.name()));
        }
    }
}
