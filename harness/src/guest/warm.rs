//! Warm start: a guest booted once, saved, and resumed by every later trial.
//!
//! For each combination of disk image, kernel, QEMU version, accelerator and
//! machine options, the first trial that needs it boots the guest, waits
//! until its shell is ready and systemd has settled, stops it and saves its
//! state (QEMU's migration stream) beside the overlay the boot wrote. Both go
//! into the cache, read-only. A trial then resumes from that state on a fresh
//! overlay backed by the saved one, in seconds instead of a boot, and sets
//! the guest's clock, which stood still while the state sat in the cache.
//!
//! The key covers everything the saved state depends on, so changing any of
//! it (a recipe, the kernel, QEMU, a machine option, what "ready" means here)
//! leads to a new state being saved rather than a stale one being loaded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::media::cache::KeyHash;
use serde::{Deserialize, Serialize};

use crate::guest::console::{Console, ConsoleError};
use crate::guest::vm::{Vm, VmConfig, VmDisk, VmError};
use crate::host;
use crate::media::cache::{Cache, CacheError};

/// The cache kind saved states live under.
pub const KIND: &str = "warm";

/// Part of every key: bump it when what a saved guest is like changes (how
/// readiness is decided, what the control shell is set up to be).
const WARM_FORMAT: &str = "vmrepro-warm-1";

/// How long the state may take to save or to load.
const STATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A saved, booted guest in the cache.
#[derive(Debug, Clone)]
pub struct WarmState {
    /// The cache key (the entry's directory name).
    pub key: String,
    /// QEMU's migration stream: memory and device state.
    pub(crate) state: PathBuf,
    /// The overlay as the boot left it, backed by the base disk.
    pub(crate) disk: PathBuf,
    /// The extra disks' overlays as the boot left them, by name.
    pub(crate) disks: Vec<(String, PathBuf)>,
    /// What the saving boot recorded.
    pub meta: WarmMeta,
}

/// What the boot that saved a state recorded about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmMeta {
    /// The base disk the saved overlay is backed by.
    pub(crate) base_disk: PathBuf,
    /// The guest kernel's release.
    pub(crate) kernel_release: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub(crate) qemu: String,
    /// The machine options, described.
    pub(crate) machine: String,
    /// Seconds from QEMU start to a ready shell.
    pub boot_seconds: f64,
    /// Seconds until systemd had settled.
    pub(crate) settled_seconds: f64,
    /// What `systemctl is-system-running` said when the state was saved.
    pub(crate) system_state: String,
    /// Seconds the save took.
    pub save_seconds: f64,
    /// Size of the state file.
    pub state_bytes: u64,
}

/// Why a warm start could not be had.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Booting, saving or resuming the guest failed.
    #[error("{what}: {source}")]
    Vm {
        /// What was being done.
        what: String,
        /// The QEMU trouble.
        source: VmError,
    },
    /// The guest's shell did not answer.
    #[error("{what}: {source}")]
    Console {
        /// What was being done.
        what: String,
        /// The console trouble.
        source: Box<ConsoleError>,
    },
}

/// A resumed guest with a ready shell.
pub(crate) struct Resumed {
    /// The guest.
    pub(crate) vm: Vm,
    /// Its root shell, ready for commands.
    pub(crate) console: Console,
    /// Seconds from QEMU start to the ready shell, clock set.
    pub(crate) seconds: f64,
    /// What the clock's jump set off, run to its end before returning.
    pub(crate) caught_up: CaughtUp,
    /// Seconds spent waiting for it.
    pub(crate) catch_up_seconds: f64,
}

