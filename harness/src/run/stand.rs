//! For unit tests: a stand-in guest for the step interpreter and the
//! examination of a guest that did not come back. Every script sent to it
//! really runs, in a local bash behind a pty ([`LocalShell`]), with a
//! `systemctl` and a `journalctl` of the test's own first on its `PATH`;
//! what only a guest does (a reboot, a disk pulled out, QEMU's view of the
//! processor, its console) is scripted, and written down as it is asked
//! for.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check::capture::{Capture, GuestFacts, Taken};
use crate::check::outcome::Outcome;
use crate::guest::console::{Console, ConsoleError};
use crate::guest::fake::LocalShell;
use crate::guest::life::Ended;
use crate::guest::vm::{Accel, AccelChoice, VmError};
use crate::project::{CaptureKind, CaptureSpec, GuestEnd, Known, Scenario};

use super::steps::Machine;

/// A `systemctl` that reads each unit's state from `units/NAME` beside
/// its folder: `is-active`, `list-units` and `--failed`, as the scripts
/// use them.
const SYSTEMCTL: &str = r#"#!/bin/sh
units=$(dirname "$0")/../units
case "$1" in
  is-active) state=$(cat "$units/$2" 2>/dev/null || echo inactive); echo "$state"; [ "$state" = active ] ;;
  list-units) for f in "$units"/*; do s=$(cat "$f"); printf '%s loaded %s %s a unit\n' "${f##*/}" "$s" "$s"; done ;;
  --failed) for f in "$units"/*; do [ "$(cat "$f")" = failed ] && printf '%s loaded failed failed a unit\n' "${f##*/}"; done; true ;;
  *) exit 1 ;;
esac
"#;

/// A `journalctl` that prints the file `journal` beside its folder, or
/// `journal-before` when asked for the boot before (`-b -1`).
const JOURNALCTL: &str = r#"#!/bin/sh
case " $* " in *" -1 "*) f=journal-before ;; *) f=journal ;; esac
cat "$(dirname "$0")/../$f" 2>/dev/null
"#;

/// The stand-in guest.
pub(super) struct Stand {
    shell: LocalShell,
    /// Its kernel console log, which the test writes.
    pub(super) console_log: PathBuf,
    /// What was asked of it besides scripts, in order.
    pub(super) asked: Vec<String>,
    /// How each reboot ends; a reboot beyond them comes back.
    pub(super) reboots: VecDeque<Result<(), ConsoleError>>,
    /// A script run in the shell at each reboot that comes back, for
    /// what the boot changes.
    pub(super) at_boot: String,
    /// QEMU refuses to pull a disk.
    pub(super) detach_refused: bool,
    /// The guest can no longer record what captures print.
    pub(super) captures_fail: bool,
    /// QEMU has ended, with this exit status.
    pub(super) qemu_exited: Option<String>,
}

