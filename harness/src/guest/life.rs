//! What the guest is doing, read from its kernel console (the first serial
//! port, logged to `console.log`): whether it is running, restarting or
//! booting, and how a boot that never reaches the control shell ended —
//! emergency or rescue mode, a kernel panic, a power-off, a restart nobody
//! asked for, a boot loop, or silence.
//!
//! The kernel and systemd say all of this on the console in every release
//! from jessie on, whatever the kernel flavour (the Linode-style kernel has
//! no ACPI, so QEMU's own power and panic events would miss it), so the
//! console is the one source read here. The words matched:
//! - `Linux version ` opens every kernel's boot log (init/main.c,
//!   `linux_banner`);
//! - `reboot: Restarting system`, `reboot: Power down`, `reboot: System
//!   halted` are kernel/reboot.c's `pr_emerg` lines for each way out (the
//!   `reboot: ` prefix is its `pr_fmt`, since 3.13);
//! - `Kernel panic - not syncing` is kernel/panic.c's;
//! - systemd's emergency and rescue units print "emergency mode" and
//!   "rescue mode" on the console: jessie's 215 units echo "Welcome to
//!   emergency mode!" (units/emergency.service.in, `ExecStartPre=`), later
//!   ones run systemd-sulogin-shell, which prints "You are in emergency
//!   mode." (src/sulogin-shell/sulogin-shell.c, since 240);
//! - systemd's status lines say why (`Timed out waiting for device`,
//!   `Dependency failed for`, `Failed to mount`…: src/core/job.c's
//!   `job_done_messages`), and are quoted as the reasons.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::host::threads::{self, ThreadTimes};
pub use crate::project::GuestEnd;

/// A boot with no console output for this long has stopped making
/// progress: systemd redraws its "A start job is running" line every
/// second while it waits for something, so even a long wait is not silent.
/// The time QEMU spent waiting for the host (for a CPU, or on its disk)
/// does not count (see [`crate::host::threads`]): a guest that could not
/// run has not hung.
pub(crate) const HUNG_AFTER: Duration = Duration::from_secs(90);
/// Between a restart (or power-on) and the kernel's first line the console
/// is silent by nature: the firmware and the boot loader write elsewhere.
/// That stretch normally takes two or three seconds, but under TCG with the
/// host's CPUs and disk busy it has taken 16 s and 55 s, the processor
/// sampled in those pauses running in low memory in long mode (the new
/// kernel's decompressor, slowed down, not stuck; `docs/measured.md`,
/// "Restarts under load"). The stretch is given twice the kernel's
/// allowance, still inside a reboot's default time
/// (`DEFAULT_REBOOT_TIMEOUT`, 300 s).
pub(crate) const HUNG_IN_FIRMWARE_AFTER: Duration = Duration::from_secs(180);
/// How many console lines of the current boot are kept to explain it.
const RECENT_LINES: usize = 400;
/// How long after systemd reaches its emergency or rescue target the
/// shell's banner may take before the mode is taken as reached without it.
const BANNER_WAIT: Duration = Duration::from_secs(5);
/// How many reasons an end quotes at most.
const MAX_REASONS: usize = 6;

/// A guest's end, with the console lines that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// What happened.
    pub end: GuestEnd,
    /// The console lines that say why (systemd's failures, the panic's
    /// message), cleaned of escapes and timestamps, oldest first.
    pub reasons: Vec<String>,
    /// The last console line before it was noticed.
    pub last_line: String,
    /// For [`GuestEnd::Hung`]: how long the console had been quiet.
    pub quiet: Option<Duration>,
    /// For [`GuestEnd::Hung`]: whether the silence came before any kernel
    /// had started (in the firmware or the boot loader).
    pub before_kernel: bool,
    /// For [`GuestEnd::Hung`]: what the host gave QEMU in that time.
    pub host: Option<HostShare>,
    /// For [`GuestEnd::Hung`]: where the guest's processor was, as QEMU
    /// tells it (see [`crate::guest::vm`]'s `processor`).
    pub processor: Option<String>,
}

