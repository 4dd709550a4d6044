//! What a finished trial knows, and the checks made on it: what each step
//! did, what the reboot changed, whether the cell's expectations held.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::check::capture::Capture;
use crate::guest::console::CommandOutput;
use crate::guest::life::Ended;
use crate::guest::vm::{AccelChoice, VmSetup};
use crate::guest::warm::Start;
use crate::project::{Action, Cell, Expectations, Scenario, StepStatus};

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The step's title.
    pub(crate) title: String,
    /// The step's action.
    pub(crate) action: Action,
    /// What the guest answered (none for a reboot).
    pub output: Option<CommandOutput>,
    /// The exit status this cell expected (none for a write or a reboot).
    pub(crate) expected: Option<StepStatus>,
    /// Wall time.
    pub seconds: f64,
}

/// A capture that read differently before the last reboot and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The capture's name.
    pub(crate) name: String,
    /// Lines present before the reboot and gone after it.
    pub(crate) lost: Vec<String>,
    /// Lines present after the reboot only.
    pub(crate) gained: Vec<String>,
}

/// Everything a finished trial knows.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario's name.
    pub(crate) scenario: String,
    /// The cell.
    pub(crate) cell: Cell,
    /// The accelerator and why.
    pub accel: AccelChoice,
    /// `uname -r` in the guest.
    pub(crate) guest_kernel: String,
    /// How the guest that ran the flow was started (QEMU's command line, the
    /// kernel's, the machine), also in `qemu-command.txt` beside the
    /// artifacts: enough to start the same guest without vmrepro.
    pub(crate) setup: VmSetup,
    /// Versions of the packages the scenario touches, from the image build.
    pub(crate) packages: BTreeMap<String, String>,
    /// Where the image came from (bootstrapped, or imported from a file).
    pub(crate) image_origin: String,
    /// What each step did.
    pub steps: Vec<StepRecord>,
    /// Captures taken just before the last reboot (empty without a reboot).
    pub before_reboot: Vec<Capture>,
    /// Captures at the end of the flow.
    pub captures: Vec<Capture>,
    /// What did not survive the last reboot.
    pub(crate) changes: Vec<Change>,
    /// What the last reboot changed that the harness read on its own
    /// (`None`: no reboot that came back, or no evidence read).
    pub reboot_changes: Option<crate::check::evidence::Changes>,
    /// Unit → `systemctl is-active` answer, for the expected units.
    pub(crate) units: BTreeMap<String, String>,
    /// The expectations that applied to this cell.
    pub(crate) expect: Expectations,
    /// Failed expectations, one line each; empty when all held.
    pub failures: Vec<String>,
    /// How the guest reached its first shell.
    pub start: Start,
    /// Where the trial's time went.
    pub timings: Timings,
    /// Where console log and captures were written.
    pub(crate) artifacts: PathBuf,
    /// The boot after a reboot step that did not come back to the shell:
    /// the flow ended there.
    pub not_back: Option<NotBack>,
}

/// A reboot step whose boot ended anywhere but at the control shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBack {
    /// The reboot step (1-based).
    pub step: usize,
    /// How the boot ended, and why, from the kernel console.
    pub ended: Ended,
    /// The kernel console's last lines when it was noticed: the evidence,
    /// since no shell is left to capture anything from.
    pub console_tail: String,
    /// What could be read from the guest where it ended, once looked at.
    pub examined: Option<Examined>,
}

/// What the harness could read from a guest that did not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Examined {
    /// A root shell in the emergency or rescue mode the boot ended in: the
    /// scenario's captures were taken there (they follow the stand-in
    /// capture in [`Outcome::captures`]), and these.
    Shell {
        /// `systemctl --failed`, as the guest listed it.
        failed_units: String,
        /// The boot's journal entries of priority warning or worse.
        journal: String,
    },
    /// No shell could be had; the console is the evidence.
    Closed {
        /// Why, in words.
        why: String,
    },
}

