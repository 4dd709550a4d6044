//! A guest that did not come back, examined where it ended.
//!
//! In emergency and rescue mode the only shell is sulogin's, on the kernel
//! console. The images tell systemd-sulogin-shell to pass `--force`
//! (`SYSTEMD_SULOGIN_FORCE`, systemd 240 and later), so that sulogin opens
//! it for a locked root after Enter. The harness presses Enter there, starts
//! a getty with its autologin on the control port from that shell, and
//! takes the scenario's captures, the failed units and the boot's warnings
//! through the control shell as at any other time. Where sulogin stays shut
//! (jessie's and stretch's systemd run it without `--force`), or the guest
//! panicked or powered off, the console is the evidence.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::check::capture::Capture;
use crate::check::outcome::{Examined, NotBack};
use crate::media::image::CONTROL_TTY;
use crate::project::{CaptureSpec, GuestEnd};

use super::steps::{Ledger, Machine};

/// How long sulogin may take to ask for Enter after the mode's banner.
const SULOGIN_WAIT: Duration = Duration::from_secs(20);
/// How long the shell may take to show its prompt after Enter.
const PROMPT_WAIT: Duration = Duration::from_secs(20);
/// How long the control shell started from the console may take to answer.
const CONTROL_WAIT: Duration = Duration::from_secs(90);

/// What sulogin says when `--force` lets it open a shell for a locked root:
/// "Press Enter for maintenance" (util-linux up to 2.40) or "Press Enter
/// for system maintenance" (2.41, trixie), login-utils/sulogin.c `doprompt`.
const OPEN: &str = r"Press Enter for (system )?maintenance";
/// What it says when it will not (sulogin.c, without `--force`).
const SHUT: &str = r"root account is locked";

/// The failed units, as the guest lists them (`--no-legend` is in
/// jessie's 215).
const FAILED_UNITS: &str = "systemctl --failed --no-legend --no-pager";
/// The boot's journal entries of priority warning or worse, each with the
/// time since boot (`-p` and `-o short-monotonic` are in 215).
const JOURNAL: &str = "journalctl -b -p warning --no-pager -o short-monotonic";

/// Opens a shell in the mode the guest ended in, where it can, and takes
/// the scenario's captures there. Returns what was read and the captures
/// (empty when no shell could be had). Progress goes to `label`.
pub(super) fn examine(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    captures: &[CaptureSpec],
    not_back: &NotBack,
) -> (Examined, Vec<Capture>) {
    let label = ledger.label;
    match not_back.ended.end {
        GuestEnd::Emergency | GuestEnd::Rescue => {}
        other => {
            return (
                Examined::Closed {
                    why: format!("a guest that {} runs no shell", other.describe()),
                },
                Vec::new(),
            )
        }
    }
    let mode = not_back.ended.end.name();
    match open_shell(machine, ledger, mode) {
        Err(why) => {
            ledger
                .events
                .note(label, &format!("no shell in {mode} mode: {why}"));
            (Examined::Closed { why }, Vec::new())
        }
        Ok(()) => {
            ledger.events.note(
                label,
                &format!("capturing state from the control shell opened in {mode} mode"),
            );
            let capturing = Instant::now();
            let extra = [
                (
                    format!("listing failed units ({mode} mode)"),
                    FAILED_UNITS.to_owned(),
                ),
                (
                    format!("reading the boot's warnings ({mode} mode)"),
                    JOURNAL.to_owned(),
                ),
            ];
            let taken = machine.capture(captures, &format!("in {mode} mode"), &extra);
            ledger.timings.captures_after += capturing.elapsed().as_secs_f64();
            match taken {
                Ok(taken) => {
                    *ledger.kernel_release = Some(taken.facts.kernel_release.clone());
                    let text = |i: usize| {
                        taken
                            .extra
                            .get(i)
                            .map(|out| out.stdout.clone())
                            .unwrap_or_default()
                    };
                    (
                        Examined::Shell {
                            failed_units: text(0),
                            journal: text(1),
                        },
                        taken.captures,
                    )
                }
                Err(e) => (
                    Examined::Closed {
                        why: format!("the shell opened in {mode} mode stopped answering: {e}"),
                    },
                    Vec::new(),
                ),
            }
        }
    }
}