impl Stand {
    /// A stand-in whose files (its `systemctl`, its units, its console
    /// log) are in `dir`.
    pub(super) fn new(dir: &Path) -> Stand {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(dir.join("units")).expect("units");
        use std::os::unix::fs::PermissionsExt as _;
        for (name, text) in [("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL)] {
            std::fs::write(bin.join(name), text).expect(name);
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        Stand {
            shell: LocalShell::start("", Some(&bin)),
            console_log: dir.join("console.log"),
            asked: Vec::new(),
            reboots: VecDeque::new(),
            at_boot: String::new(),
            detach_refused: false,
            captures_fail: false,
            qemu_exited: None,
        }
    }
}

impl Machine for Stand {
    fn console(&mut self) -> &mut Console {
        &mut self.shell.console
    }

    fn detach(&mut self, disk: &str, _: Duration) -> Result<(), VmError> {
        self.asked.push(format!("detach {disk}"));
        if self.detach_refused {
            return Err(VmError::Monitor {
                command: "device_del".into(),
                message: format!("Device '{disk}' not found"),
            });
        }
        Ok(())
    }

    fn reboot(&mut self, what: &str, timeout: Duration) -> Result<(), ConsoleError> {
        self.asked.push("reboot".into());
        let ended = self.reboots.pop_front().unwrap_or(Ok(()));
        if ended.is_ok() && !self.at_boot.is_empty() {
            let at_boot = self.at_boot.clone();
            self.shell.console.run(what, &at_boot, timeout)?;
        }
        ended
    }

    fn wait_settled(&mut self, _: &str, _: Duration) -> Result<String, ConsoleError> {
        self.asked.push("settle".into());
        Ok("running".into())
    }

    fn processor(&mut self) -> Result<String, VmError> {
        self.asked.push("processor".into());
        Ok("its processor is in long mode, at 1000 in both looks".into())
    }

    fn console_log(&self) -> PathBuf {
        self.console_log.clone()
    }

    fn check_running_within(&mut self, _: Duration) -> Result<(), VmError> {
        self.asked.push("running?".into());
        match &self.qemu_exited {
            None => Ok(()),
            Some(status) => Err(VmError::Exited {
                status: status.clone(),
                output: "qemu-system-x86_64: terminating on signal 9".into(),
                tail: String::new(),
            }),
        }
    }

    fn type_on_console(&mut self, text: &str) -> Result<(), VmError> {
        self.asked.push(format!("type {text:?}"));
        // The console echoes, and Enter brings a shell's prompt.
        let mut shown = text.replace('\r', "\r\n");
        if text == "\r" {
            shown.push_str("sh-5.2# ");
        }
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.console_log)
            .and_then(|mut log| log.write_all(shown.as_bytes()))
            .expect("console log");
        Ok(())
    }

    fn wait_examination_shell(&mut self, _: &str, _: Duration) -> Result<(), ConsoleError> {
        self.asked.push("examination shell".into());
        Ok(())
    }

    fn capture(
        &mut self,
        specs: &[CaptureSpec],
        when: &str,
        extra: &[(String, String)],
    ) -> Result<Taken, ConsoleError> {
        self.asked.push(format!("capture {when}"));
        if self.captures_fail {
            return Err(ConsoleError::Unrecorded {
                what: format!("capture ({when})"),
                detail: "store what it printed (No space left on device)".into(),
                status: None,
            });
        }
        let mut captures = Vec::new();
        for spec in specs {
            let CaptureKind::Run(command) = &spec.what else {
                panic!("the stand-in has no network to probe");
            };
            let out = self
                .shell
                .console
                .run(&spec.name, command, Duration::from_secs(10))?;
            captures.push(Capture {
                name: spec.name.clone(),
                command: command.clone(),
                status: out.status,
                text: out.stdout.clone(),
                raw: out.stdout,
                probe: None,
                normalize: Vec::new(),
            });
        }
        let extra = extra
            .iter()
            .map(|(what, script)| {
                self.shell
                    .console
                    .run(what, script, Duration::from_secs(10))
            })
            .collect::<Result<_, _>>()?;
        Ok(Taken {
            captures,
            facts: GuestFacts {
                hostname: "stand-in".into(),
                kernel_release: "6.1.0-stand-in".into(),
            },
            extra,
        })
    }
}

/// A scenario file in `dir` (for `copy` steps' sources), `{dir}` in
/// `text` replaced by the folder, with every source of evidence but the
/// units' states off unless `text` says otherwise.
pub(super) fn scenario(dir: &Path, text: &str) -> Scenario {
    let text = text.replace("{dir}", &dir.display().to_string());
    let evidence = if text.contains("[evidence]") {
        String::new()
    } else {
        "\n[evidence]\nskip = [\"journal\", \"sysctl\", \"mounts\", \"network\", \"modules\", \"firewall\"]\n".into()
    };
    // The test's own text first, so that its top-level keys stay there.
    let text = format!(
        "name = \"x\"\ndescription = \"x\"\n{text}\n[matrix]\nreleases = [\"bookworm\"]\nkernels = [\"stock\"]\n{evidence}"
    );
    let path = dir.join("x.toml");
    std::fs::write(&path, &text).expect("scenario");
    Scenario::parse(
        &path,
        &text,
        &Known {
            releases: vec!["bookworm".into()],
            kernels: vec!["stock".into()],
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub(super) fn dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    std::fs::create_dir_all(path.join("units")).expect("units");
    (dir, path)
}

/// A boot that ended in `end`, the console having said why.
pub(super) fn ended_in(end: GuestEnd) -> Ended {
    Ended {
        end,
        reasons: vec!["Dependency failed for /srv/data".into()],
        last_line: "You are in emergency mode.".into(),
        quiet: None,
        before_kernel: false,
        host: None,
        processor: None,
    }
}

/// What is known of a trial on `scenario`'s first cell before its flow
/// runs, its artifacts to go in `artifacts`.
pub(super) fn outcome(scenario: &Scenario, artifacts: &Path) -> Outcome {
    Outcome::before_the_flow(
        scenario,
        &scenario.matrix.cells()[0],
        AccelChoice {
            accel: Accel::Tcg,
            reason: "the stand-in".into(),
        },
        artifacts.to_owned(),
    )
}

/// A reporter that keeps the notes it is sent, for tests to read.
#[derive(Default)]
pub(super) struct Notes(std::sync::Mutex<Vec<String>>);

impl Notes {
    /// A reporter and the events that reach it.
    pub(super) fn events() -> (std::sync::Arc<Notes>, crate::host::progress::Events) {
        let notes = std::sync::Arc::new(Notes::default());
        let events = crate::host::progress::Events::new(notes.clone());
        (notes, events)
    }

    /// The notes so far.
    pub(super) fn taken(&self) -> Vec<String> {
        self.0.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

impl crate::host::progress::Reporter for Notes {
    fn report(&self, event: &crate::host::progress::Event<'_>) {
        if let crate::host::progress::Event::Note { message, .. } = event {
            if let Ok(mut notes) = self.0.lock() {
                notes.push((*message).to_owned());
            }
        }
    }
}