/// The cache key of the saved state for `config` (whose `keep_overlay` and
/// `resume_from` are ignored). `name` prefixes it for people reading the
/// cache, such as `bookworm-stock`.
pub(crate) fn key(name: &str, config: &VmConfig) -> String {
    let mut parts = vec![
        WARM_FORMAT.to_owned(),
        host::qemu_version(),
        config.accel.accel.name().to_owned(),
        config.machine.qemu_args(config.accel.accel).join(" "),
        config.kernel_cmdline(),
        config.kernel.release.clone(),
    ];
    // A network card is part of the saved machine; which host ports reach
    // it is not (they are chosen anew at each start). Only added when
    // there is one, so keys without a network stay as they were.
    if !config.forward_tcp.is_empty() {
        parts.push("network: virtio, restricted user-mode".to_owned());
    }
    // Extra disks are devices of the saved machine, and the guest has seen
    // what is on them; keys without any stay as they were.
    for disk in &config.disks {
        parts.push(format!("disk {} on virtio SCSI", disk.name));
    }
    // The files by path, size and modification time: an imported image or a
    // rebuilt kernel at the same path is a different guest.
    for file in std::iter::once(&config.base_disk)
        .chain(std::iter::once(&config.kernel.image))
        .chain(config.kernel.initrd.iter())
        .chain(config.disks.iter().map(|d| &d.base))
    {
        let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
        let stamp = std::fs::metadata(&path)
            .map(|m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("{} {modified}", m.len())
            })
            .unwrap_or_default();
        parts.push(format!("{} {stamp}", path.display()));
    }
    let hash = parts
        .iter()
        .fold(KeyHash::new(), |hash, part| hash.part(part))
        .finish();
    format!("{name}-{hash}")
}

/// The saved state for `config`, booting and saving it first if the cache
/// has none. `label` prefixes progress lines.
pub(crate) fn get_or_save(
    cache: &Cache,
    name: &str,
    config: &VmConfig,
    boot_timeout: Duration,
    label: &str,
) -> Result<WarmState, WarmError> {
    let key = key(name, config);
    let entry = cache.get_or_build(KIND, &key, label, |work| {
        save(work, config, boot_timeout, label)
    })?;
    Ok(WarmState {
        key,
        state: entry.dir.join(STATE_FILE),
        disk: entry.dir.join(DISK_FILE),
        disks: config
            .disks
            .iter()
            .map(|d| (d.name.clone(), entry.dir.join(extra_disk_file(&d.name))))
            .collect(),
        meta: entry.meta,
    })
}

const STATE_FILE: &str = "state.bin";
const DISK_FILE: &str = "disk.qcow2";

/// The saved overlay of an extra disk.
fn extra_disk_file(name: &str) -> String {
    format!("extra-disk-{name}.qcow2")
}

fn save(
    work: &Path,
    config: &VmConfig,
    boot_timeout: Duration,
    label: &str,
) -> Result<WarmMeta, WarmError> {
    config.events.note(
        label,
        &format!(
            "booting once to save a warm state (kernel {})",
            config.kernel.release
        ),
    );
    let vm_error = |what: &str| {
        let what = what.to_owned();
        move |source| WarmError::Vm { what, source }
    };
    let console_error = |what: &str| {
        let what = what.to_owned();
        move |source| WarmError::Console {
            what,
            source: Box::new(source),
        }
    };
    let boot = "booting the guest whose state is saved";
    let mut vm = Vm::start(&VmConfig {
        keep_overlay: Some(work.join(DISK_FILE)),
        resume_from: None,
        artifacts: work.to_owned(),
        disks: config
            .disks
            .iter()
            .map(|d| VmDisk {
                keep_overlay: Some(work.join(extra_disk_file(&d.name))),
                ..d.clone()
            })
            .collect(),
        ..config.clone()
    })
    .map_err(vm_error(boot))?;
    let mut console = Console::of_guest(vm.control().map_err(vm_error(boot))?, &vm)
        .map_err(console_error(boot))?;
    console
        .wait_ready("the first boot to reach a shell", boot_timeout)
        .map_err(console_error(boot))?;
    let boot_seconds = vm.uptime().as_secs_f64();
    let system_state = console
        .wait_settled("systemd to finish the first boot", boot_timeout)
        .map_err(console_error(boot))?;
    let settled_seconds = vm.uptime().as_secs_f64();
    drop(console);
    let saving = Instant::now();
    let state_bytes = vm
        .save_state(&work.join(STATE_FILE), STATE_TIMEOUT)
        .map_err(vm_error("saving the booted guest"))?;
    vm.quit().map_err(vm_error("stopping the saved guest"))?;
    let save_seconds = saving.elapsed().as_secs_f64();
    config.events.note(
        label,
        &format!(
            "warm state saved: shell after {boot_seconds:.1}s, system {system_state} after {settled_seconds:.1}s, {:.0} MiB saved in {save_seconds:.1}s",
            state_bytes as f64 / (1024.0 * 1024.0)
        ),
    );
    Ok(WarmMeta {
        base_disk: std::fs::canonicalize(&config.base_disk)
            .unwrap_or_else(|_| config.base_disk.clone()),
        kernel_release: config.kernel.release.clone(),
        qemu: host::qemu_version(),
        machine: config.machine.describe(),
        boot_seconds,
        settled_seconds,
        system_state,
        save_seconds,
        state_bytes,
    })
}