/// What the host's scheduler gave QEMU while the guest's console was quiet:
/// the busiest thread's (a TCG guest's vCPU thread's) time on a CPU and
/// time waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostShare {
    /// Time on a host CPU.
    pub ran: Duration,
    /// Time runnable but waiting for a host CPU.
    pub waited: Duration,
    /// Time one of QEMU's threads was seen blocked on the host's I/O.
    pub blocked: Duration,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the guest {}", self.end.describe())?;
        if self.before_kernel {
            write!(
                f,
                " before its kernel started (in the firmware or the boot loader)"
            )?;
        }
        if let Some(quiet) = self.quiet {
            write!(f, " (no console output for {}s", quiet.as_secs())?;
            if let Some(host) = self.host {
                write!(
                    f,
                    "; QEMU's busiest thread ran {:.1}s of it and waited {:.1}s for a host CPU",
                    host.ran.as_secs_f64(),
                    host.waited.as_secs_f64()
                )?;
                if host.blocked >= Duration::from_secs(1) {
                    write!(
                        f,
                        ", and QEMU was blocked on the host's disk for {}s",
                        host.blocked.as_secs()
                    )?;
                }
            }
            if let Some(processor) = &self.processor {
                write!(f, "; {processor}")?;
            }
            write!(f, ")")?;
        }
        if !self.reasons.is_empty() {
            write!(f, ": {}", self.reasons.join("; "))?;
        } else if !self.last_line.is_empty() {
            write!(f, "; its last console line: {}", self.last_line)?;
        }
        Ok(())
    }
}

/// Reads the kernel console log as it grows and keeps track of the guest.
pub(crate) struct Life {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Cleaned lines of the current boot (or since the log began).
    recent: VecDeque<String>,
    /// Kernel starts seen, and how many the harness has asked for.
    starts: usize,
    allowed: usize,
    /// A restart the harness asked for that the kernel has not announced.
    restart_pending: bool,
    /// Between a (re)start and the shell of the new boot.
    booting: bool,
    grew: Instant,
    /// QEMU's threads, to leave the time it waited for the host (for a CPU,
    /// or blocked on the disk) out of the console's silence: how to read
    /// them, what they were when the console last grew and at the last
    /// look, when that was, and how long QEMU waited since it grew.
    threads: Option<Box<dyn FnMut() -> Vec<ThreadTimes> + Send>>,
    at_growth: Vec<ThreadTimes>,
    at_look: Vec<ThreadTimes>,
    looked: Instant,
    starved: Duration,
    /// Of `starved`, the part QEMU spent blocked on the host's I/O.
    blocked: Duration,
    /// A mode seen on the console whose shell banner has not come yet, and
    /// until when to wait for it.
    pending: Option<(GuestEnd, Instant)>,
    ended: Option<Ended>,
    /// The harness is opening a shell in the emergency or rescue mode the
    /// guest ended in: the mode is where it now works, not an end.
    examining: bool,
}

impl Life {
    /// Watches `path`, a guest's kernel console log, from its start.
    pub(crate) fn new(path: PathBuf) -> Life {
        Life {
            path,
            offset: 0,
            partial: Vec::new(),
            recent: VecDeque::new(),
            starts: 0,
            allowed: 0,
            restart_pending: false,
            booting: false,
            grew: Instant::now(),
            threads: None,
            at_growth: Vec::new(),
            at_look: Vec::new(),
            looked: Instant::now(),
            starved: Duration::ZERO,
            blocked: Duration::ZERO,
            pending: None,
            ended: None,
            examining: false,
        }
    }

    /// Leaves out of the console's silence the time QEMU (process `pid`)
    /// waited for a host CPU or on the host's disk.
    pub(crate) fn watch_process(&mut self, pid: u32) {
        self.watch_threads(Box::new(move || threads::of_process(pid)));
    }

    fn watch_threads(&mut self, read: Box<dyn FnMut() -> Vec<ThreadTimes> + Send>) {
        self.threads = Some(read);
        self.look_afresh();
    }

