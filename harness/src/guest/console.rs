//! The control channel: a root shell on the guest's second serial port.
//!
//! Nothing here matches a shell prompt. Every command travels base64-encoded
//! into a file on a memory file system of the harness's own in the guest,
//! and a runner script there (`runner.sh`, installed at every boot) runs it
//! with its output streams kept in bounded pieces (the first and last bytes
//! of each, the middle counted), then prints its result as one line tagged
//! with a per-round-trip secret: standard output, standard error and exit
//! status base64-encoded. The secret reaches the runner only through a pipe
//! from the shell's built-in `printf`, so no command can print a marker the
//! harness would take for a result, and whatever else appears on the port
//! (terminal escapes, banners, kernel lines, a command writing to the port
//! itself) is passed over.
//!
//! The port is read by a thread of its own into an [`Inbox`], and a wait
//! wakes the moment new text arrives: an answer is seen as soon as its last
//! byte is in, not on the next tick of a poll (an expect loop that sleeps
//! between looks, as rexpect's reader does for 100 ms at `reader.rs:196`,
//! adds that much to every one of a trial's round trips).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use regex::Regex;
use sha2::Digest as _;

use crate::guest::life::{Ended, Life};
use crate::guest::vm;
use crate::media::image::AUTOLOGIN_BANNER;

/// How often the reader thread looks up from a quiet port to see whether it
/// has been told to stop.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// How long one write to the port may block (the guest reads what it is
/// sent at serial speed) before it is an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pending text longer than this is searched again only when a line ends
/// (every marker the harness waits for ends one) or the port goes quiet:
/// a long answer arrives a few bytes at a time, and searching all of it at
/// each arrival would cost time quadratic in its length.
const SEARCH_ALWAYS_BELOW: usize = 16 * 1024;
/// How long the port must be quiet before long pending text is searched
/// even without a line end.
const QUIET: Duration = Duration::from_millis(50);
/// How long to wait for a shell prompt before the first readiness probe.
const PROMPT_HINT: Duration = Duration::from_secs(5);
/// What the end of a shell prompt looks like, allowing for the terminal
/// escapes (such as readline's bracketed-paste switch) a shell may print
/// after it.
const PROMPT: &str = r"[#$] (?:\x1b\[[0-9;?]*[A-Za-z])*$";
/// How often the readiness probe is repeated while the guest boots.
const PROBE_EVERY: Duration = Duration::from_secs(3);
/// How long a command stopped for running past its time gets between
/// SIGTERM and SIGKILL.
const KILL_AFTER_SECS: u64 = 3;
/// How long the harness waits beyond a command's own limit (and the kill
/// grace) for the guest to report it stopped, before deciding that the
/// shell itself no longer answers.
const GUEST_SLACK: Duration = Duration::from_secs(20);
/// How often the kernel console is read while a wait has nothing else to
/// do: what the guest does shows within this.
const LIFE_EVERY: Duration = Duration::from_millis(250);
/// How many lines of a stopped command's output its error carries.
const OUTPUT_TAIL_LINES: usize = 15;
/// How much of each output stream of a command is brought back when no
/// limit is given.
pub(crate) use crate::project::DEFAULT_MAX_OUTPUT;
/// The most text the reader thread holds before it drops the oldest: only
/// a guest that writes to the control port itself, bypassing the runner's
/// limits, can send that much between two results.
const INBOX_LIMIT: usize = 64 << 20;
/// The guest side of every round trip (see the file).
const RUNNER: &str = include_str!("runner.sh");

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output, made inert ([`crate::text::inert`]); beyond its
    /// limit, the first and last bytes with a line saying how many were
    /// omitted between them.
    pub(crate) stdout: String,
    /// Standard error, the same way.
    pub(crate) stderr: String,
    /// Exit status.
    pub(crate) status: i32,
}