/// Starts a guest from a saved state on a throwaway overlay over its disk,
/// waits for its shell and sets its clock to the host's.
pub(crate) fn resume(
    state: &WarmState,
    config: &VmConfig,
    timeout: Duration,
) -> Result<Resumed, WarmError> {
    let what = "resuming the saved guest";
    let vm_error = |source| WarmError::Vm {
        what: what.to_owned(),
        source,
    };
    let console_error = |source| WarmError::Console {
        what: what.to_owned(),
        source: Box::new(source),
    };
    let mut vm = Vm::start(&VmConfig {
        base_disk: state.disk.clone(),
        keep_overlay: None,
        resume_from: Some(state.state.clone()),
        disks: config
            .disks
            .iter()
            .map(|d| VmDisk {
                base: state
                    .disks
                    .iter()
                    .find(|(name, _)| name == &d.name)
                    .map(|(_, saved)| saved.clone())
                    .unwrap_or_else(|| d.base.clone()),
                keep_overlay: None,
                ..d.clone()
            })
            .collect(),
        ..config.clone()
    })
    .map_err(vm_error)?;
    vm.resume(STATE_TIMEOUT).map_err(vm_error)?;
    let mut console =
        Console::of_guest(vm.control().map_err(vm_error)?, &vm).map_err(console_error)?;
    console
        .wait_resumed("the resumed guest's shell", timeout)
        .map_err(console_error)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let set = console
        .run(
            "setting the resumed guest's clock",
            &format!(
                "date -u -s @{}.{:09} >/dev/null",
                now.as_secs(),
                now.subsec_nanos()
            ),
            Duration::from_secs(30),
        )
        .map_err(console_error)?;
    if set.status != 0 {
        return Err(console_error(ConsoleError::Protocol {
            what: "setting the resumed guest's clock".into(),
            message: format!("date exited {}: {}", set.status, set.stderr.trim()),
        }));
    }
    let seconds = vm.uptime().as_secs_f64();
    let catching_up = Instant::now();
    let caught_up = catch_up(&mut console, CATCH_UP_LIMIT).map_err(console_error)?;
    Ok(Resumed {
        seconds,
        caught_up,
        catch_up_seconds: catching_up.elapsed().as_secs_f64(),
        vm,
        console,
    })
}

/// How long the jobs of timers that came due while a state was saved may
/// run before the flow starts anyway (and the report says which still ran).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// What the clock's jump forward set off in a resumed guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// Units whose jobs were queued after the clock was set (the services
    /// of timers that came due while the state was saved), in the order
    /// they were first seen.
    pub ran: Vec<String>,
    /// Those still queued when the wait ran out: the flow started with
    /// them running.
    pub still_running: Vec<String>,
}

impl CaughtUp {
    /// Reads `catch_up.sh`'s output.
    fn parse(stdout: &str) -> Self {
        let mut caught = CaughtUp::default();
        for line in stdout.lines() {
            match line.split_once(' ') {
                Some(("ran", unit)) => caught.ran.push(unit.to_owned()),
                Some(("still", unit)) => caught.still_running.push(unit.to_owned()),
                _ => {}
            }
        }
        caught
    }

    /// One line for reports, empty when nothing ran.
    pub fn describe(&self) -> String {
        if self.ran.is_empty() {
            return String::new();
        }
        let mut text = format!(
            "the clock moved forward and the timers due meanwhile ran first: {}",
            self.ran.join(", ")
        );
        if !self.still_running.is_empty() {
            text.push_str(&format!(
                " ({} still running when the flow started)",
                self.still_running.join(", ")
            ));
        }
        text
    }
}

/// Waits for the jobs the clock's jump queued (see `catch_up.sh`).
fn catch_up(console: &mut Console, limit: Duration) -> Result<CaughtUp, ConsoleError> {
    let script = include_str!("catch_up.sh").replace("@LIMIT@", &limit.as_secs().to_string());
    let out = console.run(
        "waiting for the timers due while the state was saved",
        &script,
        limit + Duration::from_secs(30),
    )?;
    Ok(CaughtUp::parse(&out.stdout))
}