impl NotBack {
    /// What the boot came to, as the capture that stands in the snapshot
    /// and the report for the captures a shell would have given: the end's
    /// name, then the console lines that explain it.
    pub(crate) fn as_capture(&self) -> Capture {
        let mut text = format!("{}\n", self.ended.end.name());
        // Sorted: systemd may report the same failures in another order
        // from one boot to the next.
        let mut reasons = self.ended.reasons.clone();
        reasons.sort();
        for reason in &reasons {
            text.push_str(reason);
            text.push('\n');
        }
        Capture {
            name: format!("how the boot after step {} ended", self.step),
            command: "(read from the kernel console)".into(),
            status: 0,
            raw: text.clone(),
            text,
            probe: None,
            normalize: Vec::new(),
        }
    }
}

/// Where a trial's time went, in seconds, phase by phase. The guest's
/// phases are what the flow itself costs; the rest is the harness's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Finding (or building) what the cell boots, its saved state included,
    /// and starting QEMU's disk overlay: the harness's own.
    pub prepare: f64,
    /// From starting QEMU to a ready shell: the saved state resumed, or a
    /// boot from power-on.
    pub start: f64,
    /// After a boot from power-on, from the shell to systemd settled (none
    /// after a resume: the state was saved settled).
    pub start_settle: f64,
    /// The steps other than reboots, together (each step's own time is in
    /// its record).
    pub steps: f64,
    /// The captures taken just before the last reboot.
    pub captures_before: f64,
    /// From asking for each reboot to a shell of the new boot.
    pub reboot_to_shell: f64,
    /// From that shell to systemd settled.
    pub reboot_settle: f64,
    /// The captures at the end (and the states of the units the
    /// expectations name).
    pub captures_after: f64,
    /// Stopping QEMU: the harness's own.
    pub stop: f64,
    /// The whole trial, from looking for its image to its guest stopped.
    pub total: f64,
}

impl Timings {
    /// The time the guest was working: starting, the steps, the reboots
    /// until settled, the captures.
    pub fn guest(&self) -> f64 {
        self.start
            + self.start_settle
            + self.steps
            + self.captures_before
            + self.reboot_to_shell
            + self.reboot_settle
            + self.captures_after
    }

    /// The harness's own time: the whole trial less the guest's work.
    pub fn harness(&self) -> f64 {
        (self.total - self.guest()).max(0.0)
    }

    /// The harness's own time between the phases, beyond preparing and
    /// stopping.
    pub fn between(&self) -> f64 {
        (self.harness() - self.prepare - self.stop).max(0.0)
    }

    /// The phases in order, named, for a report or a benchmark. Phases that
    /// did not happen (no reboot, no settling after a resume) are left out.
    pub fn phases(&self, resumed: bool) -> Vec<(&'static str, f64)> {
        let mut phases = vec![("preparing (image, kernel, saved state)", self.prepare)];
        phases.push((
            if resumed {
                "resuming to a shell"
            } else {
                "booting to a shell"
            },
            self.start,
        ));
        if !resumed {
            phases.push(("settling after the boot", self.start_settle));
        } else {
            // After a resume: the wait for the timers its clock's jump set
            // off (never nothing: at least the look that none did).
            phases.push(("timers due while the state was saved", self.start_settle));
        }
        phases.push(("steps", self.steps));
        if self.reboot_to_shell > 0.0 {
            phases.push(("captures before the reboot", self.captures_before));
            phases.push(("reboot to a shell", self.reboot_to_shell));
            phases.push(("settling after the reboot", self.reboot_settle));
        }
        phases.push(("captures after", self.captures_after));
        phases.push(("stopping QEMU", self.stop));
        phases.push(("harness, between phases", self.between()));
        phases
    }
}