    /// Reads QEMU's threads as they are now, as the start of what later
    /// looks compare with (what QEMU waited before does not count).
    fn look_afresh(&mut self) {
        if let Some(read) = &mut self.threads {
            self.at_look = read();
            self.looked = Instant::now();
        }
    }

    /// Reads QEMU's threads and adds what it waited for the host since the
    /// last look to the silence's waits.
    fn look(&mut self) {
        let Some(read) = &mut self.threads else {
            return;
        };
        let now = read();
        let (_, waited) = threads::most_since(&self.at_look, &now);
        // A thread found blocked on I/O is taken to have been blocked
        // since the last look (looks are a quarter second apart).
        let blocked = if now.iter().any(|t| t.blocked) {
            self.looked.elapsed()
        } else {
            Duration::ZERO
        };
        self.blocked += blocked;
        self.starved += waited.max(blocked);
        self.at_look = now;
        self.looked = Instant::now();
    }

    /// The console printed something: silence is counted afresh.
    fn grown(&mut self) {
        self.grew = Instant::now();
        self.starved = Duration::ZERO;
        self.blocked = Duration::ZERO;
        self.at_growth = self.at_look.clone();
    }

    /// How long the console has been quiet while QEMU could run.
    fn quiet_while_runnable(&self) -> Duration {
        self.grew.elapsed().saturating_sub(self.starved)
    }

    /// Between a restart (or power-on) and the first line of the kernel
    /// that follows it.
    fn before_kernel(&self) -> bool {
        self.booting && !self.restart_pending && self.starts < self.allowed
    }

    /// The guest ended in emergency or rescue mode and the harness goes on
    /// in that mode's shell: the mode is no longer an end, its banner no
    /// longer news, and a quiet console no hang (the shell waits for keys).
    /// A panic, a power-off, a reboot or a new kernel still end it.
    pub(crate) fn examine(&mut self) {
        self.examining = true;
        self.ended = None;
        self.pending = None;
        self.booting = false;
    }

    /// The harness starts the guest from power-on: one kernel start is
    /// expected, then a boot.
    pub(crate) fn expect_boot(&mut self) {
        self.allowed += 1;
        self.booting = true;
        self.look_afresh();
        self.grown();
    }

    /// The harness asks the guest to reboot: one restart and one kernel
    /// start are expected, then a boot.
    pub(crate) fn expect_reboot(&mut self) {
        self.restart_pending = true;
        self.expect_boot();
    }

    /// The shell of the current boot answered: the guest runs the flow.
    pub(crate) fn shell_ready(&mut self) {
        self.booting = false;
    }

    /// How the guest ended, once it has.
    #[cfg(test)]
    fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// Marks the control shell as dead (seen on the control port).
    pub(crate) fn shell_died(&mut self) -> &Ended {
        let last_line = self.last_line();
        self.ended.get_or_insert(Ended {
            end: GuestEnd::ShellDied,
            reasons: Vec::new(),
            last_line,
            quiet: None,
            before_kernel: false,
            host: None,
            processor: None,
        })
    }

    /// What the guest was last doing, for a timeout's message.
    pub(crate) fn doing(&self) -> String {
        let what = if self.booting {
            if self.restart_pending {
                "shutting down to restart"
            } else if self.before_kernel() {
                "restarting, no kernel started yet"
            } else {
                "booting"
            }
        } else {
            "running the flow"
        };
        let starved = if self.starved >= Duration::from_secs(1) {
            format!(
                " ({}s of it QEMU waited for the host: for a CPU, or {}s on its disk)",
                self.starved.as_secs(),
                self.blocked.as_secs()
            )
        } else {
            String::new()
        };
        format!(
            "{what}; console quiet for {}s{starved}; last console line: {}",
            self.grew.elapsed().as_secs(),
            self.last_line()
        )
    }