/// How a trial's guest reached its first shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A real boot from power-on.
    Cold,
    /// Resumed from the saved state with this cache key.
    Warm {
        /// The saved state's cache key.
        key: String,
        /// What the clock's jump to now set off in the guest.
        caught_up: CaughtUp,
    },
    /// A real boot, because resuming the saved state failed.
    ColdAfterWarmFailed {
        /// Why resuming failed.
        reason: String,
    },
}

impl Start {
    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Start::Cold => "cold (booted from power-on)".into(),
            Start::Warm { key, caught_up } => {
                let caught = caught_up.describe();
                if caught.is_empty() {
                    format!("warm (resumed saved state {key})")
                } else {
                    format!("warm (resumed saved state {key}; {caught})")
                }
            }
            Start::ColdAfterWarmFailed { reason } => {
                format!("cold, because resuming the saved state failed: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_clock_set_off_is_read_and_told() {
        let none = CaughtUp::parse("");
        assert_eq!(none, CaughtUp::default());
        assert_eq!(none.describe(), "");
        let caught = CaughtUp::parse(
            "still man-db.service\nran dpkg-db-backup.service\nran man-db.service\nnoise\n",
        );
        assert_eq!(caught.ran, ["dpkg-db-backup.service", "man-db.service"]);
        assert_eq!(caught.still_running, ["man-db.service"]);
        assert_eq!(
            caught.describe(),
            "the clock moved forward and the timers due meanwhile ran first: \
dpkg-db-backup.service, man-db.service (man-db.service still running when the flow started)"
        );
        let warm = Start::Warm {
            key: "k".into(),
            caught_up: caught,
        };
        assert!(warm
            .describe()
            .starts_with("warm (resumed saved state k; the clock"));
    }

    #[test]
    fn the_catch_up_script_gets_its_limit() {
        let script = include_str!("catch_up.sh").replace("@LIMIT@", "120");
        assert!(script.contains("limit=120\n"), "{script}");
        assert!(!script.contains('@'));
    }

    #[test]
    fn the_key_changes_with_whatever_the_saved_state_depends_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = VmConfig::for_tests(dir.path());
        let key = key("bookworm-linode", &base);
        assert!(key.starts_with("bookworm-linode-"), "{key}");

        // Per-run settings do not matter.
        let mut same = base.clone();
        same.artifacts = dir.path().join("elsewhere");
        same.keep_overlay = Some(dir.path().join("o.qcow2"));
        assert_eq!(key, super::key("bookworm-linode", &same));
        // Which ports are forwarded is chosen per start, not saved.
        let (mut one, mut other) = (base.clone(), base.clone());
        one.forward_tcp = vec![8080];
        other.forward_tcp = vec![22, 8080];
        assert_eq!(super::key("x", &one), super::key("x", &other));

        let mut memory = base.clone();
        memory.machine.memory_mib = 512;
        let mut cmdline = base.clone();
        cmdline.machine.cmdline = vec!["quiet".into()];
        let mut machine = base.clone();
        machine.machine.machine = "q35".into();
        let mut accel = base.clone();
        accel.accel.accel = crate::guest::vm::Accel::Kvm;
        let mut kernel = base.clone();
        kernel.kernel.release = "6.1.0-other".into();
        let mut network = base.clone();
        network.forward_tcp = vec![8080];
        let mut disk = base.clone();
        disk.disks = vec![VmDisk {
            name: "data".into(),
            base: base.base_disk.clone(),
            keep_overlay: None,
        }];
        let mut other_disk = disk.clone();
        other_disk.disks[0].name = "other".into();
        assert_ne!(super::key("x", &disk), super::key("x", &other_disk));
        for changed in [
            &memory, &cmdline, &machine, &accel, &kernel, &network, &disk,
        ] {
            assert_ne!(key, super::key("bookworm-linode", changed));
        }

        // A disk rewritten in place (a re-imported image) is a new guest.
        std::fs::write(&base.base_disk, b"a different, longer disk").expect("writable");
        assert_ne!(key, super::key("bookworm-linode", &base));
    }
}