/// Presses Enter at sulogin's prompt on the console, starts a getty with
/// autologin on the control port from the shell that opens, and waits for
/// that shell to answer.
fn open_shell(
    machine: &mut dyn Machine,
    ledger: &mut Ledger<'_>,
    mode: &str,
) -> Result<(), String> {
    let log = machine.console_log();
    let open = Regex::new(OPEN).map_err(|e| e.to_string())?;
    let shut = Regex::new(SHUT).map_err(|e| e.to_string())?;
    let boot = last_boot_start(&log);
    let said = wait_in_log(&log, boot, SULOGIN_WAIT, |text| {
        if open.is_match(text) {
            Some(true)
        } else if shut.is_match(text) {
            Some(false)
        } else {
            None
        }
    });
    match said {
        Some(true) => {}
        Some(false) => {
            return Err(
                "root's account is locked and this release's sulogin will not open it (systemd before 240 does not pass it --force for SYSTEMD_SULOGIN_FORCE)"
                    .into(),
            )
        }
        None => {
            return Err(format!(
                "sulogin did not ask for Enter on the console within {}s",
                SULOGIN_WAIT.as_secs()
            ))
        }
    }
    ledger.events.note(
        ledger.label,
        &format!("opening the {mode} shell on the console"),
    );
    let before = log_len(&log);
    let typing = |e: crate::guest::vm::VmError| format!("typing on the console: {e}");
    machine.type_on_console("\r").map_err(typing)?;
    // sulogin sets the terminal back with TCSAFLUSH before the shell
    // starts, which drops what was typed ahead: the command waits for the
    // prompt (or, if none is recognised, for the time it may take).
    let prompt = Regex::new(r"[#$] ?$").map_err(|e| e.to_string())?;
    let _ = wait_in_log(&log, before, PROMPT_WAIT, |text| {
        let last = crate::text::last_lines(text.as_bytes(), 1);
        prompt
            .is_match(last.trim_end_matches(['\r', '\n']))
            .then_some(())
    });
    // A getty of its own, outside any unit: starting the control port's
    // serial-getty@ unit from here would pull sysinit.target back in,
    // which conflicts with emergency.service and ends the mode.
    machine
        .type_on_console(&format!(
            "setsid /sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 {CONTROL_TTY} vt220 </dev/null >/dev/null 2>&1 &\r"
        ))
        .map_err(typing)?;
    machine
        .wait_examination_shell(
            &format!("the control shell opened in {mode} mode"),
            CONTROL_WAIT,
        )
        .map_err(|e| format!("the control shell started from the console did not answer: {e}"))
}