    /// Reads what the console printed since the last call and returns how
    /// the guest ended, if it has.
    pub(crate) fn poll(&mut self) -> Option<&Ended> {
        if self.ended.is_some() {
            return self.ended.as_ref();
        }
        // Only a boot's silence is judged; the flow's is the steps'.
        if self.booting {
            self.look();
        }
        let fresh = self.read_new();
        if !fresh.is_empty() {
            self.grown();
            self.feed(&fresh);
        }
        if self.ended.is_none() {
            if let Some((end, by)) = self.pending {
                if Instant::now() >= by {
                    self.end(end, None);
                }
            } else if self.booting {
                let allowed = if self.before_kernel() {
                    HUNG_IN_FIRMWARE_AFTER
                } else {
                    HUNG_AFTER
                };
                if self.quiet_while_runnable() >= allowed {
                    let quiet = self.grew.elapsed();
                    self.end(GuestEnd::Hung, Some(quiet));
                }
            }
        }
        self.ended.as_ref()
    }

    fn read_new(&mut self) -> Vec<u8> {
        let mut fresh = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.path) {
            if file.seek(SeekFrom::Start(self.offset)).is_ok() {
                // At most 4 MiB per look: a flood is read over a few looks.
                let _ = file.take(4 << 20).read_to_end(&mut fresh);
            }
        }
        self.offset += fresh.len() as u64;
        fresh
    }

    /// Takes console bytes as they arrive.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(at) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            self.line(&clean(&line));
            if self.ended.is_some() {
                return;
            }
        }
        // A line still being written can already say enough (a banner
        // whose line ends only after a password prompt).
        if !self.partial.is_empty() {
            let pending = clean(&self.partial);
            if mode(&pending).is_some() {
                self.partial.clear();
                self.line(&pending);
            }
        }
    }

    fn line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if line.contains("Linux version ") {
            self.starts += 1;
            self.recent.clear();
            if self.starts > self.allowed {
                let end = if self.booting {
                    GuestEnd::BootLoop
                } else {
                    GuestEnd::Reboot
                };
                self.remember(line);
                return self.end(end, None);
            }
            self.booting = true;
        }
        self.remember(line);
        if line.contains("reboot: Restarting system") {
            if self.restart_pending {
                self.restart_pending = false;
            } else if self.booting {
                self.end(GuestEnd::BootLoop, None);
            } else {
                self.end(GuestEnd::Reboot, None);
            }
        } else if line.contains("Kernel panic - not syncing") {
            self.end(GuestEnd::Panic, None);
        } else if line.contains("reboot: Power down") {
            self.end(GuestEnd::PowerOff, None);
        } else if line.contains("reboot: System halted") {
            self.end(GuestEnd::Halt, None);
        } else if self.examining {
            // Emergency or rescue lines of the mode being examined.
        } else if let Some(end) = mode(line) {
            // The shell's banner comes last, after systemd's reasons; the
            // target ("Reached target Emergency Mode") a moment before it.
            if line.contains("Welcome to") || line.contains("You are in") {
                self.end(end, None);
            } else if self.pending.is_none() && line.contains("Reached target") {
                // Only reaching the target counts: a line that merely
                // names it ("Stopped target …") says nothing of the mode.
                self.pending = Some((end, Instant::now() + BANNER_WAIT));
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_owned());
    }

    fn last_line(&self) -> String {
        self.recent.back().cloned().unwrap_or_default()
    }

    fn end(&mut self, end: GuestEnd, quiet: Option<Duration>) {
        let mut reasons: Vec<String> = Vec::new();
        for line in self
            .recent
            .iter()
            .filter(|l| !from_the_kernel_log_of_systemd(l))
        {
            let Some(reason) = reason(line) else { continue };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        let skip = reasons.len().saturating_sub(MAX_REASONS);
        let host = quiet.filter(|_| self.threads.is_some()).map(|_| {
            let (ran, waited) = threads::most_since(&self.at_growth, &self.at_look);
            HostShare {
                ran,
                waited,
                blocked: self.blocked,
            }
        });
        self.ended = Some(Ended {
            end,
            reasons: reasons.split_off(skip),
            last_line: self.last_line(),
            quiet,
            before_kernel: quiet.is_some() && self.before_kernel(),
            host,
            processor: None,
        });
    }
}