impl Outcome {
    /// What is known of a trial of `scenario` on `cell` before its flow
    /// runs: nothing taken, nothing checked, no time spent yet; the guest's
    /// start and setup are the caller's to fill in.
    pub(crate) fn before_the_flow(
        scenario: &Scenario,
        cell: &Cell,
        accel: AccelChoice,
        artifacts: std::path::PathBuf,
    ) -> Outcome {
        Outcome {
            scenario: scenario.name.clone(),
            cell: cell.clone(),
            accel,
            guest_kernel: String::new(),
            setup: VmSetup::default(),
            packages: BTreeMap::new(),
            image_origin: String::new(),
            steps: Vec::new(),
            before_reboot: Vec::new(),
            captures: Vec::new(),
            changes: Vec::new(),
            reboot_changes: None,
            units: BTreeMap::new(),
            expect: scenario.expectations_for(cell),
            failures: Vec::new(),
            start: Start::Cold,
            timings: Timings::default(),
            artifacts,
            not_back: None,
        }
    }

    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Line-level differences between the captures before and after the reboot.
pub(crate) fn persistence_diff(before: &[Capture], after: &[Capture]) -> Vec<Change> {
    before
        .iter()
        .filter_map(|b| {
            let a = after.iter().find(|a| a.name == b.name)?;
            if a.text == b.text {
                return None;
            }
            let after_lines: Vec<&str> = a.text.lines().collect();
            let before_lines: Vec<&str> = b.text.lines().collect();
            Some(Change {
                name: b.name.clone(),
                lost: before_lines
                    .iter()
                    .filter(|l| !after_lines.contains(l))
                    .map(|l| l.to_string())
                    .collect(),
                gained: after_lines
                    .iter()
                    .filter(|l| !before_lines.contains(l))
                    .map(|l| l.to_string())
                    .collect(),
            })
        })
        .collect()
}

/// Checks a cell's expectations; one verdict line per failure.
pub(crate) fn check_expectations(
    expect: &Expectations,
    not_back: Option<&NotBack>,
    reboot_changes: Option<&crate::check::evidence::Changes>,
    units: &BTreeMap<String, String>,
    before: &[Capture],
    after: &[Capture],
) -> Vec<String> {
    let find = |captures: &[Capture], name: &str| captures.iter().find(|c| c.name == name).cloned();
    let mut failures = Vec::new();
    // How the boot ended comes first; a guest that did not come back has no
    // state after the reboot to check the other expectations against.
    match (expect.boot, not_back) {
        (None, None) => {}
        (None, Some(not_back)) => {
            failures.push(format!(
                "the guest did not come back after step {}: {}",
                not_back.step, not_back.ended
            ));
            return failures;
        }
        (Some(expected), None) => {
            failures.push(format!(
                "the guest came back after the reboot, but this cell expects its boot to end in {}; if something fixed it, update the scenario's expectations",
                expected.name()
            ));
        }
        (Some(expected), Some(not_back)) => {
            if not_back.ended.end != expected {
                failures.push(format!(
                    "the boot after step {} ended otherwise than this cell expects ({}): {}",
                    not_back.step,
                    expected.name(),
                    not_back.ended
                ));
            }
            return failures;
        }
    }
    for name in &expect.unchanged {
        let (source, item) = match name.split_once(':') {
            Some((source, item)) => (source, Some(item)),
            None => (name.as_str(), None),
        };
        let Some(changes) =
            reboot_changes.filter(|c| c.compared.iter().any(|s| s.name() == source))
        else {
            failures.push(format!(
                "{name} could not be compared: the {source} evidence was not read on both sides of the reboot"
            ));
            continue;
        };
        let mut changed: Vec<String> = changes
            .changes
            .iter()
            .filter(|c| c.source.name() == source && item.is_none_or(|i| c.item == i))
            .map(|c| c.describe())
            .collect();
        if source == "journal" {
            changed.extend(
                changes
                    .going_down
                    .iter()
                    .filter(|(who, _)| item.is_none_or(|i| who == i))
                    .map(|(who, message)| format!("journal {who}: {message} (going down)")),
            );
        }
        if source == "units" {
            changed.extend(
                changes
                    .failed_units
                    .iter()
                    .filter(|(unit, _)| item.is_none_or(|i| unit == i))
                    .map(|(unit, _)| format!("units {unit}: failed")),
            );
        }
        if !changed.is_empty() {
            failures.push(format!(
                "the reboot changed {name} — {}",
                changed.join("; ")
            ));
        }
    }
    // An expectation about the reboot that cannot be compared is no pass:
    // it says so.
    let both =
        |name: &str, failures: &mut Vec<String>| match (find(before, name), find(after, name)) {
            (Some(b), Some(a)) => Some((b, a)),
            (b, _) => {
                let side = if b.is_none() {
                    "before the reboot"
                } else {
                    "after it"
                };
                failures.push(format!(
                    "{name} could not be compared: it was not captured {side}"
                ));
                None
            }
        };
    for name in &expect.survive_reboot {
        if let Some((b, a)) = both(name, &mut failures) {
            if a.text != b.text || a.status != b.status {
                failures.push(format!(
                    "{name} not restored after reboot — {}",
                    describe_change(&b, &a)
                ));
            }
        }
    }
    for name in &expect.lost_on_reboot {
        if let Some((b, a)) = both(name, &mut failures) {
            if a.text == b.text && a.status == b.status {
                failures.push(format!(
                    "{name} survived the reboot ({}), but this cell expects it lost; if something fixed it, update the scenario's expectations",
                    describe(&a)
                ));
            }
        }
    }
    for (unit, expected) in &expect.units {
        let got = units.get(unit).map(String::as_str).unwrap_or("(not read)");
        if got != expected {
            failures.push(format!("{unit} is {got}, expected {expected}"));
        }
    }
    for (name, texts) in &expect.contains {
        let raw = find(after, name).map(|c| c.raw).unwrap_or_default();
        for text in texts {
            if !raw.contains(text.as_str()) {
                failures.push(format!("{name} lacks {text:?}"));
            }
        }
    }
    failures
}

/// A capture's own one-line summary, where it has one: a probe's answer, a
/// command that failed, or the summary its normaliser gives (the INPUT
/// chain of an iptables-save).
fn own_summary(capture: &Capture) -> Option<String> {
    if let (Some(port), 0) = (capture.probe, capture.status) {
        return Some(format!("tcp/{port} {} from outside", capture.text.trim()));
    }
    if capture.status != 0 {
        let first = capture
            .raw
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("[stderr]"))
            .unwrap_or("no output");
        return Some(format!(
            "`{}` exited {}: {first}",
            crate::text::ellipsize(capture.command.trim(), 60),
            capture.status
        ));
    }
    capture
        .normalize
        .iter()
        .find_map(|n| n.summary(&capture.text))
}