/// Why the control channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The guest stopped running the flow: a boot that ended anywhere but
    /// at the control shell, a kernel panic, a power-off or restart nobody
    /// asked for, a control shell that died. Noticed the moment the
    /// kernel console (or the control port) shows it.
    #[error("{what}: {ended}\n--- kernel console (ttyS0), last lines ---\n{console_tail}")]
    GuestEnded {
        /// What was being waited for (names the step).
        what: String,
        /// How the guest ended, with the lines that explain it.
        ended: Box<Ended>,
        /// The last lines of the kernel console log.
        console_tail: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {}s waiting for {what} (the guest was {doing})\n--- control port, last output ---\n{control_tail}\n--- kernel console (ttyS0), last lines ---\n{console_tail}", .waited.as_secs())]
    Timeout {
        /// What was being waited for (names the step).
        what: String,
        /// How long.
        waited: Duration,
        /// What the guest was last doing, as its console told.
        doing: String,
        /// The last unmatched text on the control port.
        control_tail: String,
        /// The last lines of the kernel console log.
        console_tail: String,
    },
    /// A command ran past its time inside the guest and was stopped there
    /// (its whole process group killed); the shell is still usable.
    #[error("{what}: still running after {}s; stopped inside the guest\n--- its output, last lines ---\n{stdout_tail}\n--- its errors, last lines ---\n{stderr_tail}", .waited.as_secs())]
    GuestTimeout {
        /// What was running (names the step).
        what: String,
        /// Its time limit.
        waited: Duration,
        /// The last lines of its standard output.
        stdout_tail: String,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// The control port closed (QEMU exited).
    #[error("the control port closed while waiting for {what}\n--- kernel console (ttyS0), last lines ---\n{console_tail}")]
    Closed {
        /// What was being waited for.
        what: String,
        /// The last lines of the kernel console log.
        console_tail: String,
    },
    /// Reading or writing the port failed.
    #[error("control port I/O while {what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        message: String,
    },
    /// The guest could not store a command or record what it printed (the
    /// harness's own memory file system in the guest is full or gone): no
    /// output can be told, and no status unless `status` has it.
    #[error("{what}: the guest could not {detail}")]
    Unrecorded {
        /// The command (names the step or capture).
        what: String,
        /// What could not be done, and the reason.
        detail: String,
        /// The command's exit status, where it ran to its end and only
        /// what it printed was lost.
        status: Option<i32>,
    },
    /// The guest answered something that is not a framed result.
    #[error("malformed answer while {what}: {message}")]
    Protocol {
        /// What was being done.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// What the reader thread has taken from the port and no wait has consumed
/// yet, and whether the port has ended.
#[derive(Default)]
struct Inbox {
    /// The text, one `char` per byte (Latin-1): every marker is ASCII, and
    /// anything else is carried in base64.
    text: String,
    /// Why the port ended (end of file, or a read error), once it has.
    ended: Option<PortEnd>,
}

#[derive(Clone)]
enum PortEnd {
    Closed,
    Failed(String),
}

/// The inbox and the signal that it changed.
#[derive(Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // A reader that panicked left the text as it was: still usable.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A root shell in the guest.
pub(crate) struct Console {
    stream: UnixStream,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    detached: Arc<AtomicBool>,
    kernel_log: Option<PathBuf>,
    login_banner: Option<Regex>,
    next_id: u64,
    nonce: String,
    boot_id: Option<String>,
    /// The runner's path in the guest (the commands' files go beside it),
    /// once the shell of this boot has been prepared.
    runner: Option<String>,
    /// What the guest is doing, from its kernel console.
    life: Option<Life>,
    /// Whether the shell of this boot is prepared: from then on, a login
    /// banner on the control port means the shell died.
    shell_up: bool,
    /// Where the runner's directory (`vmrepro`) goes: the first of these
    /// the guest can write in.
    homes: Vec<String>,
}

/// Where the runner's directory goes in a guest: on a memory file system
/// where there is one (systemd mounts /run as tmpfs from jessie's 215 on:
/// mount-setup.c), so that a full or broken disk cannot take it.
const HOMES: [&str; 3] = ["/run", "/dev/shm", "/tmp"];

enum Wait {
    Matched(String),
    Deadline(String),
}

impl Console {
    /// Attaches to a control port. `kernel_log` is the kernel console log,
    /// whose tail goes into error messages.
    pub(crate) fn attach(
        stream: UnixStream,
        kernel_log: Option<PathBuf>,
    ) -> Result<Console, ConsoleError> {
        let io = |e: std::io::Error| ConsoleError::Io {
            what: "attaching".into(),
            message: e.to_string(),
        };
        // A read timeout lets the reader thread notice a detach (for an
        // interactive shell, or the console dropped) instead of blocking
        // forever on the socket.
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
        let detached = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let reader = {
            let (mut stream, detached, shared) = (
                stream.try_clone().map_err(io)?,
                detached.clone(),
                shared.clone(),
            );
            std::thread::Builder::new()
                .name("control port".into())
                .spawn(move || read_port(&mut stream, &detached, &shared))
                .map_err(io)?
        };
        let nonce = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
                .unwrap_or(0)
        );
        Ok(Console {
            stream,
            shared,
            reader: Some(reader),
            detached,
            login_banner: None,
            next_id: 0,
            nonce,
            boot_id: None,
            runner: None,
            life: kernel_log.clone().map(Life::new),
            kernel_log,
            shell_up: false,
            homes: HOMES.map(str::to_owned).to_vec(),
        })
    }

    /// For unit tests: the runner's directory goes in `home` (a test's own
    /// folder, where the fake guest is the host itself).
    #[cfg(test)]
    pub(crate) fn set_home(&mut self, home: &std::path::Path) {
        self.homes = vec![home.display().to_string()];
    }

    /// Attaches to the control port of a guest in `vm`: its kernel console
    /// log is read for how it is doing (leaving out of a silence the time
    /// QEMU waited for the host: for a CPU, or on its disk), and each boot
    /// waits for the image's autologin banner before anything is typed.
    pub(crate) fn of_guest(control: UnixStream, vm: &vm::Vm) -> Result<Console, ConsoleError> {
        let mut console = Console::attach(control, Some(vm.console_log().to_owned()))?;
        console.login_banner = Regex::new(&regex::escape(AUTOLOGIN_BANNER)).ok();
        if let (Some(life), Some(pid)) = (&mut console.life, vm.pid()) {
            life.watch_process(pid);
        }
        Ok(console)
    }

    /// Waits for a shell on the control port (of a boot other than the last
    /// one seen) and prepares it for framed commands.
    pub(crate) fn wait_ready(&mut self, what: &str, timeout: Duration) -> Result<(), ConsoleError> {
        self.probe_until_ready(what, timeout, true)
    }

    /// Waits for a shell on the control port that the harness started from
    /// inside the emergency or rescue mode the guest ended in, and prepares
    /// it: that mode is from now on where the harness works (see
    /// [`Life::examine`]).
    pub(crate) fn wait_examination_shell(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<(), ConsoleError> {
        if let Some(life) = &mut self.life {
            life.examine();
        }
        self.probe_until_ready(what, timeout, true)
    }

    /// Waits for the shell of a guest resumed from a saved state: it sat at
    /// its prompt when the state was saved, so there is no login to wait
    /// for, only a probe to answer.
    pub(crate) fn wait_resumed(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<(), ConsoleError> {
        self.probe_until_ready(what, timeout, false)
    }

    fn probe_until_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        booting: bool,
    ) -> Result<(), ConsoleError> {
        let deadline = Instant::now() + timeout;
        let probe =
            Regex::new(r"VMRR-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
                .map_err(|e| self.protocol(what, e.to_string()))?;
        let previous = self.boot_id.clone();
        self.shell_up = false;
        if booting && previous.is_none() {
            // The first boot from power-on: one kernel start is expected
            // (a reboot says so itself).
            if let Some(life) = &mut self.life {
                life.expect_boot();
            }
        }
        if let Some(banner) = self.login_banner.clone().filter(|_| booting) {
            // Nothing is typed before the autologin has happened: getty and
            // login can flush part of what was typed and leave half a line
            // (a stray quote swallows every later probe). If the banner
            // never shows, probing starts anyway.
            let banner_deadline = Instant::now() + timeout.mul_f64(0.7);
            let _ = self.wait_for(&banner, banner_deadline, what)?;
        }
        // Likewise, wait briefly for something that looks like a prompt
        // before the first probe. This is only a hint; the probe decides.
        let prompt = Regex::new(PROMPT).map_err(|e| self.protocol(what, e.to_string()))?;
        if booting {
            let prompt_deadline = (Instant::now() + PROMPT_HINT).min(deadline);
            let _ = self.wait_for(&prompt, prompt_deadline, what)?;
        }
        let mut first = true;
        loop {
            if !first {
                // An unanswered probe: ^C discards whatever half line the
                // shell may hold before the next one.
                self.send(what, "\x03")?;
                std::thread::sleep(Duration::from_millis(300));
            }
            first = false;
            self.send(
                what,
                "printf '%s-%s\\n' VMRR \"$(cat /proc/sys/kernel/random/boot_id)\"\n",
            )?;
            let probe_deadline = (Instant::now() + PROBE_EVERY).min(deadline);
            loop {
                match self.wait_for(&probe, probe_deadline, what)? {
                    Wait::Matched(text) => {
                        let id = probe
                            .captures(&text)
                            .and_then(|c| c.get(1))
                            .map(|m| m.as_str().to_owned())
                            .unwrap_or_default();
                        if previous.as_deref() == Some(id.as_str()) {
                            // The old boot's shell, still answering: keep going.
                            continue;
                        }
                        self.boot_id = Some(id);
                        return self.prepare(what, deadline);
                    }
                    Wait::Deadline(pending) => {
                        if Instant::now() >= deadline {
                            return Err(self.timeout(what, timeout, pending));
                        }
                        break;
                    }
                }
            }
        }
    }

    fn prepare(&mut self, what: &str, deadline: Instant) -> Result<(), ConsoleError> {
        self.runner = None;
        let id = self.fresh_id();
        // Quiet the terminal so that nothing but results comes back, keep
        // the harness's lines out of root's shell history (bash writes it
        // to the guest's disk when it ends), then confirm with a marker so
        // any queued probe answers are drained.
        self.send(
            what,
            &format!(
                "stty -echo 2>/dev/null; set +o history; export PS1= PS2= PROMPT_COMMAND= TERM=dumb LC_ALL=C SYSTEMD_PAGER= PAGER=cat SYSTEMD_COLORS=0; bind 'set enable-bracketed-paste off' 2>/dev/null; printf '%s-%s\\n' VMRS {id}\n"
            ),
        )?;
        self.expect_marker(what, &format!(r"VMRS-{id}\r?\n"), deadline)?;
        // The runner's directory, in the first of the homes with room for a
        // round trip's files (see `room_test`). A runner already there (a resumed
        // guest saved with it) is not sent again: typing costs time on the
        // serial port.
        let runner = compact_runner();
        let name = format!(
            "run-{}.sh",
            &crate::text::hex(&sha2::Sha256::digest(runner.as_bytes()))[..12]
        );
        let id = self.fresh_id();
        let homes = self
            .homes
            .iter()
            .map(|home| crate::text::shell_quote(home))
            .collect::<Vec<_>>()
            .join(" ");
        let room = room_test(&format!("\"$__vmrepro_b/vmrepro/out-{}-room\"", self.nonce));
        self.send(
            what,
            &format!(
                "__vmrepro_d=; for __vmrepro_b in {homes}; do mkdir -p \"$__vmrepro_b/vmrepro\" 2>/dev/null && [ -w \"$__vmrepro_b/vmrepro\" ] && {room} && __vmrepro_d=$__vmrepro_b/vmrepro && break; done; if [ -n \"$__vmrepro_d\" ] && [ -f \"$__vmrepro_d/{name}\" ]; then __vmrepro_h=have; else __vmrepro_h=need; fi; printf '%s-%s %s %s\\n' VMRI {id} $__vmrepro_h \"$__vmrepro_d\"\n"
            ),
        )?;
        let answer = self.expect_marker(
            what,
            &format!(r"VMRI-{id} (have|need) ([^\r\n]*)\r?\n"),
            deadline,
        )?;
        let (have, dir) = answer
            .split_once(' ')
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(have, dir)| (have == "have", dir.trim_end().to_owned()))
            .unwrap_or_default();
        if dir.is_empty() {
            return Err(ConsoleError::Unrecorded {
                what: what.to_owned(),
                detail: format!(
                    "make a directory for the harness's files: {} are all read-only or full",
                    self.homes.join(", ")
                ),
                status: None,
            });
        }
        if !have {
            let id = self.fresh_id();
            let path = crate::text::shell_quote(&format!("{dir}/{name}"));
            self.send(
                what,
                &format!(
                    "printf %s '{}' | base64 -d > {path}.$$ && mv -f {path}.$$ {path} && printf '%s-%s ok\\n' VMRI {id} || printf '%s-%s failed\\n' VMRI {id}\n",
                    wrapped_base64(runner.as_bytes())
                ),
            )?;
            let answer =
                self.expect_marker(what, &format!(r"VMRI-{id} (ok|failed)\r?\n"), deadline)?;
            if !answer.contains(" ok") {
                return Err(ConsoleError::Unrecorded {
                    what: what.to_owned(),
                    detail: format!(
                        "install its command runner in {dir}, which is full or read-only"
                    ),
                    status: None,
                });
            }
        }
        self.runner = Some(format!("{dir}/{name}"));
        self.shell_up = true;
        if let Some(life) = &mut self.life {
            life.shell_ready();
        }
        Ok(())
    }

    /// Waits for a marker line (a regex) and returns the line.
    fn expect_marker(
        &mut self,
        what: &str,
        pattern: &str,
        deadline: Instant,
    ) -> Result<String, ConsoleError> {
        let marker = Regex::new(pattern).map_err(|e| self.protocol(what, e.to_string()))?;
        let started = Instant::now();
        match self.wait_for(&marker, deadline, what)? {
            Wait::Matched(line) => Ok(line),
            Wait::Deadline(pending) => Err(self.timeout(what, started.elapsed(), pending)),
        }
    }

    /// Waits until systemd has finished starting up (`is-system-running`
    /// leaves `initializing`/`starting`) and returns the state it reached.
    ///
    /// One command in the guest does the waiting. `systemctl
    /// is-system-running --wait` returns the moment the manager announces
    /// the end of start-up (it waits for the `StartupFinished` signal:
    /// systemctl-is-system-running.c, `match_startup_finished`). A systemctl
    /// too old for that either rejects the option (nothing on standard
    /// output) or ignores it (still `starting`), and the guest then asks
    /// every tenth of a second. A wait that runs out of time shows the jobs
    /// still queued.
    pub(crate) fn wait_settled(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<String, ConsoleError> {
        const SCRIPT: &str = "state=$(systemctl is-system-running --wait 2>/dev/null)
while :; do
  case \"$state\" in
    initializing|starting|'') sleep 0.1; state=$(systemctl is-system-running 2>/dev/null) ;;
    *) break ;;
  esac
done
echo \"$state\"
";
        let started = Instant::now();
        match self.run(what, SCRIPT, timeout) {
            Ok(out) => Ok(out.stdout.trim().to_owned()),
            Err(ConsoleError::GuestTimeout { .. }) => {
                let pending = self
                    .run(
                        &format!("{what}: what is still starting"),
                        "systemctl is-system-running; systemctl list-jobs --no-pager 2>&1 | head -n 20",
                        Duration::from_secs(30),
                    )
                    .map(|out| out.stdout)
                    .unwrap_or_default();
                Err(self.timeout(what, started.elapsed(), pending))
            }
            Err(other) => Err(other),
        }
    }

    /// Runs a bash script as root and returns its output and exit status.
    pub(crate) fn run(
        &mut self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ConsoleError> {
        let mut outputs = self.run_all(&[(what, script)], timeout)?;
        outputs
            .pop()
            .ok_or_else(|| self.protocol(what, "no result".into()))
    }

    /// Runs bash scripts as root one after the other, each named by its
    /// `what` and limited to `each`, in one round trip: everything is typed
    /// at once and every result comes back in one frame. A script still
    /// running after its time is stopped, and is an error that names it
    /// (the others still run). Each output stream brings back at most
    /// [`DEFAULT_MAX_OUTPUT`] bytes.
    pub(crate) fn run_all(
        &mut self,
        scripts: &[(&str, &str)],
        each: Duration,
    ) -> Result<Vec<CommandOutput>, ConsoleError> {
        let limited: Vec<(&str, &str, u64)> = scripts
            .iter()
            .map(|&(what, script)| (what, script, DEFAULT_MAX_OUTPUT))
            .collect();
        self.run_all_limited(&limited, each)
    }

    /// [`Console::run_all`] with a limit of its own for each script: how
    /// many bytes of each of its output streams come back (the first half
    /// and the last half; the runner in the guest counts the rest).
    pub(crate) fn run_all_limited(
        &mut self,
        scripts: &[(&str, &str, u64)],
        each: Duration,
    ) -> Result<Vec<CommandOutput>, ConsoleError> {
        match self.round_trip(scripts, each)? {
            Some(outputs) => Ok(outputs),
            // Nothing ran: the harness's directory was emptied since the
            // last round trip (a clean-up of /run, say), or filled. It is
            // made again, in a home with room, and the runner sent again,
            // once.
            None => {
                let what = "the harness's directory, made again";
                let deadline = Instant::now() + GUEST_SLACK + Duration::from_secs(30);
                self.prepare(what, deadline)?;
                match self.round_trip(scripts, each)? {
                    Some(outputs) => Ok(outputs),
                    None => {
                        let runner = self.runner.clone().unwrap_or_default();
                        Err(self.unrecorded(what, &runner, "store the commands", deadline, None))
                    }
                }
            }
        }
    }

    /// One round trip of [`Console::run_all_limited`]; `None` when the
    /// runner was no longer in its directory, and nothing was run.
    fn round_trip(
        &mut self,
        scripts: &[(&str, &str, u64)],
        each: Duration,
    ) -> Result<Option<Vec<CommandOutput>>, ConsoleError> {
        let what = scripts
            .iter()
            .map(|(what, _, _)| *what)
            .collect::<Vec<_>>()
            .join(", ");
        if scripts.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let Some(runner) = self.runner.clone() else {
            return Err(self.protocol(&what, "a command before the shell was ready".into()));
        };
        // The limit is enforced in the guest by coreutils' timeout(1), which
        // puts the command in a process group of its own and, when the time
        // is up, signals that whole group (TERM, then KILL): whatever the
        // command started dies with it and the shell is free for the next
        // command (timeout.c, "Ensure we're in our own group so all
        // subprocesses can be killed"). It exits 124 when it sent TERM and
        // 137 when it had to KILL; both have existed since coreutils 8.0,
        // older than any release here (jessie has 8.23). Whether a 124 was
        // timeout(1) speaking or the command is told by the guest's own
        // clock: bash's SECONDS, whole seconds, which cannot read less than
        // the limit once the limit has passed. The harness waits a little
        // longer than all the limits (and the runner's 2 s for output
        // streams a command left open), for a guest whose shell no longer
        // answers.
        let started = Instant::now();
        let limit_secs = each.as_secs_f64().ceil().max(1.0) as u64;
        let deadline = started
            + Duration::from_secs((limit_secs + KILL_AFTER_SECS + 2) * scripts.len() as u64)
            + GUEST_SLACK;
        let id = self.fresh_id();
        let dir = runner.rsplit_once('/').map_or("", |(dir, _)| dir);
        // Each command goes into a file through a pipe from the built-in
        // printf (a here-document would need a temporary file in /tmp, on
        // the disk a scenario may have filled), and the status of writing
        // it goes to the runner with the secret: an interactive shell's
        // variables are not in any file or command line a command can read.
        // The runner is looked for first (with the shell's built-in test),
        // and room for the round trip's files: where it is gone, or its
        // directory full, the shell says so at once, instead of a round
        // trip that never starts and waits out its deadline, or loses what
        // its commands print.
        let quoted_runner = crate::text::shell_quote(&runner);
        let room = room_test(&crate::text::shell_quote(&format!(
            "{dir}/out-{}-room",
            self.nonce
        )));
        let mut text = format!("if [ -f {quoted_runner} ] && {room}; then\n");
        let mut lines = format!("'{id} {limit_secs} {KILL_AFTER_SECS} {}'", self.nonce);
        for (i, (_, script, max)) in scripts.iter().enumerate() {
            let file = crate::text::shell_quote(&format!("{dir}/cmd-{}-{i}", self.nonce));
            text.push_str(&format!(
                "printf %s '{}' | base64 -d > {file}; __vmrepro_{i}=$?\n",
                wrapped_base64(script.as_bytes())
            ));
            let (head, tail) = kept_ends(*max);
            lines.push_str(&format!(" \"$__vmrepro_{i} {head} {tail}\""));
        }
        text.push_str(&format!(
            "printf '%s\\n' {lines} | bash {quoted_runner}\nelse printf '%s-%s\\n' VMRM {id}; fi\n",
        ));
        self.send(&what, &text)?;
        let frame = Regex::new(&format!(
            r"(?s)VMRM-{id}\r?\n|VMRB-{id}\r?\n(.*?)VMRE-{id}\r?\n"
        ))
        .map_err(|e| self.protocol(&what, e.to_string()))?;
        let body = match self.wait_for(&frame, deadline, &what)? {
            Wait::Deadline(pending) => return Err(self.timeout(&what, started.elapsed(), pending)),
            Wait::Matched(text) => match frame.captures(&text) {
                Some(c) => match c.get(1) {
                    Some(body) => body.as_str().to_owned(),
                    None => return Ok(None),
                },
                None => return Err(self.protocol(&what, "frame did not parse".into())),
            },
        };
        // Each result is a line of its own, found wherever it is among
        // whatever else the guest wrote to the port meanwhile.
        const B64: &str = r"([A-Za-z0-9+/=]+|-)";
        let result = Regex::new(&format!(
            r"VMRO-{id}-(\d+) (\d+|unsent) (\d+) (\d+|open|lost) (\d+|open|lost) {B64} {B64} {B64} {B64}\r?\n"
        ))
        .map_err(|e| self.protocol(&what, e.to_string()))?;
        let mut found: BTreeMap<usize, regex::Captures> = BTreeMap::new();
        for caps in result.captures_iter(&body) {
            if let Some(i) = caps.get(1).and_then(|m| m.as_str().parse().ok()) {
                found.insert(i, caps);
            }
        }
        // No command stored: the directory went between the look for the
        // runner and the commands' files, or it is full. Nothing ran, so
        // the round trip is done again once the directory is back, or in
        // another home.
        let unsent = |caps: &regex::Captures| caps.get(2).is_some_and(|m| m.as_str() == "unsent");
        if found.len() == scripts.len() && found.values().all(unsent) {
            return Ok(None);
        }
        let mut outputs = Vec::with_capacity(scripts.len());
        for (i, (what, _, max)) in scripts.iter().enumerate() {
            let Some(caps) = found.get(&i) else {
                return Err(self.protocol(
                    what,
                    "its result line was garbled by other output on the control port".into(),
                ));
            };
            let field = |n: usize| caps.get(n).map_or("", |m| m.as_str());
            if field(2) == "unsent" {
                return Err(self.unrecorded(what, &runner, "store the command", deadline, None));
            }
            let (_, keep_tail) = kept_ends(*max);
            let stream = |size: usize, head: usize, tail: usize| {
                StreamResult {
                    size: field(size),
                    head: field(head),
                    tail: field(tail),
                }
                .text(keep_tail)
                .map_err(|message| self.protocol(what, message))
            };
            let (stdout, stderr) = match (stream(4, 6, 7)?, stream(5, 8, 9)?) {
                (Some(stdout), Some(stderr)) => (stdout, stderr),
                _ => {
                    return Err(self.unrecorded(
                        what,
                        &runner,
                        "record what the command printed",
                        deadline,
                        field(2).parse().ok(),
                    ))
                }
            };
            let (Ok(status), Ok(seconds)) = (field(2).parse::<u64>(), field(3).parse::<u64>())
            else {
                return Err(self.protocol(what, format!("bad status {:?}", field(2))));
            };
            // 124 or 137 from a command that ran its whole time is
            // timeout(1) speaking, not the command.
            if matches!(status, 124 | 137) && seconds >= limit_secs {
                return Err(ConsoleError::GuestTimeout {
                    what: (*what).to_owned(),
                    waited: Duration::from_secs(limit_secs),
                    stdout_tail: crate::text::tail(&stdout, OUTPUT_TAIL_LINES),
                    stderr_tail: crate::text::tail(&stderr, OUTPUT_TAIL_LINES),
                });
            }
            outputs.push(CommandOutput {
                stdout,
                stderr,
                status: status as i32,
            });
        }
        Ok(Some(outputs))
    }

    /// Why the guest could not `do` what a round trip needed in the
    /// runner's directory: the directory was removed (a command of the
    /// round trip emptied /run, say), and is then made again for the
    /// round trips after this one; or it is full, or broken.
    fn unrecorded(
        &mut self,
        what: &str,
        runner: &str,
        task: &str,
        deadline: Instant,
        status: Option<i32>,
    ) -> ConsoleError {
        let dir = runner.rsplit_once('/').map_or("", |(dir, _)| dir);
        let detail = if !self.runner_gone(what, runner, deadline) {
            match self.has_room(what, dir, deadline) {
                Some(false) => format!("{task} in {dir}, which is full or read-only"),
                Some(true) => format!("{task} in {dir}, which was full or read-only for a while"),
                None => format!("{task} in {dir}"),
            }
        } else if self.prepare(what, deadline).is_ok() {
            format!("{task}: {dir}, where the harness keeps its files, was removed while the command ran (the harness has made it again)")
        } else {
            format!("{task}: {dir}, where the harness keeps its files, was removed while the command ran")
        };
        ConsoleError::Unrecorded {
            what: what.to_owned(),
            detail,
            status,
        }
    }

    /// Whether `dir` has room for a round trip's files now (see
    /// [`room_test`]); `None` when the shell does not say.
    fn has_room(&mut self, what: &str, dir: &str, deadline: Instant) -> Option<bool> {
        let id = self.fresh_id();
        let room = room_test(&crate::text::shell_quote(&format!(
            "{dir}/out-{}-room",
            self.nonce
        )));
        self.send(
            what,
            &format!(
                "if {room}; then printf '%s-%s room\\n' VMRF {id}; else printf '%s-%s full\\n' VMRF {id}; fi\n"
            ),
        )
        .ok()?;
        self.expect_marker(what, &format!(r"VMRF-{id} (room|full)\r?\n"), deadline)
            .ok()
            .map(|answer| answer.contains("room"))
    }

    /// Whether the runner is no longer where the shell was prepared to
    /// find it (asked of the shell's built-in test; a shell that does not
    /// answer counts as not gone).
    fn runner_gone(&mut self, what: &str, runner: &str, deadline: Instant) -> bool {
        let id = self.fresh_id();
        let asked = self.send(
            what,
            &format!(
                "if [ -f {} ]; then printf '%s-%s here\\n' VMRD {id}; else printf '%s-%s gone\\n' VMRD {id}; fi\n",
                crate::text::shell_quote(runner)
            ),
        );
        asked.is_ok()
            && self
                .expect_marker(what, &format!(r"VMRD-{id} (here|gone)\r?\n"), deadline)
                .is_ok_and(|answer| answer.contains("gone"))
    }

    /// Whether the guest's shell reads and answers a line typed now within
    /// `timeout`: proof that the guest has run its own programs since.
    /// Only the shell's built-in printf runs, so nothing in the guest
    /// changes.
    pub(crate) fn barrier(&mut self, what: &str, timeout: Duration) -> bool {
        let id = self.fresh_id();
        let deadline = Instant::now() + timeout;
        self.send(what, &format!("printf '%s-%s\\n' VMRK {id}\n"))
            .is_ok()
            && self
                .expect_marker(what, &format!(r"VMRK-{id}\r?\n"), deadline)
                .is_ok()
    }

    /// Writes a file in the guest (creating its directory) with a mode.
    pub(crate) fn write_file(
        &mut self,
        what: &str,
        path: &str,
        content: &str,
        mode: u32,
        timeout: Duration,
    ) -> Result<CommandOutput, ConsoleError> {
        let quoted = crate::text::shell_quote(path);
        // Through a pipe from the built-in printf, not a here-document,
        // which bash keeps in a temporary file in /tmp: a full disk must
        // fail the write itself, not its staging.
        let script = format!(
            "set -e\nmkdir -p \"$(dirname {quoted})\"\nprintf %s '{}' | base64 -d > {quoted}\nchmod {mode:o} {quoted}\n",
            wrapped_base64(content.as_bytes())
        );
        self.run(what, &script, timeout)
    }

    /// Writes bytes to a file in the guest, exactly as given, reporting
    /// (bytes accepted, bytes in all) as the guest takes them.
    ///
    /// Bulk data does not go through the shell's command line: the
    /// interactive shell reads what is typed one character at a time
    /// (readline), a few KiB/s under emulation. Instead a `head -c` started
    /// by a short command line reads the base64 text that follows it
    /// straight from the terminal, a line per read; readline takes no byte
    /// past the command line's newline, so the rest waits in the terminal's
    /// queue for `head`. The serial port has no flow control the guest can
    /// use (QEMU's UART ignores RTS), and the guest's terminal buffers hold
    /// 64 KiB (the tty layer's default limit) before they drop input, so
    /// the text goes in pieces well below that, each acknowledged by a loop
    /// in the guest before the next is sent.
    pub(crate) fn receive_file(
        &mut self,
        what: &str,
        path: &str,
        bytes: &[u8],
        timeout: Duration,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CommandOutput, ConsoleError> {
        /// Base64 text per acknowledged piece: 416 lines of 77 bytes.
        const PIECE: usize = 416 * 77;
        let deadline = Instant::now() + timeout;
        if bytes.is_empty() {
            return self.run(
                what,
                &format!(": > {}", crate::text::shell_quote(path)),
                timeout,
            );
        }
        let text = wrapped_base64(bytes);
        let staging = crate::text::shell_quote(&format!("{path}.base64"));
        let total = bytes.len() as u64;
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(PIECE).collect();
        let id = self.fresh_id();
        // One command line for the whole transfer: a loop in the guest that
        // takes one piece, says so, and waits for the next.
        let last = pieces.last().map_or(0, |p| p.len());
        self.send(
            what,
            &format!(
                ": > {staging}; i=0; while [ $i -lt {count} ]; do i=$((i+1)); n={PIECE}; [ $i -eq {count} ] && n={last}; head -c $n >> {staging} || break; printf '%s-%s-%s\\n' VMRA {id} $i; done\n",
                count = pieces.len()
            ),
        )?;
        let mut sent = 0usize;
        for (i, piece) in pieces.iter().enumerate() {
            // Whole lines of base64: ASCII, so the piece is valid text.
            self.send(what, &String::from_utf8_lossy(piece))?;
            let acked = Regex::new(&format!(r"VMRA-{id}-{}\r?\n", i + 1))
                .map_err(|e| self.protocol(what, e.to_string()))?;
            if let Wait::Deadline(pending) = self.wait_for(&acked, deadline, what)? {
                return Err(self.timeout(what, timeout, pending));
            }
            sent += piece.len();
            progress((sent as u64 * total) / text.len().max(1) as u64, total);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.run(
            what,
            &format!(
                "base64 -d {staging} > {} && rm -f {staging}",
                crate::text::shell_quote(path)
            ),
            left.max(Duration::from_secs(1)),
        )
    }

    /// Reboots the guest and waits until a shell of the new boot is ready.
    pub(crate) fn reboot(&mut self, what: &str, timeout: Duration) -> Result<(), ConsoleError> {
        if self.boot_id.is_none() {
            return Err(self.protocol(what, "reboot before the shell was ready".into()));
        }
        // Not framed: the shell dies with the old boot. `systemctl reboot`
        // may complain that it cannot reach the bus and still reboot.
        if let Some(life) = &mut self.life {
            life.expect_reboot();
        }
        self.shell_up = false;
        self.send(what, "systemctl reboot\n")?;
        self.wait_ready(what, timeout)
    }

    /// Hands the raw control port over, for an interactive session: turns
    /// terminal echo back on, gives the shell a prompt, and stops reading.
    pub(crate) fn into_interactive(
        mut self,
        prompt: &str,
        rows: u16,
        cols: u16,
    ) -> Result<UnixStream, ConsoleError> {
        let what = "preparing the interactive shell";
        self.send(
            what,
            &format!(
                "stty sane rows {rows} cols {cols} 2>/dev/null; export TERM=xterm-256color PS1={}; unset PROMPT_COMMAND; cd /root\n",
                crate::text::shell_quote(prompt)
            ),
        )?;
        // The reader thread sees the flag within one read timeout and ends;
        // from then on the port is the interactive session's alone. What
        // it read before that is the setup command's echo, left behind on
        // purpose.
        self.stop_reader();
        self.stream.try_clone().map_err(|e| ConsoleError::Io {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    fn stop_reader(&mut self) {
        self.detached.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}{}", self.nonce, self.next_id)
    }

    fn send(&mut self, what: &str, text: &str) -> Result<(), ConsoleError> {
        (&self.stream)
            .write_all(text.as_bytes())
            .and_then(|_| (&self.stream).flush())
            .map_err(|e| ConsoleError::Io {
                what: what.to_owned(),
                message: e.to_string(),
            })
    }

    /// Waits until `regex` matches the text read so far, or `deadline`.
    /// A match consumes the text up to its end; a deadline consumes nothing
    /// and returns what is pending.
    fn wait_for(
        &mut self,
        regex: &Regex,
        deadline: Instant,
        what: &str,
    ) -> Result<Wait, ConsoleError> {
        let shared = self.shared.clone();
        let mut inbox = shared.lock();
        // How much of the text has been searched without a match, and when
        // it last grew.
        let mut searched: Option<usize> = None;
        let mut grew = Instant::now();
        let mut looked: Option<Instant> = None;
        loop {
            let len = inbox.text.len();
            let fresh = searched.map_or(0, |n| n.min(len));
            let worth_it = searched.is_none()
                || (len > fresh
                    && (len <= SEARCH_ALWAYS_BELOW
                        || inbox.text[fresh..].contains('\n')
                        || grew.elapsed() >= QUIET));
            if worth_it {
                if let Some((start, end)) = regex.find(&inbox.text).map(|m| (m.start(), m.end())) {
                    let matched = inbox.text[start..end].to_owned();
                    inbox.text.drain(..end);
                    return Ok(Wait::Matched(matched));
                }
                searched = Some(len);
            }
            // The guest's life is looked at every LIFE_EVERY, not at each
            // arrival on the port (a long answer arrives in thousands of
            // pieces), and once more when the port ends: a port that closed
            // because QEMU ended is explained by it when it can be (a guest
            // that powered itself off).
            if looked.is_none_or(|at| at.elapsed() >= LIFE_EVERY) || inbox.ended.is_some() {
                looked = Some(Instant::now());
                // A new login on the control port: the shell the harness
                // was talking to is gone (killed, or its getty restarted).
                if self.shell_up
                    && self
                        .login_banner
                        .as_ref()
                        .is_some_and(|b| b.is_match(&inbox.text))
                {
                    let ended = self.life.as_mut().map(|life| life.shell_died().clone());
                    if let Some(ended) = ended {
                        return Err(self.guest_ended(what, ended));
                    }
                }
                if let Some(ended) = self.life.as_mut().and_then(|life| life.poll().cloned()) {
                    return Err(self.guest_ended(what, ended));
                }
            }
            match inbox.ended.clone() {
                Some(PortEnd::Closed) => {
                    return Err(ConsoleError::Closed {
                        what: what.to_owned(),
                        console_tail: self.console_tail(),
                    })
                }
                Some(PortEnd::Failed(message)) => {
                    return Err(ConsoleError::Io {
                        what: what.to_owned(),
                        message,
                    })
                }
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Wait::Deadline(inbox.text.clone()));
            }
            // Long text not yet searched is searched once the port has
            // been quiet for a moment; otherwise sleep until something
            // arrives.
            let mut wait = deadline - now;
            if self.life.is_some() {
                // The console is read between arrivals on the port.
                wait = wait.min(LIFE_EVERY);
            }
            if searched.is_some_and(|n| n < len) {
                wait = wait.min(
                    QUIET
                        .saturating_sub(grew.elapsed())
                        .max(Duration::from_millis(1)),
                );
            }
            let (next, _) = shared
                .arrived
                .wait_timeout(inbox, wait)
                .unwrap_or_else(|p| p.into_inner());
            inbox = next;
            if inbox.text.len() != len {
                grew = Instant::now();
            }
        }
    }

    fn console_tail(&self) -> String {
        self.kernel_log
            .as_deref()
            .map(|p| vm::tail_of(p, vm::TAIL_LINES))
            .unwrap_or_else(|| "(no kernel console log)".into())
    }

    fn guest_ended(&self, what: &str, ended: Ended) -> ConsoleError {
        ConsoleError::GuestEnded {
            what: what.to_owned(),
            ended: Box::new(ended),
            console_tail: self.console_tail(),
        }
    }

    fn timeout(&self, what: &str, waited: Duration, pending: String) -> ConsoleError {
        ConsoleError::Timeout {
            what: what.to_owned(),
            waited,
            doing: self
                .life
                .as_ref()
                .map_or_else(|| "not watched".to_owned(), Life::doing),
            control_tail: crate::text::last_lines(&latin1_bytes(&pending), 10),
            console_tail: self.console_tail(),
        }
    }

    fn protocol(&self, what: &str, message: String) -> ConsoleError {
        ConsoleError::Protocol {
            what: what.to_owned(),
            message,
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // The reader thread ends within one read timeout; nothing waits
        // for it.
        self.detached.store(true, Ordering::SeqCst);
    }
}

/// The reader thread: moves what the port says into the inbox, waking any
/// wait, until the port ends or the console lets go of it.
fn read_port(stream: &mut UnixStream, detached: &AtomicBool, shared: &Shared) {
    let mut buf = [0u8; 8192];
    loop {
        if detached.load(Ordering::SeqCst) {
            return;
        }
        let ended = match stream.read(&mut buf) {
            Ok(0) => Some(PortEnd::Closed),
            Ok(n) => {
                let mut inbox = shared.lock();
                inbox.text.extend(buf[..n].iter().map(|&b| char::from(b)));
                if inbox.text.len() > INBOX_LIMIT {
                    // A char boundary: every char here is one or two bytes.
                    let mut cut = inbox.text.len() - INBOX_LIMIT / 2;
                    while !inbox.text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    inbox.text.drain(..cut);
                }
                None
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Some(PortEnd::Failed(e.to_string())),
        };
        if let Some(ended) = ended {
            shared.lock().ended = Some(ended);
            shared.arrived.notify_all();
            return;
        }
        shared.arrived.notify_all();
    }
}

/// A shell test that `file` can take 64 KiB, written with the shell's own
/// printf: it shows that its directory has room for a round trip's command
/// and result files, as an empty file would not (a full memory file system
/// still makes one) nor a byte written over an old one (the page it frees
/// is the one it takes). The file is named like the round trip's output
/// files, which the runner removes as it starts; where the write fails it
/// is removed at once, so that the test takes none of what little room a
/// guest has left.
fn room_test(file: &str) -> String {
    format!("{{ {{ printf '%65536s' '' > {file}; }} 2>/dev/null || {{ rm -f {file}; false; }}; }}")
}

/// How many bytes of the start and of the end of a stream are kept when it
/// may bring back `max` in all.
fn kept_ends(max: u64) -> (u64, u64) {
    let head = (max / 2).max(1);
    (head, max.saturating_sub(head).max(1))
}

/// Text read from the port (one `char` per byte) as the bytes it was.
fn latin1_bytes(text: &str) -> Vec<u8> {
    text.chars().map(|c| c as u32 as u8).collect()
}

/// The runner as it is sent: without its comments and indentation, which
/// would only cost typing time on the serial port.
fn compact_runner() -> String {
    RUNNER
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .fold(String::new(), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

/// One output stream's result as the runner printed it: its size (or
/// `open`, `lost`) and its kept head and tail, base64-encoded or `-`.
struct StreamResult<'a> {
    size: &'a str,
    head: &'a str,
    tail: &'a str,
}

impl StreamResult<'_> {
    /// The stream as text, with a line in place of what was omitted; `None`
    /// when the guest could not record it.
    fn text(&self, keep_tail: u64) -> Result<Option<String>, String> {
        let decode = |field: &str| -> Result<Vec<u8>, String> {
            if field == "-" {
                return Ok(Vec::new());
            }
            base64::engine::general_purpose::STANDARD
                .decode(field)
                .map_err(|e| format!("bad base64: {e}"))
        };
        let (head, tail) = (decode(self.head)?, decode(self.tail)?);
        let mut text = crate::text::inert(&head);
        let gap = |text: &mut String, line: &str| {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(line);
        };
        match self.size {
            "lost" => return Ok(None),
            "open" => gap(
                &mut text,
                "[… the output was still held open by a process the command left running; only its first bytes are shown …]\n",
            ),
            size => {
                let size: u64 = size.parse().map_err(|_| format!("bad size {size:?}"))?;
                let kept = head.len() as u64 + tail.len() as u64;
                if size > kept {
                    gap(&mut text, &format!("[… {} bytes omitted …]\n", size - kept));
                } else if tail.len() as u64 > keep_tail {
                    return Err(format!("{} tail bytes, more than the {keep_tail} asked for", tail.len()));
                }
                text.push_str(&crate::text::inert(&tail));
            }
        }
        Ok(Some(text))
    }
}

/// Base64 in 76-column lines, each ending in a newline: short enough for any
/// terminal's line buffer.
fn wrapped_base64(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    //! The protocol against a fake guest: a local bash behind a pty (via
    //! `script`), with terminal echo on. This tests the framing, not a guest.
    use super::*;

    use crate::guest::fake::LocalShell as FakeGuest;

    /// The shell goes on as before.
    fn still_answers(guest: &mut FakeGuest) {
        let out = guest
            .console
            .run("after", "echo fine", Duration::from_secs(10))
            .expect("run");
        assert_eq!(out.stdout, "fine\n");
    }

    fn fake_guest() -> FakeGuest {
        fake_guest_after("")
    }

    /// A fake guest whose shell has already been sent `typed_ahead`.
    fn fake_guest_after(typed_ahead: &str) -> FakeGuest {
        FakeGuest::start(typed_ahead, None)
    }

    #[test]
    fn framed_commands_carry_output_and_status() {
        let mut guest = fake_guest();
        let c = &mut guest.console;
        let t = Duration::from_secs(10);
        let out = c
            .run("echo", "echo hello; echo oops >&2; exit 3", t)
            .expect("run");
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.status, 3);
        // Output that looks like our markers or has escapes stays data.
        let tricky = "printf 'VMRE-1-0\\n\\033[31mred\\033[0m\\n'; printf 'no newline'";
        let out = c.run("tricky", tricky, t).expect("run");
        assert_eq!(out.stdout, "VMRE-1-0\n\\u{1b}[31mred\\u{1b}[0m\nno newline");
        assert_eq!(out.status, 0);
        let script =
            "for i in $(seq 1 3000); do echo \"line $i with 'quotes' and \\\"more\\\"\"; done";
        let out = c.run("long", script, t).expect("run");
        assert_eq!(out.stdout.lines().count(), 3000);
        assert!(out
            .stdout
            .ends_with("line 3000 with 'quotes' and \"more\"\n"));
    }

    #[test]
    fn systemd_is_waited_for_and_a_start_that_does_not_end_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = dir.path().join("up");
        let systemctl = dir.path().join("systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  is-system-running) if [ -e {up} ]; then echo degraded; else echo starting; fi ;;\n  list-jobs) echo '12 networking.service start running' ;;\nesac\n",
                up = up.display()
            ),
        )
        .expect("systemctl");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let mut guest = FakeGuest::start("", Some(dir.path()));
        std::fs::write(&up, "").expect("up");
        let state = guest
            .console
            .wait_settled("systemd to settle", Duration::from_secs(10))
            .expect("settled");
        assert_eq!(state, "degraded");
        std::fs::remove_file(&up).expect("down");
        let err = guest
            .console
            .wait_settled("systemd to settle", Duration::from_millis(800))
            .expect_err("still starting");
        let ConsoleError::Timeout { control_tail, .. } = &err else {
            panic!("{err}");
        };
        assert!(control_tail.contains("starting"), "{control_tail}");
        assert!(
            control_tail.contains("networking.service"),
            "{control_tail}"
        );
        still_answers(&mut guest);
    }

    #[test]
    fn a_runner_removed_between_round_trips_is_sent_again() {
        let mut guest = fake_guest();
        let dir = guest.home.path().join("vmrepro");
        std::fs::remove_dir_all(&dir).expect("the runner's directory");
        let started = Instant::now();
        still_answers(&mut guest);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no round trip is left to its deadline"
        );
        assert!(dir.is_dir());
    }

    /// Makes the file that shows room in `dir` fail to be written, and
    /// stay so, as on a full file system: a folder in its place, which
    /// neither a write nor `rm -f` gets rid of.
    fn fill(console: &Console, dir: &std::path::Path) {
        let room = dir.join(format!("out-{}-room", console.nonce));
        let _ = std::fs::remove_file(&room);
        std::fs::create_dir_all(&room).expect("a folder in the way");
    }

    #[test]
    fn a_failed_look_for_room_takes_none_of_it() {
        let mut guest = fake_guest();
        let dir = guest.home.path().join("vmrepro");
        let room = dir.join(format!("out-{}-room", guest.console.nonce));
        // Left by the look for a home, until the first round trip.
        std::fs::remove_file(&room).expect("the home's own look");
        std::os::unix::fs::symlink("/dev/full", &room).expect("symlink");
        let deadline = Instant::now() + Duration::from_secs(10);
        let dir_text = dir.display().to_string();
        assert_eq!(
            guest.console.has_room("look", &dir_text, deadline),
            Some(false)
        );
        assert!(
            room.symlink_metadata().is_err(),
            "the failed write is removed"
        );
        assert_eq!(
            guest.console.has_room("look", &dir_text, deadline),
            Some(true)
        );
        still_answers(&mut guest);
        assert!(room.symlink_metadata().is_err(), "the runner removes it");
    }

    #[test]
    fn a_full_home_is_left_for_the_next_and_the_commands_run_there() {
        let mut guest = fake_guest();
        let second = tempfile::tempdir().expect("a second home");
        guest
            .console
            .homes
            .push(second.path().display().to_string());
        fill(&guest.console, &guest.home.path().join("vmrepro"));
        let out = guest
            .console
            .run("after", "echo fine", Duration::from_secs(10))
            .expect("run");
        assert_eq!(out.stdout, "fine\n");
        let runner = guest.console.runner.clone().unwrap_or_default();
        assert!(
            runner.starts_with(&second.path().display().to_string()),
            "{runner}"
        );
        // Every home full: said, naming them.
        fill(&guest.console, &second.path().join("vmrepro"));
        let err = guest
            .console
            .run("after", "echo fine", Duration::from_secs(10))
            .expect_err("nowhere to write");
        assert!(err.to_string().contains("read-only or full"), "{err}");
    }

    /// A command that leaves the guest unable to keep what it printed: the
    /// files that say each stream was kept fully become /dev/full (the
    /// command is run as `bash DIR/cmd-TAG-0`).
    pub(crate) const LOSES_ITS_OUTPUT: &str = r#"echo hi
d=${0%/*}; t=${0##*/cmd-}; t=${t%-*}
ln -sf /dev/full "$d/out-$t-0.out.done"; ln -sf /dev/full "$d/out-$t-0.err.done"
exit 3"#;

    #[test]
    fn a_command_whose_output_is_lost_keeps_its_status_and_says_why() {
        let mut guest = fake_guest();
        let err = guest
            .console
            .run("a step", LOSES_ITS_OUTPUT, Duration::from_secs(10))
            .expect_err("its output is lost");
        let ConsoleError::Unrecorded { detail, status, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(*status, Some(3));
        // The directory takes bytes again by the time it is looked at.
        assert!(
            detail.starts_with("record what the command printed in ")
                && detail.ends_with("which was full or read-only for a while"),
            "{detail}"
        );
        still_answers(&mut guest);
    }

    #[test]
    fn a_command_that_removes_the_runner_s_directory_is_named_and_the_shell_goes_on() {
        let mut guest = fake_guest();
        let dir = guest.home.path().join("vmrepro");
        let err = guest
            .console
            .run(
                "a clean-up",
                &format!("rm -rf {}; echo cleaned", dir.display()),
                Duration::from_secs(10),
            )
            .expect_err("its output is lost");
        let ConsoleError::Unrecorded { detail, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            detail.contains("was removed while the command ran")
                && detail.contains("made it again"),
            "{detail}"
        );
        still_answers(&mut guest);
    }

    #[test]
    fn prompts_are_recognised_with_or_without_bracketed_paste() {
        let prompt = Regex::new(PROMPT).expect("valid");
        for text in [
            "Debian GNU/Linux 12 vmrepro ttyS1\n\nroot@vmrepro:~# ",
            "root@vmrepro:~# \x1b[?2004h",
            "$ ",
        ] {
            assert!(prompt.is_match(text), "{text:?}");
        }
        for text in ["root@vmrepro:~# ls\n", "login: ", "# x"] {
            assert!(!prompt.is_match(text), "{text:?}");
        }
    }

    #[test]
    fn a_half_typed_line_does_not_block_readiness() {
        // What getty can leave behind at boot: the tail of a probe with an
        // unbalanced quote, which would swallow every later line.
        let mut guest = fake_guest_after("echo \"half a line\n");
        let out = guest
            .console
            .run("after recovery", "echo fine", Duration::from_secs(10))
            .expect("run");
        assert_eq!(out.stdout, "fine\n");
    }

    #[test]
    fn bulk_bytes_arrive_exactly() {
        let mut guest = fake_guest();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bulk");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut heard = 0;
        let out = guest
            .console
            .receive_file(
                "bulk",
                &path.to_string_lossy(),
                &bytes,
                Duration::from_secs(60),
                &mut |sent, total| {
                    assert!(sent <= total);
                    heard = sent;
                },
            )
            .expect("receive");
        assert_eq!(out.status, 0);
        assert_eq!(heard, bytes.len() as u64);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        // The shell goes on as before.
        still_answers(&mut guest);
    }

    #[test]
    fn files_are_written_verbatim() {
        let mut guest = fake_guest();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/file with space");
        let content = "line 1\n'quoted' $HOME `tick`\n\u{e9}t\u{e9}\n";
        let out = guest
            .console
            .write_file(
                "write",
                &path.to_string_lossy(),
                content,
                0o600,
                Duration::from_secs(10),
            )
            .expect("write");
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), content);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_command_past_its_time_is_stopped_in_the_guest_and_the_shell_goes_on() {
        let mut guest = fake_guest();
        let dir = tempfile::tempdir().expect("tempdir");
        let child_pid = dir.path().join("child.pid");
        let started = Instant::now();
        // A child in the background as well: the whole group must go.
        let script = format!(
            "sleep 600 & echo $! > {}; echo working; echo warning >&2; sleep 600",
            child_pid.display()
        );
        let err = guest
            .console
            .run("step 4 (sleep)", &script, Duration::from_secs(2))
            .expect_err("must time out");
        let took = started.elapsed();
        let text = err.to_string();
        assert!(matches!(err, ConsoleError::GuestTimeout { .. }), "{text}");
        assert!(text.contains("step 4 (sleep)"), "{text}");
        assert!(text.contains("after 2s"), "{text}");
        assert!(
            text.contains("working") && text.contains("warning"),
            "{text}"
        );
        assert!(took < Duration::from_secs(15), "took {took:?}");
        let pid = std::fs::read_to_string(&child_pid).expect("pid");
        // Gone, or a zombie waiting for whoever inherited it to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        let alive = stat.is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "the background child {pid} survived");
        let out = guest
            .console
            .run(
                "after the timeout",
                "echo still here",
                Duration::from_secs(10),
            )
            .expect("the shell answers");
        assert_eq!(out.stdout, "still here\n");
    }

    #[test]
    fn several_commands_share_one_round_trip_and_keep_their_own_results() {
        let mut guest = fake_guest();
        let t = Duration::from_secs(10);
        let outs = guest
            .console
            .run_all(
                &[
                    ("first", "echo one; exit 3"),
                    ("second", "echo two >&2"),
                    ("third", "printf 'no newline'; exit 124"),
                ],
                t,
            )
            .expect("run");
        let got: Vec<(&str, &str, i32)> = outs
            .iter()
            .map(|o| (o.stdout.as_str(), o.stderr.as_str(), o.status))
            .collect();
        assert_eq!(
            got,
            [("one\n", "", 3), ("", "two\n", 0), ("no newline", "", 124)]
        );
        // A command that runs out of time is named; the shell goes on.
        let err = guest
            .console
            .run_all(
                &[
                    ("quick", "true"),
                    ("slow one", "sleep 600"),
                    ("never", "true"),
                ],
                Duration::from_secs(1),
            )
            .expect_err("must time out");
        assert!(
            matches!(&err, ConsoleError::GuestTimeout { what, .. } if what == "slow one"),
            "{err}"
        );
        assert!(guest.console.run_all(&[], t).expect("nothing").is_empty());
        let out = guest.console.run("after", "echo fine", t).expect("run");
        assert_eq!(out.stdout, "fine\n");
    }

    #[test]
    fn a_command_that_exits_124_quickly_is_not_a_timeout() {
        let mut guest = fake_guest();
        let out = guest
            .console
            .run("exit 124", "exit 124", Duration::from_secs(30))
            .expect("an ordinary status");
        assert_eq!(out.status, 124);
    }

    #[test]
    fn a_flood_keeps_its_head_and_tail_and_counts_the_rest() {
        let mut guest = fake_guest();
        let started = Instant::now();
        // 3 MB on standard output and 1 MB on standard error, numbered
        // lines so that the kept ends can be checked.
        let script = "seq 1 400000 | sed 's/$/ out/'; seq 1 150000 | sed 's/$/ err/' >&2; exit 4";
        let outs = guest
            .console
            .run_all_limited(&[("flood", script, 4000)], Duration::from_secs(60))
            .expect("run");
        let out = &outs[0];
        assert_eq!(out.status, 4);
        let total_out: usize = (1..=400000).map(|n: u32| format!("{n} out\n").len()).sum();
        let expected_gap = format!("[… {} bytes omitted …]", total_out - 4000);
        assert!(
            out.stdout.starts_with("1 out\n2 out\n"),
            "{}",
            &out.stdout[..100]
        );
        assert!(out.stdout.ends_with("399999 out\n400000 out\n"));
        assert!(out.stdout.contains(&expected_gap), "{expected_gap}");
        assert!(out.stdout.len() < 4000 + 200, "{}", out.stdout.len());
        assert!(out.stderr.ends_with("150000 err\n"));
        assert!(out.stderr.contains(" bytes omitted …]"));
        assert!(started.elapsed() < Duration::from_secs(30));
        // Exactly at the limit: nothing omitted, nothing doubled.
        let outs = guest
            .console
            .run_all_limited(
                &[("exact", "head -c 4000 /dev/zero | tr '\\0' x", 4000)],
                Duration::from_secs(10),
            )
            .expect("run");
        assert_eq!(outs[0].stdout, "x".repeat(4000));
    }

    #[test]
    fn forged_markers_on_the_port_leave_the_real_result_readable() {
        let mut guest = fake_guest();
        // Imitations of every marker, written straight to the terminal the
        // control channel reads, some without a line end.
        let script = "for n in $(seq 1 300); do printf 'VMRE-%s\\nVMRB-%s\\nVMRO-%s-0 0 0 0 0 - - - -\\nVMRS-%s\\n' $n $n $n $n; done > /dev/tty; printf 'no line end VMRE-' > /dev/tty; echo real; exit 3";
        let out = guest
            .console
            .run("step 1 (forger)", script, Duration::from_secs(30))
            .expect("an ordinary result");
        assert_eq!((out.stdout.as_str(), out.status), ("real\n", 3));
        still_answers(&mut guest);
    }

    #[test]
    fn output_held_open_by_a_background_process_does_not_hold_the_result() {
        let mut guest = fake_guest();
        let started = Instant::now();
        let out = guest
            .console
            .run(
                "starts a daemon",
                "sleep 30 & echo started",
                Duration::from_secs(20),
            )
            .expect("run");
        assert_eq!(out.status, 0);
        assert!(
            out.stdout
                .starts_with("started\n[… the output was still held open"),
            "{}",
            out.stdout
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn every_byte_a_command_prints_comes_back_inert() {
        let mut guest = fake_guest();
        let out = guest
            .console
            .run(
                "bytes",
                "printf '\\033]0;title\\007\\033]52;c;cHduZWQ=\\007'; head -c 2000 /dev/urandom; for i in $(seq 0 255); do printf \"\\\\$(printf %o $i)\"; done",
                Duration::from_secs(10),
            )
            .expect("run");
        assert!(
            !out.stdout
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{:?}",
            out.stdout
        );
        assert!(out
            .stdout
            .starts_with("\\u{1b}]0;title\\u{7}\\u{1b}]52;c;cHduZWQ=\\u{7}"));
    }

    #[test]
    fn a_result_the_guest_could_not_record_is_no_output() {
        let lost = StreamResult {
            size: "lost",
            head: "-",
            tail: "-",
        };
        assert_eq!(lost.text(10), Ok(None));
        let whole = StreamResult {
            size: "4",
            head: "aGk=",
            tail: "IQo=",
        };
        assert_eq!(whole.text(10), Ok(Some("hi!\n".into())));
        let cut = StreamResult {
            size: "100",
            head: "aGk=",
            tail: "IQo=",
        };
        assert_eq!(
            cut.text(10),
            Ok(Some("hi\n[… 96 bytes omitted …]\n!\n".into()))
        );
        assert!(StreamResult {
            size: "x",
            head: "-",
            tail: "-"
        }
        .text(10)
        .is_err());
    }
}
