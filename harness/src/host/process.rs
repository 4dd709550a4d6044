//! Supervision of the host processes the harness starts: image builders,
//! `qemu-img` and QEMU itself.
//!
//! Two guarantees live here. Every long command runs under a timeout and
//! reports progress while it runs, so a user never watches a silent terminal.
//! And nothing outlives the harness: children are started in their own process
//! group, registered with [`Supervisor`], and killed together with their
//! throwaway directories when the harness gets SIGINT, SIGTERM or SIGHUP. QEMU
//! additionally gets `PR_SET_PDEATHSIG`, so even a SIGKILLed harness takes its
//! guests with it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::host::progress::Events;

/// The process's one tokio runtime: it runs host commands with their
/// timeouts, the signal handler, and the set of trials. Synchronous code
/// (a trial's own thread) enters it with [`block_on`].
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmrepro-runtime")
            .enable_all()
            .build()
            // Without threads or an epoll instance nothing else could run.
            .unwrap_or_else(|e| panic!("cannot start the tokio runtime: {e}"))
    })
}

/// Runs a future to completion on the runtime, from synchronous code that
/// is not itself a task of it (the main thread, a test thread, a trial's
/// blocking thread).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().handle().block_on(future)
}

/// How often a long command reports that it is still running.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A failure to run a host command.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started at all.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The command ran and exited unsuccessfully.
    #[error("{what} failed ({status}); full log: {log}\n--- last lines ---\n{tail}")]
    Failed {
        /// What the command was doing.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Where its whole output is.
        log: PathBuf,
        /// The last lines of its output.
        tail: String,
    },
    /// The command did not finish in time and was killed.
    #[error("{what} did not finish within {}s and was killed; full log: {log}\n--- last lines ---\n{tail}", .after.as_secs())]
    TimedOut {
        /// What the command was doing.
        what: String,
        /// The time limit.
        after: Duration,
        /// Where its whole output is.
        log: PathBuf,
        /// The last lines of its output.
        tail: String,
    },
    /// Reading the command's output or writing its log failed.
    #[error("{what}: {source}")]
    Io {
        /// What the command was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Runs `command` to completion with a time limit, writing its combined output
/// to `log` and printing a progress line every few seconds.
///
/// The command runs in its own process group; on timeout the whole group is
/// killed, so helpers it started (apt, dpkg) go too.
pub(crate) fn run_logged(
    events: &Events,
    what: &str,
    command: std::process::Command,
    log: &Path,
    timeout: Duration,
) -> Result<(), ProcessError> {
    block_on(run_logged_async(events, what, command, log, timeout))
}

async fn run_logged_async(
    events: &Events,
    what: &str,
    command: std::process::Command,
    log: &Path,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let io_err = |source| ProcessError::Io {
        what: what.to_owned(),
        source,
    };
    let program = command.get_program().to_string_lossy().into_owned();
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })?;
    let pgid = child.id().map(|id| id as i32);
    let _registration = Supervisor::global().register(pgid, None);

    let mut log_file = std::fs::File::create(log).map_err(io_err)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let started = Instant::now();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut last_line = String::new();
    let mut tail: Vec<String> = Vec::new();
    let mut output_open = true;
    let status = loop {
        tokio::select! {
            line = rx.recv(), if output_open => match line {
                Some(line) => {
                    writeln!(log_file, "{line}").map_err(io_err)?;
                    if !line.trim().is_empty() {
                        last_line = line.clone();
                    }
                    tail.push(line);
                    if tail.len() > 40 {
                        tail.remove(0);
                    }
                }
                None => output_open = false,
            },
            status = child.wait(), if !output_open => break status.map_err(io_err)?,
            _ = heartbeat.tick() => {
                events.note(what, &format!(
                    "still running ({}s){}",
                    started.elapsed().as_secs(),
                    if last_line.is_empty() { String::new() } else { format!(": {}", crate::text::ellipsize(&last_line, 100)) }
                ));
            }
            _ = &mut deadline => {
                if let Some(pgid) = pgid {
                    kill_group(pgid);
                }
                let _ = child.wait().await;
                return Err(ProcessError::TimedOut {
                    what: what.to_owned(),
                    after: timeout,
                    log: log.to_owned(),
                    tail: tail.join("\n"),
                });
            }
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(ProcessError::Failed {
            what: what.to_owned(),
            status,
            log: log.to_owned(),
            tail: tail.join("\n"),
        })
    }
}

/// Runs a short command and returns its standard output; for version queries
/// and the like.
pub(crate) fn output(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, ProcessError> {
    block_on(async {
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let what = format!("{program} {}", args.join(" "));
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(ProcessError::TimedOut {
                what,
                after: timeout,
                log: PathBuf::new(),
                tail: String::new(),
            }),
            Ok(Err(source)) => Err(ProcessError::Io { what, source }),
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(ProcessError::Failed {
                what,
                status: out.status,
                log: PathBuf::new(),
                tail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    })
}

fn kill_group(pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Knows every child process group and throwaway directory the harness has
/// open, and cleans them all up when the harness is told to stop.
pub(crate) struct Supervisor {
    entries: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
    signals_installed: AtomicBool,
}

/// What to clean up for one registration.
struct Entry {
    process_group: Option<i32>,
    path: Option<PathBuf>,
}

/// A registered child or directory; dropping it unregisters.
#[must_use = "dropping a registration unregisters it at once"]
pub(crate) struct Registration {
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut entries) = Supervisor::global().entries.lock() {
            entries.remove(&self.key);
        }
    }
}

impl Supervisor {
    /// The process-wide supervisor.
    pub(crate) fn global() -> &'static Supervisor {
        static GLOBAL: OnceLock<Supervisor> = OnceLock::new();
        GLOBAL.get_or_init(|| Supervisor {
            entries: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            signals_installed: AtomicBool::new(false),
        })
    }

    /// Records a process group to kill and/or a directory to remove if the
    /// harness is interrupted before the registration is dropped.
    pub(crate) fn register(
        &self,
        process_group: Option<i32>,
        path: Option<PathBuf>,
    ) -> Registration {
        self.install_signal_handlers();
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                key,
                Entry {
                    process_group,
                    path,
                },
            );
        }
        Registration { key }
    }

    /// Kills every registered process group and removes every registered
    /// directory.
    pub(crate) fn cleanup_all(&self) {
        let entries = match self.entries.lock() {
            Ok(mut entries) => std::mem::take(&mut *entries),
            Err(_) => return,
        };
        for pgid in entries.values().filter_map(|e| e.process_group) {
            kill_group(pgid);
        }
        for path in entries.values().filter_map(|e| e.path.as_ref()) {
            let _ = std::fs::remove_dir_all(path);
        }
    }

    /// Installs handlers for SIGINT, SIGTERM and SIGHUP that clean up and exit
    /// with 128 + the signal number. Idempotent.
    fn install_signal_handlers(&self) {
        if self.signals_installed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Registered here, on the caller's thread, so that a signal that
        // comes right after this returns is already caught.
        let _entered = runtime().enter();
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            self.signals_installed.store(false, Ordering::SeqCst);
            return;
        };
        runtime().spawn(async move {
            let number = tokio::select! {
                _ = int.recv() => nix::sys::signal::Signal::SIGINT,
                _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
                _ = hup.recv() => nix::sys::signal::Signal::SIGHUP,
            };
            let _ = writeln!(
                std::io::stderr(),
                "\nvmrepro: interrupted; stopping guests and removing temporary files"
            );
            Supervisor::global().cleanup_all();
            std::process::exit(128 + number as i32);
        });
    }
}