/// A short description of a capture for verdicts: its own summary, else
/// its one line, else how many lines it has.
pub(crate) fn describe(capture: &Capture) -> String {
    own_summary(capture).unwrap_or_else(|| {
        let lines: Vec<&str> = capture
            .text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        match lines.as_slice() {
            [] => "empty".into(),
            [one] => format!("{:?}", crate::text::ellipsize(one.trim(), 60)),
            many => format!("{} lines", many.len()),
        }
    })
}

/// What changed between two readings of one capture, in a few words: the
/// capture's own summaries where it has them, its one line where it has one
/// line, else how many lines went and came.
pub(crate) fn describe_change(before: &Capture, after: &Capture) -> String {
    let single = |c: &Capture| c.text.trim().lines().count() <= 1;
    if own_summary(after).is_some()
        || own_summary(before).is_some()
        || (single(before) && single(after))
    {
        return format!("{}, was {}", describe(after), describe(before));
    }
    let (b, a): (Vec<&str>, Vec<&str>) =
        (before.text.lines().collect(), after.text.lines().collect());
    let lost = b.iter().filter(|l| !a.contains(l)).count();
    let gained = a.iter().filter(|l| !b.contains(l)).count();
    format!("{lost} of {} lines lost, {gained} gained", b.len())
}

/// Writes each capture's raw output beside the report, as
/// `NAME.before-reboot.txt` and `NAME.after.txt` (`NAME` made fit for a
/// file name).
pub(crate) fn write_artifacts(
    dir: &std::path::Path,
    before: &[Capture],
    after: &[Capture],
) -> std::io::Result<()> {
    // Every file is tried; the first failure is said.
    let mut failed = Ok(());
    for (suffix, captures) in [("before-reboot", before), ("after", after)] {
        let mut used = std::collections::BTreeSet::new();
        for capture in captures {
            let mut stem = file_stem(&capture.name);
            // Two names that differ only in what a file name cannot hold.
            let mut n = 1;
            while !used.insert(stem.clone()) {
                n += 1;
                stem = format!("{} ({n})", file_stem(&capture.name));
            }
            let written = std::fs::write(dir.join(format!("{stem}.{suffix}.txt")), &capture.raw);
            if failed.is_ok() {
                failed = written;
            }
        }
    }
    failed
}