/// A console line as text: escapes and carriage returns gone (systemd
/// redraws its progress line in place), the rest inert, the kernel's
/// timestamp and systemd's status tag off.
fn clean(bytes: &[u8]) -> String {
    let text = crate::text::last_lines(bytes, 1);
    let text = text.trim();
    let text = match text.strip_prefix('[') {
        // "[   12.345678] " or "[ TIME ] ", "[FAILED] ", "[DEPEND] ", "[  OK  ] "
        Some(rest) => match rest.split_once("] ") {
            Some((tag, rest)) if tag.len() <= 14 && !tag.contains('[') => rest,
            _ => text,
        },
        None => text,
    };
    text.trim().to_owned()
}

/// Whether a cleaned console line is systemd's own message copied into the
/// kernel log (`systemd[1]: …`). systemd writes there only while journald
/// is not up, so whether such a copy exists varies from boot to boot; its
/// status line on the console is always there, and is the one quoted.
fn from_the_kernel_log_of_systemd(line: &str) -> bool {
    line.strip_prefix("systemd[")
        .and_then(|rest| rest.split_once("]: "))
        .is_some_and(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit()))
}

/// The part of a console line that explains an end, if it does.
fn reason(line: &str) -> Option<String> {
    const SAYS_WHY: &[&str] = &[
        "Timed out waiting for device",
        "Dependency failed for",
        "Failed to mount",
        "Failed to start",
        "Failed to activate",
        "Kernel panic - not syncing",
        "unable to mount root",
        "Unable to mount root",
    ];
    let at = SAYS_WHY.iter().filter_map(|w| line.find(w)).min()?;
    // The kernel writes to the same console whenever it likes: its line
    // can start in the middle of systemd's ("…/srv/data.[   16.30] systemd-
    // journald[174]: …"), and is no part of the reason.
    let text = &line[at..];
    let text = kernel_timestamp(text).map_or(text, |cut| &text[..cut]);
    // systemd 247 on: "… dev-x.device - /dev/x." names the unit and then
    // what it is; the description is what a person recognises.
    let text = text.trim_end().trim_end_matches('.');
    Some(match text.split_once(" - ") {
        Some((head, description)) if head.split(' ').count() >= 4 => {
            let verb = head.rsplit_once(' ').map_or(head, |(verb, _)| verb);
            format!("{verb} {description}")
        }
        _ => text.to_owned(),
    })
}