/// Where the last kernel start begins in the console log (0 if none is
/// seen): what a boot's own console said lies after it.
fn last_boot_start(log: &Path) -> u64 {
    let text = std::fs::read(log).unwrap_or_default();
    let needle = b"Linux version ";
    text.windows(needle.len())
        .rposition(|w| w == needle)
        .map(|at| at as u64)
        .unwrap_or(0)
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Polls the console log from `from` until `found` has an answer for its
/// text (escapes and all), or `within` passes.
fn wait_in_log<T>(
    log: &Path,
    from: u64,
    within: Duration,
    found: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        let mut text = Vec::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            if file.seek(SeekFrom::Start(from)).is_ok() {
                let _ = file.take(4 << 20).read_to_end(&mut text);
            }
        }
        if let Some(answer) = found(&String::from_utf8_lossy(&text)) {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::outcome::Timings;
    use crate::host::progress::Events;
    use crate::run::stand::{dir, ended_in, scenario, Stand};

    fn not_back(end: GuestEnd) -> NotBack {
        NotBack {
            step: 2,
            ended: ended_in(end),
            console_tail: String::new(),
            examined: None,
        }
    }

    fn examine_on(
        stand: &mut Stand,
        specs: &[CaptureSpec],
        end: GuestEnd,
    ) -> (Examined, Vec<Capture>, Option<String>) {
        let (mut timings, mut kernel_release) = (Timings::default(), None);
        let (examined, captures) = examine(
            stand,
            &mut Ledger {
                events: &Events::silent(),
                label: "x",
                timings: &mut timings,
                kernel_release: &mut kernel_release,
            },
            specs,
            &not_back(end),
        );
        (examined, captures, kernel_release)
    }

    #[test]
    fn an_emergency_shell_is_opened_and_the_state_taken_there() {
        let (_keep, dir) = dir();
        std::fs::write(dir.join("units/srv-data.mount"), "failed").expect("unit");
        std::fs::write(dir.join("units/ssh.service"), "active").expect("unit");
        std::fs::write(
            dir.join("journal"),
            "[    6.2] systemd[1]: Dependency failed for /srv/data.\n",
        )
        .expect("journal");
        let scenario = scenario(&dir, "[[step]]\nreboot = true\n\n[[capture]]\nname = \"fstab\"\nrun = \"echo LABEL=DATA /srv/data\"\n");
        let mut stand = Stand::new(&dir);
        std::fs::write(
            &stand.console_log,
            "[    0.0] Linux version 6.1 (first)\r\nPress Enter for maintenance\r\n[    0.0] Linux version 6.1 (after the reboot)\r\nYou are in emergency mode.\r\nPress Enter for maintenance\r\n(or press Control-D to continue): ",
        )
        .expect("log");
        let (examined, captures, kernel_release) =
            examine_on(&mut stand, &scenario.captures, GuestEnd::Emergency);
        assert_eq!(
            examined,
            Examined::Shell {
                failed_units: "srv-data.mount loaded failed failed a unit\n".into(),
                journal: "[    6.2] systemd[1]: Dependency failed for /srv/data.\n".into(),
            }
        );
        assert_eq!(captures.len(), 1);
        assert_eq!(captures[0].text, "LABEL=DATA /srv/data\n");
        assert_eq!(kernel_release.as_deref(), Some("6.1.0-stand-in"));
        assert_eq!(stand.asked.len(), 4, "{:?}", stand.asked);
        assert_eq!(stand.asked[0], "type \"\\r\"");
        assert!(
            stand.asked[1].contains("agetty --autologin root")
                && stand.asked[1].contains(CONTROL_TTY),
            "{}",
            stand.asked[1]
        );
        assert_eq!(
            stand.asked[2..],
            ["examination shell", "capture in emergency mode"]
        );
    }

    #[test]
    fn where_no_shell_can_be_had_the_console_is_the_evidence() {
        let (_keep, dir) = dir();
        let mut stand = Stand::new(&dir);
        // sulogin without --force (systemd before 240) for a locked root.
        std::fs::write(
            &stand.console_log,
            "[    0.0] Linux version 3.16\r\nWelcome to emergency mode!\r\nCannot open access to console, the root account is locked.\r\n",
        )
        .expect("log");
        let (examined, captures, _) = examine_on(&mut stand, &[], GuestEnd::Emergency);
        let Examined::Closed { why } = examined else {
            panic!("{examined:?}");
        };
        assert!(why.starts_with("root's account is locked"), "{why}");
        assert!(
            captures.is_empty() && stand.asked.is_empty(),
            "{:?}",
            stand.asked
        );

        // A hung guest runs no shell at all; nothing is typed.
        let (examined, _, _) = examine_on(&mut stand, &[], GuestEnd::Hung);
        let Examined::Closed { why } = examined else {
            panic!("{examined:?}");
        };
        assert!(why.contains("runs no shell"), "{why}");
        assert!(stand.asked.is_empty());

        // A shell that opens and then stops answering is said so.
        std::fs::write(&stand.console_log, "Press Enter for system maintenance\r\n").expect("log");
        stand.captures_fail = true;
        let (examined, _, _) = examine_on(&mut stand, &[], GuestEnd::Rescue);
        let Examined::Closed { why } = examined else {
            panic!("{examined:?}");
        };
        assert!(
            why.starts_with("the shell opened in rescue mode stopped answering"),
            "{why}"
        );
    }

    #[test]
    fn sulogins_words_are_told_apart_in_every_release() {
        let open = Regex::new(OPEN).expect("regex");
        let shut = Regex::new(SHUT).expect("regex");
        // util-linux 2.38 (bookworm) and 2.41 (trixie) with --force; any
        // without it.
        assert!(open.is_match("Press Enter for maintenance\r\n(or press Control-D to continue): "));
        assert!(open
            .is_match("Press Enter for system maintenance\r\n(or press Control-D to continue): "));
        let closed = "Cannot open access to console, the root account is locked.\r\nSee sulogin(8) man page for more details.\r\n\r\nPress Enter to continue.\r\n";
        assert!(shut.is_match(closed) && !open.is_match(closed));
    }

    #[test]
    fn the_log_is_read_from_the_last_boot_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "[0.0] Linux version 6.1 first\nPress Enter for maintenance\n[0.0] Linux version 6.1 second\nroot account is locked\n",
        )
        .expect("write");
        let start = last_boot_start(&log);
        let open = Regex::new(OPEN).expect("regex");
        let seen = wait_in_log(&log, start, Duration::from_millis(300), |t| {
            if open.is_match(t) {
                Some("open")
            } else if t.contains("locked") {
                Some("shut")
            } else {
                None
            }
        });
        assert_eq!(
            seen,
            Some("shut"),
            "the first boot's prompt is not this boot's"
        );
        assert_eq!(last_boot_start(&dir.path().join("none")), 0);
    }
}