/// A capture's name as the start of a file name in the artifacts folder:
/// a `/` (which a name such as `tcp/8080 from the host` has) or any
/// control character becomes `_`, a name of dots alone gets a `_` before
/// it, and a long one is cut to 200 bytes (file names hold 255).
fn file_stem(name: &str) -> String {
    let mut stem: String = name
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    if stem.is_empty() || stem.chars().all(|c| c == '.') {
        stem.insert(0, '_');
    }
    if stem.len() > 200 {
        let mut end = 200;
        while !stem.is_char_boundary(end) {
            end -= 1;
        }
        stem.truncate(end);
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Normalizer;

    fn capture(name: &str, text: &str, normalize: Vec<Normalizer>) -> Capture {
        Capture {
            name: name.into(),
            command: "cmd".into(),
            status: 0,
            text: text.into(),
            raw: text.into(),
            probe: None,
            normalize,
        }
    }

    #[test]
    fn reboot_expectations_hold_fail_or_say_they_could_not_be_compared() {
        let expect = Expectations {
            survive_reboot: vec!["kept".into(), "only after".into()],
            lost_on_reboot: vec!["gone".into()],
            ..Expectations::default()
        };
        let before = [
            capture("kept", "1\n", vec![]),
            capture("gone", "loaded\n", vec![]),
        ];
        let after = [
            capture("kept", "1\n", vec![]),
            capture("gone", "\n", vec![]),
            capture("only after", "x\n", vec![]),
        ];
        let failures = check_expectations(&expect, None, None, &BTreeMap::new(), &before, &after);
        assert_eq!(
            failures,
            ["only after could not be compared: it was not captured before the reboot"]
        );
        let after = [
            capture("kept", "2\n", vec![]),
            capture("gone", "loaded\n", vec![]),
        ];
        let failures = check_expectations(&expect, None, None, &BTreeMap::new(), &before, &after);
        assert_eq!(
            failures,
            [
                "kept not restored after reboot — \"2\", was \"1\"",
                "only after could not be compared: it was not captured before the reboot",
                "gone survived the reboot (\"loaded\"), but this cell expects it lost; if something fixed it, update the scenario's expectations",
            ]
        );
    }

    #[test]
    fn changes_are_said_in_the_captures_own_terms() {
        // One line: its value, before and after.
        let before = capture("ip_forward", "net.ipv4.ip_forward = 1\n", vec![]);
        let after = capture("ip_forward", "net.ipv4.ip_forward = 0\n", vec![]);
        assert_eq!(
            describe_change(&before, &after),
            "\"net.ipv4.ip_forward = 0\", was \"net.ipv4.ip_forward = 1\""
        );
        // Many lines, no summary of their own: what went and came.
        let before = capture("modules", "a\nb\nc\n", vec![]);
        let after = capture("modules", "a\nd\n", vec![]);
        assert_eq!(
            describe_change(&before, &after),
            "2 of 3 lines lost, 1 gained"
        );
        // The iptables normaliser summarises its own format.
        let rules = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";
        let before = capture("rules", rules, vec![Normalizer::Iptables]);
        let after = capture("rules", "", vec![Normalizer::Iptables]);
        assert_eq!(
            describe_change(&before, &after),
            "no rules at all, was INPUT policy DROP with 1 rules"
        );
        // A probe says what a client found.
        let mut open = capture("port", "open\n", vec![]);
        open.probe = Some(8080);
        assert_eq!(describe(&open), "tcp/8080 open from outside");
    }

    #[test]
    fn every_capture_is_written_whatever_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let captures = [
            capture("tcp/8080 from the host", "no answer\n", Vec::new()),
            capture("tcp_8080 from the host", "other\n", Vec::new()),
            capture("..", "dots\n", Vec::new()),
            capture("journal: a\tb", "tab\n", Vec::new()),
        ];
        write_artifacts(dir.path(), &captures, &captures[..1]).expect("written");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "_...before-reboot.txt",
                "journal: a_b.before-reboot.txt",
                "tcp_8080 from the host (2).before-reboot.txt",
                "tcp_8080 from the host.after.txt",
                "tcp_8080 from the host.before-reboot.txt",
            ]
        );
        assert_eq!(file_stem(&"é".repeat(150)).len(), 200);
        // A folder that is not there fails, after trying every file.
        let gone = dir.path().join("gone");
        assert!(write_artifacts(&gone, &captures, &[]).is_err());
    }
}