/// Where a kernel timestamp ("[   16.302750]") starts in `text`, if
/// anywhere.
fn kernel_timestamp(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&at| {
        let Some(rest) = text.get(at + 1..) else {
            return false;
        };
        if bytes[at] != b'[' {
            return false;
        }
        let inner = rest.trim_start_matches(' ');
        let Some((stamp, _)) = inner.split_once(']') else {
            return false;
        };
        stamp.split_once('.').is_some_and(|(s, f)| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && f.len() >= 3
                && f.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// The systemd mode a console line speaks of.
fn mode(line: &str) -> Option<GuestEnd> {
    if lower_contains(line, "emergency mode") {
        Some(GuestEnd::Emergency)
    } else if lower_contains(line, "rescue mode") {
        Some(GuestEnd::Rescue)
    } else {
        None
    }
}

fn lower_contains(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase().contains(needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher() -> Life {
        Life::new(PathBuf::from("/nonexistent"))
    }

    /// bookworm's console when an fstab line names a disk that is not there.
    const EMERGENCY: &str = "[  OK  ] Reached target local-fs-pre.target - Preparation for Local File Systems.\r\n\
\x1b[0;1;31m[ TIME ]\x1b[0m Timed out waiting for device \x1b[0;1;39mdev-disk-by\\x2dlabel-DATA.device\x1b[0m - /dev/disk/by-label/DATA.\r\n\
[DEPEND] Dependency failed for \x1b[0;1;39msrv-data.mount\x1b[0m - /srv/data.\r\n\
[DEPEND] Dependency failed for local-fs.target - Local File Systems.\r\n\
You are in emergency mode. After logging in, type \"journalctl -xb\" to view\r\n\
system logs, \"systemctl reboot\" to reboot, \"systemctl default\" or \"exit\"\r\n";

    #[test]
    fn emergency_mode_is_named_with_its_reasons() {
        let mut life = watcher();
        life.expect_reboot();
        life.feed(b"[   41.2] reboot: Restarting system\r\n[    0.000000] Linux version 6.1.0-50-cloud-amd64\r\n");
        assert!(life.ended().is_none());
        life.feed(EMERGENCY.as_bytes());
        let ended = life.ended().expect("ended");
        assert_eq!(ended.end, GuestEnd::Emergency);
        assert_eq!(
            ended.to_string(),
            "the guest is in emergency mode: Timed out waiting for device /dev/disk/by-label/DATA; Dependency failed for /srv/data; Dependency failed for Local File Systems"
        );
    }

    #[test]
    fn a_kernel_line_run_into_systemds_is_no_part_of_the_reason() {
        assert_eq!(
            reason("[DEPEND] Dependency failed for srv-data.mount - /srv/data.[   16.302750] systemd-journald[174]: Received client request to flush runtime journal.").as_deref(),
            Some("Dependency failed for /srv/data")
        );
        assert_eq!(
            reason("Failed to start foo.service - Foo [1.2] thing.").as_deref(),
            Some("Failed to start Foo [1.2] thing"),
            "a bracket in a description is not a kernel timestamp"
        );
    }

    #[test]
    fn an_examined_emergency_mode_is_no_end_but_a_panic_in_it_is() {
        let mut life = watcher();
        life.expect_reboot();
        life.feed(b"[   41.2] reboot: Restarting system\r\n[    0.000000] Linux version 6.1.0-50-cloud-amd64\r\n");
        life.feed(EMERGENCY.as_bytes());
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::Emergency));
        life.examine();
        assert!(life.ended().is_none());
        life.feed(b"You are in emergency mode. After logging in, type \"journalctl -xb\"\r\nPress Enter for maintenance\r\n(or press Control-D to continue): \r\nroot@vmrepro:~# ");
        assert!(life.ended().is_none(), "{:?}", life.ended());
        life.grew = Instant::now() - HUNG_AFTER * 2;
        assert!(
            life.poll().is_none(),
            "a shell waiting for keys is not hung"
        );
        life.feed(b"[  120.5] Kernel panic - not syncing: sysrq triggered crash\r\n");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::Panic));
    }

    #[test]
    fn the_target_waits_for_the_banner_and_kernel_log_copies_are_not_quoted() {
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"[   92.1] systemd[1]: Timed out waiting for device dev-disk-by\\x2dlabel-DATA.device - /dev/disk/by-label/DATA.\r\n");
        life.feed(b"[ TIME ] Timed out waiting for device dev-disk-by\\x2dlabel-DATA.device - /dev/disk/by-label/DATA.\r\n");
        life.feed(b"[  OK  ] Reached target emergency.target - Emergency Mode.\r\n");
        // Reached, but the banner (and any reason before it) may follow.
        assert!(life.ended().is_none());
        life.feed(b"[DEPEND] Dependency failed for syst\xe2\x80\xa6 Check on /dev/disk/by-label/DATA.\r\n");
        life.feed(b"You are in emergency mode. After logging in, type");
        let ended = life.ended().expect("ended");
        assert_eq!(
            ended.reasons,
            [
                "Timed out waiting for device /dev/disk/by-label/DATA",
                "Dependency failed for syst\u{2026} Check on /dev/disk/by-label/DATA"
            ]
        );
        // A line that only names the target is no mode.
        let mut life = watcher();
        life.feed(b"[  OK  ] Stopped target emergency.target - Emergency Mode.\r\n");
        assert!(life.pending.is_none() && life.ended().is_none());
        // Without a banner, the target alone is enough after a moment.
        let mut life = watcher();
        life.feed(b"[  OK  ] Reached target emergency.target - Emergency Mode.\r\n");
        assert!(life.ended().is_none());
        life.pending = life.pending.map(|(end, _)| (end, Instant::now()));
        assert_eq!(life.poll().map(|e| e.end), Some(GuestEnd::Emergency));
    }

    #[test]
    fn jessies_banner_and_a_half_written_line_count_too() {
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"[    0.000000] Linux version 3.16.0-4-amd64\r\n[DEPEND] Dependency failed for /srv/data.\r\nWelcome to emergency mode! After logging in");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::Emergency));
        let mut life = Life::new(PathBuf::new());
        life.expect_boot();
        life.feed(b"Give root password for maintenance\r\n(or press Control-D to continue): Welcome to rescue mode");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::Rescue));
    }

    #[test]
    fn restarts_count_against_what_was_asked() {
        // A resumed guest (no start expected) that restarts by itself.
        let mut life = watcher();
        life.feed(b"[  100.1] reboot: Restarting system\r\n");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::Reboot));
        // A cold boot, then an asked-for reboot: fine; then the kernel
        // starts again before the shell: a boot loop.
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"[    0.0] Linux version 6.1\r\n");
        life.shell_ready();
        life.expect_reboot();
        life.feed(b"[   50.0] reboot: Restarting system\r\n[    0.0] Linux version 6.1\r\nStarting loop.service...\r\n");
        assert!(life.ended().is_none(), "{:?}", life.ended());
        life.feed(b"[   20.0] reboot: Restarting system\r\n");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::BootLoop));
        // A kernel that starts again with no restart line (a reset).
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"Linux version 6.1\r\nLinux version 6.1\r\n");
        assert_eq!(life.ended().map(|e| e.end), Some(GuestEnd::BootLoop));
    }

    #[test]
    fn panics_and_power_are_named() {
        for (text, end, says) in [
            (
                "[   60.1] sysrq: Trigger a crash\r\n[   60.1] Kernel panic - not syncing: sysrq triggered crash\r\n",
                GuestEnd::Panic,
                "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash",
            ),
            (
                "[   70.0] systemd-shutdown[1]: Powering off.\r\n[   70.2] reboot: Power down\r\n",
                GuestEnd::PowerOff,
                "the guest powered off; its last console line: reboot: Power down",
            ),
            ("[ 9.0] reboot: System halted\r\n", GuestEnd::Halt, "the guest halted; its last console line: reboot: System halted"),
        ] {
            let mut life = watcher();
            life.feed(text.as_bytes());
            let ended = life.ended().expect("ended");
            assert_eq!(ended.end, end);
            assert_eq!(ended.to_string(), says);
        }
    }

    #[test]
    fn a_quiet_boot_is_hung_and_says_where_it_stopped() {
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"[    0.0] Linux version 6.1\r\n[    2.5] Run /init as init process\r\n");
        life.grew = Instant::now() - HUNG_AFTER - Duration::from_secs(1);
        let ended = life.poll().expect("hung");
        assert_eq!(ended.end, GuestEnd::Hung);
        assert!(
            ended
                .to_string()
                .starts_with("the guest is hung (no console output for 9"),
            "{ended}"
        );
        assert!(
            ended
                .to_string()
                .ends_with("its last console line: Run /init as init process"),
            "{ended}"
        );
        // A running guest may be quiet as long as it likes.
        let mut life = watcher();
        life.grew = Instant::now() - HUNG_AFTER * 2;
        assert!(life.poll().is_none());
    }

    #[test]
    fn time_qemu_waited_for_a_host_cpu_is_no_silence() {
        use std::sync::{Arc, Mutex};
        let waited = Arc::new(Mutex::new(Duration::ZERO));
        let ran = Arc::new(Mutex::new(Duration::ZERO));
        let mut life = watcher();
        let (w, r) = (waited.clone(), ran.clone());
        life.watch_threads(Box::new(move || {
            let now = |m: &Mutex<Duration>| *m.lock().unwrap_or_else(|p| p.into_inner());
            vec![ThreadTimes {
                tid: 1,
                ran: now(&r),
                waited: now(&w),
                blocked: false,
            }]
        }));
        life.expect_reboot();
        life.feed(b"[   22.4] reboot: Restarting system\r\n[   22.4] reboot: machine restart\r\n");
        life.feed(b"[    0.0] Linux version 6.1\r\n[    2.5] Run /init as init process\r\n");
        // 91 s of silence, 30 of them spent waiting for a CPU: not hung.
        life.grew = Instant::now() - HUNG_AFTER - Duration::from_secs(1);
        *waited.lock().expect("lock") = Duration::from_secs(30);
        *ran.lock().expect("lock") = Duration::from_secs(2);
        assert!(life.poll().is_none(), "{:?}", life.ended());
        assert!(
            life.doing()
                .contains("(30s of it QEMU waited for the host: for a CPU, or 0s on its disk)"),
            "{}",
            life.doing()
        );
        // Another 30 s with the CPU there for the taking: hung, and the
        // verdict says what the host gave.
        life.grew -= Duration::from_secs(30);
        let ended = life.poll().expect("hung").clone();
        assert_eq!(ended.end, GuestEnd::Hung);
        assert_eq!(
            ended.host,
            Some(HostShare {
                ran: Duration::from_secs(2),
                waited: Duration::from_secs(30),
                blocked: Duration::ZERO,
            })
        );
        assert!(
            ended
                .to_string()
                .contains("QEMU's busiest thread ran 2.0s of it and waited 30.0s for a host CPU)"),
            "{ended}"
        );
        // Output counts the silence afresh, waits included.
        let mut life = watcher();
        let w = waited.clone();
        life.watch_threads(Box::new(move || {
            vec![ThreadTimes {
                tid: 1,
                ran: Duration::ZERO,
                waited: *w.lock().unwrap_or_else(|p| p.into_inner()),
                blocked: false,
            }]
        }));
        life.expect_boot();
        life.feed(b"[    0.0] Linux version 6.1\r\n");
        *waited.lock().expect("lock") = Duration::from_secs(60);
        life.poll();
        life.grown();
        life.grew -= HUNG_AFTER;
        assert_eq!(life.poll().map(|e| e.end), Some(GuestEnd::Hung));
    }

    #[test]
    fn the_firmware_is_quiet_for_longer_before_it_is_hung() {
        let mut life = watcher();
        life.expect_boot();
        life.feed(b"[    0.0] Linux version 6.1\r\n");
        life.shell_ready();
        life.expect_reboot();
        life.feed(b"[   22.4] reboot: Restarting system\r\n[   22.4] reboot: machine restart\r\n");
        life.grew = Instant::now() - HUNG_AFTER - Duration::from_secs(1);
        assert!(life.poll().is_none(), "{:?}", life.ended());
        assert!(
            life.doing()
                .starts_with("restarting, no kernel started yet; console quiet for 9"),
            "{}",
            life.doing()
        );
        life.grew = Instant::now() - HUNG_IN_FIRMWARE_AFTER - Duration::from_secs(1);
        let ended = life.poll().expect("hung").clone();
        assert!(ended.before_kernel);
        assert!(
            ended.to_string().starts_with(
                "the guest is hung before its kernel started (in the firmware or the boot loader) (no console output for 18"
            ),
            "{ended}"
        );
        assert!(
            ended
                .to_string()
                .ends_with("its last console line: reboot: machine restart"),
            "{ended}"
        );
        // Once the kernel speaks, the kernel's allowance holds again.
        let mut life = watcher();
        life.expect_boot();
        assert!(life.before_kernel());
        life.feed(b"[    0.0] Linux version 6.1\r\n");
        assert!(!life.before_kernel());
        life.grew = Instant::now() - HUNG_AFTER - Duration::from_secs(1);
        assert_eq!(
            life.poll().map(|e| (e.end, e.before_kernel)),
            Some((GuestEnd::Hung, false))
        );
    }

    #[test]
    fn names_round_trip() {
        for end in GuestEnd::ALL {
            assert_eq!(GuestEnd::named(end.name()), Some(*end));
        }
        assert_eq!(GuestEnd::named("up"), None);
    }
}
