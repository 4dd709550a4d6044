//! What a trial came to, as a type: the report, the outcome table, its
//! colours, the JSON rows and the exit status all read it, so none of them
//! has to search a rendered string.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    fn statuses_serialise_as_their_names() {
        for status in Status::ALL {
            let json = serde_json::to_string(status).expect("serialises");
            assert_eq!(json, format!("\"{}\"", status.name()));
        }
    }
}
