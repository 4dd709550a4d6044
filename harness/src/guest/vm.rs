//! One QEMU guest: a throwaway overlay over a cached base disk, a kernel booted
//! directly, the kernel console in a log file and a control serial port on a
//! unix socket.
//!
//! A guest can also start from a state saved by `Vm::save_state` (QEMU's
//! migration stream written to a file) instead of from power-on; QEMU's
//! machine protocol (QMP) on a second socket drives saving and resuming.
//!
//! QEMU never outlives the harness: it is killed when the `Vm` is dropped
//! (normal end, error or panic), by the supervisor (`host::process`) on SIGINT/SIGTERM/SIGHUP,
//! and by the kernel (`PR_SET_PDEATHSIG`) if the harness dies any other way.

use std::collections::BTreeMap;
use std::fs::{self, File};

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use tokio::process::Child;

use crate::guest::qmp::{connect, ConnectError, MonitorError, Qmp};
use crate::host::process::{self, Registration, Supervisor};
use crate::host::progress::Events;
use crate::media::kernel::Kernel;

/// How many console lines an error message carries.
pub(crate) const TAIL_LINES: usize = 30;

/// The CPU accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation; slower, works everywhere.
    Tcg,
}

impl Accel {
    /// The name QEMU and `VMREPRO_ACCEL` use.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator chosen for this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen, for logs and reports.
    pub reason: String,
}

/// The accelerator asked for: `auto`, `kvm` or `tcg`, everywhere (the
/// `--accel` flag, `VMREPRO_ACCEL`, the workflows' `accel` input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccelWanted {
    /// KVM where it can run guests, else TCG.
    #[default]
    Auto,
    /// KVM, or an error: for machines where a silent fall back to TCG
    /// would hide a broken runner (CI).
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

impl AccelWanted {
    /// Reads `auto`, `kvm` or `tcg`, in any case.
    pub fn parse(text: &str) -> Option<AccelWanted> {
        match text.trim().to_lowercase().as_str() {
            "auto" => Some(AccelWanted::Auto),
            "kvm" => Some(AccelWanted::Kvm),
            "tcg" => Some(AccelWanted::Tcg),
            _ => None,
        }
    }
}

/// Chooses the accelerator: the one asked for, or with `auto` KVM only when
/// `/dev/kvm` can be opened *and* the CPU advertises VMX or SVM. A present
/// `/dev/kvm` alone is not enough: on some hosts it exists and guests hang.
pub fn choose_accel(wanted: AccelWanted) -> Result<AccelChoice, VmError> {
    match wanted {
        AccelWanted::Kvm => match kvm_usable() {
            Ok(()) => Ok(AccelChoice {
                accel: Accel::Kvm,
                reason: "KVM asked for, and /dev/kvm is usable with VMX/SVM".into(),
            }),
            Err(why) => Err(VmError::KvmRequired(why)),
        },
        AccelWanted::Tcg => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG asked for".into(),
        }),
        AccelWanted::Auto => Ok(match kvm_usable() {
            Ok(()) => AccelChoice {
                accel: Accel::Kvm,
                reason: "/dev/kvm is usable and the CPU has VMX/SVM".into(),
            },
            Err(why) => AccelChoice {
                accel: Accel::Tcg,
                reason: format!("{why}; using TCG"),
            },
        }),
    }
}

/// Whether KVM can run guests here. Opening `/dev/kvm` is not enough: where
/// the CPU flags show neither VMX nor SVM (nested virtualisation turned
/// off), the device opens and guests hang.
fn kvm_usable() -> Result<(), String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let device = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match (device, virt_flag) {
        (Ok(_), true) => Ok(()),
        (Ok(_), false) => Err(
            "/dev/kvm exists but the CPU flags show no VMX/SVM (nested KVM here hangs guests)"
                .into(),
        ),
        (Err(e), _) => Err(format!("/dev/kvm is not usable ({e})")),
    }
}

/// The firmware that runs before the kernel, which QEMU loads directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default BIOS.
    SeaBios,
    /// qboot, a minimal BIOS that only knows how to start a kernel given
    /// with `-kernel`; it skips SeaBIOS's device scan.
    Qboot,
}

impl Firmware {
    /// The firmware's name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Firmware::SeaBios => "SeaBIOS",
            Firmware::Qboot => "qboot",
        }
    }
}

/// The virtual hardware and the guest kernel's extra command line: what,
/// besides the disk and the kernel, decides how a guest boots and whether a
/// saved state fits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineOptions {
    /// QEMU machine type (`pc`, `q35`, `microvm,...`).
    pub machine: String,
    /// The firmware.
    pub firmware: Firmware,
    /// CPU model; `None` is QEMU's default under TCG and `host` under KVM.
    pub cpu: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Parameters appended to the kernel command line.
    pub cmdline: Vec<String>,
}

impl Default for MachineOptions {
    /// QEMU's plain `pc` machine: none of the other settings the boot-path
    /// benchmark tries (`cargo bench -- boot-path`) was faster with both
    /// kernels beyond the noise of a TCG host.
    fn default() -> MachineOptions {
        MachineOptions {
            machine: "pc".into(),
            firmware: Firmware::SeaBios,
            cpu: None,
            memory_mib: 1024,
            cmdline: Vec::new(),
        }
    }
}

impl MachineOptions {
    /// QEMU arguments for these options under `accel`.
    pub(crate) fn qemu_args(&self, accel: Accel) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-machine".into(),
            self.machine.clone(),
            "-accel".into(),
            accel.name().into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            self.memory_mib.to_string(),
        ];
        match (&self.cpu, accel) {
            (Some(cpu), _) => args.extend(["-cpu".into(), cpu.clone()]),
            (None, Accel::Kvm) => args.extend(["-cpu".into(), "host".into()]),
            (None, Accel::Tcg) => {}
        }
        if self.firmware == Firmware::Qboot {
            args.extend(["-bios".into(), "qboot.rom".into()]);
        }
        args
    }

    /// One line for reports and cache keys, such as
    /// `pc, SeaBIOS, default CPU, 1024 MiB`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{}, {}, {} CPU, {} MiB",
            self.machine,
            self.firmware.name(),
            self.cpu.as_deref().unwrap_or("default"),
            self.memory_mib
        );
        if !self.cmdline.is_empty() {
            text.push_str(&format!(", cmdline +{}", self.cmdline.join(" ")));
        }
        text
    }
}

/// What a guest boots.
#[derive(Debug, Clone)]
pub(crate) struct VmConfig {
    /// The disk the guest's overlay is backed by; opened read-only, never
    /// written.
    pub(crate) base_disk: PathBuf,
    /// The kernel booted directly.
    pub(crate) kernel: Kernel,
    /// The virtual hardware.
    pub(crate) machine: MachineOptions,
    /// The accelerator.
    pub(crate) accel: AccelChoice,
    /// Directory for the run's artifacts (console log, QEMU's own output).
    pub(crate) artifacts: PathBuf,
    /// Where to create the guest's overlay so that it outlives the guest;
    /// `None` for a throwaway overlay removed with the guest.
    pub(crate) keep_overlay: Option<PathBuf>,
    /// A state saved by [`Vm::save_state`] to resume instead of booting;
    /// `base_disk` must then be the disk saved with it.
    pub(crate) resume_from: Option<PathBuf>,
    /// Where starting, saving and booting this guest report progress.
    pub(crate) events: Events,
    /// Guest TCP ports the harness reaches from the host. When there are
    /// any, the guest gets a network card whose only peer is QEMU's
    /// user-mode network with `restrict=on` (it can reach nothing, and
    /// nothing reaches it but these forwards); otherwise no network at all.
    pub(crate) forward_tcp: Vec<u16>,
    /// Extra disks, in the order the scenario declares them.
    pub(crate) disks: Vec<VmDisk>,
}

/// An extra disk: a throwaway overlay on a read-only base, attached as a
/// SCSI disk on a virtio SCSI controller, with the disk's name as its
/// serial number.
#[derive(Debug, Clone)]
pub(crate) struct VmDisk {
    /// The name a scenario gives it.
    pub(crate) name: String,
    /// The disk its overlay is backed by; never written.
    pub(crate) base: PathBuf,
    /// Where to create its overlay so that it outlives the guest, as
    /// [`VmConfig::keep_overlay`] for the root disk.
    pub(crate) keep_overlay: Option<PathBuf>,
}

impl VmDisk {
    /// The disk's throwaway overlay in `workdir`, unless it is kept.
    fn overlay(&self, workdir: &Path) -> PathBuf {
        self.keep_overlay
            .clone()
            .unwrap_or_else(|| workdir.join(format!("disk-{}.qcow2", self.name)))
    }

    /// The QEMU device id, which `device_del` and the `DEVICE_DELETED`
    /// event name.
    pub(crate) fn device_id(name: &str) -> String {
        format!("disk-{name}")
    }
}

impl VmConfig {
    /// For unit tests: a configuration whose disk and kernel are files of
    /// one byte in `dir`, its artifacts in `dir/artifacts`.
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &Path) -> VmConfig {
        let disk = dir.join("rootfs.qcow2");
        let image = dir.join("vmlinuz");
        for file in [&disk, &image] {
            if !file.exists() {
                std::fs::write(file, b"x").expect("writable temp dir");
            }
        }
        VmConfig {
            base_disk: disk,
            kernel: crate::media::kernel::Kernel {
                flavour: crate::project::KernelFlavour::named("linode"),
                image,
                initrd: None,
                release: "6.1.0-test".into(),
            },
            machine: MachineOptions::default(),
            accel: AccelChoice {
                accel: Accel::Tcg,
                reason: "test".into(),
            },
            artifacts: dir.join("artifacts"),
            keep_overlay: None,
            resume_from: None,
            events: crate::host::progress::Events::silent(),
            forward_tcp: Vec::new(),
            disks: Vec::new(),
        }
    }

    /// The kernel command line.
    pub(crate) fn kernel_cmdline(&self) -> String {
        let mut cmdline = vec!["console=ttyS0", "root=/dev/vda", "rw"];
        if self.kernel.initrd.is_none() {
            cmdline.push("rootfstype=ext4");
        }
        cmdline.extend(self.machine.cmdline.iter().map(String::as_str));
        cmdline.join(" ")
    }
}

/// The guest's address on QEMU's user-mode network (its default for the
/// first guest, and where host forwards go when no address is given).
pub(crate) const GUEST_ADDRESS: &str = "10.0.2.15";

/// A host port on 127.0.0.1 for each guest port, free when asked. QEMU
/// binds it a moment later; another process taking it in between makes
/// QEMU fail to start with a message naming the forward.
fn free_ports(guest_ports: &[u16]) -> std::io::Result<BTreeMap<u16, u16>> {
    // All listeners stay open until every port is chosen, so no two guest
    // ports get the same host port.
    let listeners = guest_ports
        .iter()
        .map(|&port| Ok((port, std::net::TcpListener::bind(("127.0.0.1", 0))?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .into_iter()
        .map(|(port, listener)| Ok((port, listener.local_addr()?.port())))
        .collect()
}

/// QEMU's network arguments: none at all, or one virtio card on a
/// restricted user-mode network with the forwards. `restrict=on` isolates
/// the guest ("it will not be able to contact the host and no guest IP
/// packets will be routed over the host to the outside"); it "does not
/// affect any explicitly set forwarding rules" (QEMU's `-netdev user`
/// documentation).
fn network_args(machine: &MachineOptions, forwarded: &BTreeMap<u16, u16>) -> Vec<String> {
    if forwarded.is_empty() {
        return vec!["-nic".into(), "none".into()];
    }
    let mut netdev = "user,id=net0,restrict=on".to_owned();
    for (guest, host) in forwarded {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    // microvm has no PCI bus unless asked for one; its virtio devices sit
    // on MMIO.
    let device = if machine.machine.starts_with("microvm") {
        "virtio-net-device,netdev=net0"
    } else {
        "virtio-net-pci,netdev=net0"
    };
    vec!["-netdev".into(), netdev, "-device".into(), device.into()]
}

/// Why a guest could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM was asked for, but cannot run guests here.
    #[error("KVM was asked for (--accel kvm, VMREPRO_ACCEL=kvm), but cannot run guests here: {0}")]
    KvmRequired(String),
    /// Creating the overlay failed.
    #[error("creating the overlay: {0}")]
    Overlay(#[from] process::ProcessError),
    /// QEMU could not be started.
    #[error("starting QEMU: {0}")]
    Spawn(std::io::Error),
    /// QEMU exited while it should have been running.
    #[error("QEMU exited ({status}); its output:\n{output}\n--- console tail ---\n{tail}")]
    Exited {
        /// Exit status.
        status: String,
        /// What QEMU printed.
        output: String,
        /// The last console lines.
        tail: String,
    },
    /// The control socket did not come up.
    #[error("QEMU's control socket {path} did not come up: {source}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// The last connect error.
        source: std::io::Error,
    },
    /// QEMU's machine protocol refused a command or did not answer.
    #[error("QEMU monitor, {command}: {message}")]
    Monitor {
        /// The QMP command.
        command: String,
        /// What went wrong.
        message: String,
    },
    /// Saving or resuming a guest's state failed or took too long.
    #[error("{what}: {message}\n--- QEMU's output ---\n{output}")]
    State {
        /// Saving or resuming.
        what: String,
        /// What went wrong.
        message: String,
        /// What QEMU printed.
        output: String,
    },
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A running guest. Dropping it kills QEMU and removes the overlay.
pub(crate) struct Vm {
    child: Child,
    workdir: tempfile::TempDir,
    control: UnixStream,
    qmp: Qmp,
    console_log: PathBuf,
    /// A connection to the kernel console's socket, made the first time
    /// something is typed there and drained from then on.
    console_input: Option<UnixStream>,
    qemu_log: PathBuf,
    started: Instant,
    /// How this QEMU was started, for reports: the command line, the
    /// kernel command line and the machine options.
    setup: VmSetup,
    /// Guest TCP port → the host port on 127.0.0.1 that reaches it.
    forwarded: BTreeMap<u16, u16>,
    _registration: Registration,
}

/// How a guest was started, so that it can be started again by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VmSetup {
    /// QEMU's command line, each word quoted for a POSIX shell where needed.
    pub(crate) qemu_command: String,
    /// The kernel command line.
    pub(crate) kernel_cmdline: String,
    /// The machine options, in words.
    pub(crate) machine: String,
}

impl Vm {
    /// Creates the overlay (throwaway unless [`VmConfig::keep_overlay`]),
    /// starts QEMU and connects the control port and the monitor.
    pub(crate) fn start(config: &VmConfig) -> Result<Vm, VmError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io { path, source }
        };
        fs::create_dir_all(&config.artifacts).map_err(io(&config.artifacts))?;
        // Sockets live in a short /tmp path: unix socket paths are limited to
        // 108 bytes, which a deep artifacts directory could exceed.
        sweep_stale_workdirs();
        let workdir = tempfile::Builder::new()
            .prefix(WORKDIR_PREFIX)
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let owner = workdir.path().join(OWNER_FILE);
        fs::write(&owner, std::process::id().to_string()).map_err(io(&owner))?;
        let registration = Supervisor::global().register(None, Some(workdir.path().to_owned()));
        let overlay = config
            .keep_overlay
            .clone()
            .unwrap_or_else(|| workdir.path().join("overlay.qcow2"));
        let base = fs::canonicalize(&config.base_disk).map_err(io(&config.base_disk))?;
        let mut create = Command::new("qemu-img");
        create
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay);
        process::run_logged(
            &config.events,
            "creating the overlay",
            create,
            &workdir.path().join("qemu-img.log"),
            Duration::from_secs(60),
        )?;

        for disk in &config.disks {
            let base = fs::canonicalize(&disk.base).map_err(io(&disk.base))?;
            let mut create = Command::new("qemu-img");
            create
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&base)
                .arg(disk.overlay(workdir.path()));
            process::run_logged(
                &config.events,
                &format!("creating the overlay of disk {}", disk.name),
                create,
                &workdir.path().join("qemu-img.log"),
                Duration::from_secs(60),
            )?;
        }

        let forwarded = free_ports(&config.forward_tcp).map_err(io(Path::new("127.0.0.1")))?;
        let control_path = workdir.path().join(CONTROL_SOCKET);
        let qmp_path = workdir.path().join(QMP_SOCKET);
        let console_log = config.artifacts.join(CONSOLE_LOG);
        let qemu_log = config.artifacts.join(QEMU_LOG);
        let mut qemu = qemu_command(config, &overlay, workdir.path(), &forwarded);
        let log = File::create(&qemu_log).map_err(io(&qemu_log))?;
        let log2 = log.try_clone().map_err(io(&qemu_log))?;
        qemu.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        crate::host::sys::die_with_parent(&mut qemu);
        let setup = VmSetup {
            qemu_command: std::iter::once(qemu.get_program())
                .chain(qemu.get_args())
                .map(|word| shell_word(&word.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" "),
            kernel_cmdline: config.kernel_cmdline(),
            machine: config.machine.describe(),
        };
        let command_file = config.artifacts.join("qemu-command.txt");
        fs::write(&command_file, format!("{}\n", setup.qemu_command)).map_err(io(&command_file))?;
        // A tokio child, killed if it is dropped: no path out of here or
        // out of the trial leaves a QEMU running.
        let child = {
            let _runtime = process::runtime().enter();
            tokio::process::Command::from(qemu)
                .kill_on_drop(true)
                .spawn()
                .map_err(VmError::Spawn)?
        };
        let registration_qemu = Supervisor::global().register(
            child.id().map(|pid| pid as i32),
            Some(workdir.path().to_owned()),
        );
        drop(registration);

        let mut vm_child = child;
        let connected = connect(&control_path, &mut vm_child).and_then(|control| {
            let qmp = Qmp::connect(&qmp_path, &mut vm_child)?;
            Ok((control, qmp))
        });
        let (control, qmp) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                let _ = vm_child.start_kill();
                let status = process::block_on(vm_child.wait())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(match e {
                    ConnectError::Exited => VmError::Exited {
                        status,
                        output: fs::read_to_string(&qemu_log).unwrap_or_default(),
                        tail: tail_of(&console_log, TAIL_LINES),
                    },
                    ConnectError::Io(path, source) => VmError::Control { path, source },
                });
            }
        };
        Ok(Vm {
            forwarded,
            child: vm_child,
            workdir,
            control,
            qmp,
            console_log,
            console_input: None,
            qemu_log,
            started: Instant::now(),
            setup,
            _registration: registration_qemu,
        })
    }

    /// How this guest was started.
    pub(crate) fn forwarded(&self) -> &BTreeMap<u16, u16> {
        &self.forwarded
    }

    /// QEMU's table of the user-mode network's connections (`info usernet`,
    /// which QMP has only through the human monitor in QEMU 10).
    pub(crate) fn usernet(&mut self) -> Result<String, VmError> {
        let answer = self.qmp.execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": "info usernet" })),
        )?;
        Ok(answer.as_str().unwrap_or_default().to_owned())
    }

    /// QEMU's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Where the guest's first processor is and whether it moves, for a
    /// guest whose console went quiet: QEMU's run state and two looks at
    /// the registers a moment apart (`info registers`: the Linux-style
    /// dump of target/i386/cpu-dump.c, the same from QEMU 7.2 to 10).
    pub(crate) fn processor(&mut self) -> Result<String, VmError> {
        let status = self.qmp.execute("query-status", None)?;
        let status = status["status"].as_str().unwrap_or("unknown").to_owned();
        let mut registers = || -> Result<String, VmError> {
            let answer = self.qmp.execute(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": "info registers" })),
            )?;
            Ok(answer.as_str().unwrap_or_default().to_owned())
        };
        let first = registers()?;
        std::thread::sleep(Duration::from_millis(300));
        let second = registers()?;
        Ok(describe_processor(&status, &first, &second))
    }

    /// How this QEMU was started.
    pub(crate) fn setup(&self) -> &VmSetup {
        &self.setup
    }

    /// Waits until the state given as [`VmConfig::resume_from`] is loaded,
    /// then lets the guest run.
    pub(crate) fn resume(&mut self, timeout: Duration) -> Result<(), VmError> {
        self.poll("loading the saved state", timeout, |vm| {
            let status = vm.qmp.execute("query-status", None)?;
            match status["status"].as_str().unwrap_or("") {
                "inmigrate" | "restore-vm" => Ok(None),
                "running" => Ok(Some(())),
                "paused" | "postmigrate" | "prelaunch" => {
                    vm.qmp.execute("cont", None)?;
                    Ok(Some(()))
                }
                other => Err(PollError::Failed(format!("QEMU reports {other:?}"))),
            }
        })
    }

    /// Stops the guest and writes its whole state (memory and devices, not
    /// the disk) to `file`; returns the file's size. The guest stays stopped
    /// and its disk is flushed, so the overlay matches the state; what
    /// remains to do with this QEMU is [`Vm::quit`].
    pub(crate) fn save_state(&mut self, file: &Path, timeout: Duration) -> Result<u64, VmError> {
        let what = "saving the guest's state";
        self.qmp.execute("stop", None)?;
        // QEMU caps migration at 128 MiB/s by default; a file takes any rate.
        self.qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 64u64 << 30 })),
        )?;
        let uri = format!(
            "exec:cat > {}",
            crate::text::shell_quote(&file.to_string_lossy())
        );
        self.qmp
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))?;
        self.poll(what, timeout, |vm| {
            let info = vm.qmp.execute("query-migrate", None)?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => Ok(Some(())),
                "failed" | "cancelled" => Err(PollError::Failed(
                    info["error-desc"]
                        .as_str()
                        .unwrap_or("no reason given")
                        .to_owned(),
                )),
                _ => Ok(None),
            }
        })?;
        fs::metadata(file)
            .map(|m| m.len())
            .map_err(|source| VmError::Io {
                path: file.to_owned(),
                source,
            })
    }

    /// Pulls an extra disk out of the running guest: QEMU removes the SCSI
    /// device at once and tells the guest's virtio SCSI driver through the
    /// controller's event queue (no ACPI involved), then confirms with a
    /// `DEVICE_DELETED` event. Waits up to `timeout` for that event.
    pub(crate) fn detach(&mut self, name: &str, timeout: Duration) -> Result<(), VmError> {
        let id = VmDisk::device_id(name);
        self.qmp
            .execute("device_del", Some(serde_json::json!({ "id": id })))?;
        self.qmp
            .wait_event(
                "DEVICE_DELETED",
                |data| data["device"].as_str() == Some(id.as_str()),
                timeout,
            )
            .map(|_| ())
            .map_err(VmError::from)
    }

    /// Asks QEMU to exit cleanly (closing the disk), and waits for it.
    pub(crate) fn quit(mut self) -> Result<(), VmError> {
        self.qmp.execute("quit", None)?;
        // The timer is made inside the runtime, as tokio's timers must be.
        let exit = process::block_on(async {
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
        });
        match exit {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(VmError::Io {
                path: self.qemu_log.clone(),
                source,
            }),
            Err(_) => Err(self.state_error("quitting", "QEMU did not exit in 30s".into())),
        }
    }

    /// Asks `step` every 50 ms until it has an answer (`Some`), fails (`Err`
    /// with the reason, or a monitor error) or `timeout` passes; QEMU exiting
    /// meanwhile is an error too.
    fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut step: impl FnMut(&mut Vm) -> Result<Option<T>, PollError>,
    ) -> Result<T, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            match step(self) {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                Err(PollError::Vm(e)) => return Err(e),
                Err(PollError::Failed(why)) => return Err(self.state_error(what, why)),
            }
            if Instant::now() > deadline {
                return Err(
                    self.state_error(what, format!("not done after {}s", timeout.as_secs()))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state_error(&self, what: &str, message: String) -> VmError {
        VmError::State {
            what: what.to_owned(),
            message,
            output: fs::read_to_string(&self.qemu_log).unwrap_or_default(),
        }
    }

    /// A new handle on the control serial port.
    pub(crate) fn control(&self) -> Result<UnixStream, VmError> {
        self.control.try_clone().map_err(|source| VmError::Io {
            path: self.workdir.path().join(CONTROL_SOCKET),
            source,
        })
    }

    /// The kernel console log (ttyS0).
    pub(crate) fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// Types `text` on the kernel console (ttyS0), as a person at the
    /// machine's console would. The first call connects to the console's
    /// socket; a thread then reads and drops what comes back on it (the
    /// log has it all), so that the guest's console never waits for a
    /// reader.
    pub(crate) fn type_on_console(&mut self, text: &str) -> Result<(), VmError> {
        use std::io::{Read as _, Write as _};
        let path = self.workdir.path().join(CONSOLE_SOCKET);
        let io = |source| VmError::Io {
            path: path.clone(),
            source,
        };
        if self.console_input.is_none() {
            let stream = UnixStream::connect(&path).map_err(io)?;
            let mut drain = stream.try_clone().map_err(io)?;
            std::thread::Builder::new()
                .name("console drain".into())
                .spawn(move || {
                    let mut buffer = [0u8; 4096];
                    while matches!(drain.read(&mut buffer), Ok(n) if n > 0) {}
                })
                .map_err(io)?;
            stream
                .set_write_timeout(Some(Duration::from_secs(10)))
                .map_err(io)?;
            self.console_input = Some(stream);
        }
        if let Some(stream) = self.console_input.as_mut() {
            stream.write_all(text.as_bytes()).map_err(io)?;
        }
        Ok(())
    }

    /// Time since QEMU started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether QEMU is still running; an error describes its exit.
    pub(crate) fn check_running(&mut self) -> Result<(), VmError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(VmError::Exited {
                status: status.to_string(),
                output: fs::read_to_string(&self.qemu_log).unwrap_or_default(),
                tail: tail_of(&self.console_log, TAIL_LINES),
            }),
            Err(source) => Err(VmError::Io {
                path: self.qemu_log.clone(),
                source,
            }),
        }
    }

    /// Like [`Vm::check_running`], but gives a QEMU that is going away up
    /// to `grace` to end: its sockets close as it dies, a moment before its
    /// exit can be collected.
    pub(crate) fn check_running_within(&mut self, grace: Duration) -> Result<(), VmError> {
        // The timer is made inside the runtime: tokio's `timeout` needs one
        // when it is created, not only when it is awaited.
        let child = &mut self.child;
        let _ = process::block_on(async { tokio::time::timeout(grace, child.wait()).await });
        self.check_running()
    }

    /// Stops QEMU; the guest's disk is thrown away with the overlay.
    pub(crate) fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
        let _ = process::block_on(self.child.wait());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
impl Vm {
    /// For unit tests: a guest whose "QEMU" is `program` (run with `args`),
    /// whose monitor is `qmp`, and whose logs go in `dir`.
    pub(crate) fn for_tests(program: &str, args: &[&str], qmp: Qmp, dir: &Path) -> Vm {
        let child = {
            let _runtime = process::runtime().enter();
            tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .expect("a stand-in for QEMU")
        };
        let (control, _) = UnixStream::pair().expect("socketpair");
        Vm {
            child,
            workdir: tempfile::tempdir_in(dir).expect("workdir"),
            control,
            qmp,
            console_log: dir.join(CONSOLE_LOG),
            console_input: None,
            qemu_log: dir.join(QEMU_LOG),
            started: Instant::now(),
            setup: VmSetup::default(),
            forwarded: BTreeMap::new(),
            _registration: Supervisor::global().register(None, None),
        }
    }

    /// Its work folder, where the sockets are.
    pub(crate) fn workdir(&self) -> &Path {
        self.workdir.path()
    }
}

/// Why one step of [`Vm::poll`] failed.
enum PollError {
    /// QEMU or its monitor failed.
    Vm(VmError),
    /// QEMU answered with a failure; the reason.
    Failed(String),
}

impl From<VmError> for PollError {
    fn from(e: VmError) -> PollError {
        PollError::Vm(e)
    }
}

impl From<MonitorError> for PollError {
    fn from(e: MonitorError) -> PollError {
        PollError::Vm(e.into())
    }
}

const WORKDIR_PREFIX: &str = "vmrepro-vm-";
/// The control port's socket in the work directory (ttyS1: the harness's
/// shell).
const CONTROL_SOCKET: &str = "control.sock";
/// The kernel console's socket in the work directory (ttyS0: typed on in
/// emergency mode).
const CONSOLE_SOCKET: &str = "console.sock";
/// The monitor's socket in the work directory.
const QMP_SOCKET: &str = "qmp.sock";
/// The kernel console's log, beside the artifacts.
const CONSOLE_LOG: &str = "console.log";
/// QEMU's own output, beside the artifacts.
const QEMU_LOG: &str = "qemu.log";
const OWNER_FILE: &str = "owner.pid";

/// Removes the work directories (overlays, sockets) of harness processes that
/// died without cleaning up, such as one killed with SIGKILL. Their QEMU died
/// with them through `PR_SET_PDEATHSIG`.
fn sweep_stale_workdirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(WORKDIR_PREFIX)
        {
            continue;
        }
        let owner = fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        let alive = match owner {
            // Signal "none" only asks whether the process exists; EPERM
            // means it does, owned by someone else.
            Some(pid) => matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Ok(()) | Err(nix::errno::Errno::EPERM)
            ),
            // No owner file yet: a directory being set up right now.
            None => true,
        };
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl From<MonitorError> for VmError {
    fn from(e: MonitorError) -> VmError {
        VmError::Monitor {
            command: e.command,
            message: e.message,
        }
    }
}

/// QEMU's command line for `config`: the guest's disk is `overlay`, the
/// extra disks' overlays and the sockets are in `workdir`, and each guest
/// TCP port in `forwarded` is reached from the host port it maps to.
fn qemu_command(
    config: &VmConfig,
    overlay: &Path,
    workdir: &Path,
    forwarded: &BTreeMap<u16, u16>,
) -> Command {
    let mut disk_args = Vec::new();
    if !config.disks.is_empty() {
        // microvm has no PCI bus unless asked for one; its virtio devices
        // sit on MMIO.
        let controller = if config.machine.machine.starts_with("microvm") {
            "virtio-scsi-device,id=scsi0"
        } else {
            "virtio-scsi-pci,id=scsi0"
        };
        disk_args.extend(["-device".to_owned(), controller.to_owned()]);
    }
    for disk in &config.disks {
        let id = VmDisk::device_id(&disk.name);
        disk_args.extend([
            "-drive".to_owned(),
            format!(
                "file={},if=none,id=drive-{},format=qcow2,cache=unsafe",
                disk.overlay(workdir).display(),
                disk.name
            ),
            "-device".to_owned(),
            format!(
                "scsi-hd,bus=scsi0.0,drive=drive-{},id={id},serial={}",
                disk.name, disk.name
            ),
        ]);
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(config.machine.qemu_args(config.accel.accel));
    qemu.arg("-kernel").arg(&config.kernel.image);
    if let Some(initrd) = &config.kernel.initrd {
        qemu.arg("-initrd").arg(initrd);
    }
    qemu.arg("-append")
        .arg(config.kernel_cmdline())
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            overlay.display()
        ))
        .args(&disk_args)
        // The kernel console goes to its log whether or not anyone is
        // connected (QEMU's chardev `logfile`), and takes keys on a
        // socket: in emergency mode the guest's only shell is there.
        .arg("-chardev")
        .arg(format!(
            "socket,id=console,path={},server=on,wait=off,logfile={}",
            workdir.join(CONSOLE_SOCKET).display(),
            config.artifacts.join(CONSOLE_LOG).display()
        ))
        .arg("-serial")
        .arg("chardev:console")
        .arg("-chardev")
        .arg(format!(
            "socket,id=control,path={},server=on,wait=off",
            workdir.join(CONTROL_SOCKET).display()
        ))
        .arg("-serial")
        .arg("chardev:control")
        .args(network_args(&config.machine, forwarded))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            workdir.join(QMP_SOCKET).display()
        ));
    if let Some(state) = &config.resume_from {
        // The saved guest was stopped before saving, so it stays paused
        // after loading until `cont`.
        qemu.arg("-incoming").arg(format!(
            "exec:cat {}",
            crate::text::shell_quote(&state.to_string_lossy())
        ));
    }
    qemu
}

/// A word as a shell reads it: as it is when it is plain, quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        crate::text::shell_quote(word)
    }
}

/// The last `lines` lines of a log file, with terminal escapes removed and
/// the rest made inert.
pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    crate::text::last_lines(&fs::read(path).unwrap_or_default(), lines)
}

/// One look at a processor in `info registers`.
#[derive(Debug, PartialEq, Eq)]
struct Registers {
    /// The instruction pointer as the guest's mode reads it.
    at: String,
    mode: &'static str,
    halted: bool,
}

fn registers(dump: &str) -> Option<Registers> {
    let field = |name: &str| {
        dump.split_ascii_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .map(str::to_owned)
    };
    let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(&v, 16).ok());
    let ip = field("RIP=").or_else(|| field("EIP="))?;
    let efer = hex("EFER=").unwrap_or(0);
    let cr0 = hex("CR0=").unwrap_or(0);
    // EFER.LMA (bit 10) is long mode; CR0.PE (bit 0) protected mode.
    let (mode, at) = if efer & 0x400 != 0 {
        ("long mode", ip)
    } else if cr0 & 1 != 0 {
        ("protected mode", ip)
    } else {
        // Real mode: the segment says where as much as the offset does.
        let cs = dump
            .lines()
            .find_map(|line| line.strip_prefix("CS ="))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .unwrap_or("?");
        (
            "real mode (firmware or boot loader)",
            format!("{cs}:{}", ip.trim_start_matches("0000")),
        )
    };
    Some(Registers {
        at,
        mode,
        halted: field("HLT=").as_deref() == Some("1"),
    })
}

/// A short account of a quiet guest's processor from QEMU's run state and
/// two register dumps taken a moment apart.
fn describe_processor(status: &str, first: &str, second: &str) -> String {
    let status = if status == "running" {
        String::new()
    } else {
        format!("QEMU reports {status}; ")
    };
    match (registers(first), registers(second)) {
        (Some(a), Some(b)) => {
            let doing = match (a.at == b.at, a.halted && b.halted) {
                (_, true) => format!("halted (waiting for an interrupt) at {}", b.at),
                (true, false) => format!("at {} in both looks", b.at),
                (false, false) => format!("running (at {}, then {})", a.at, b.at),
            };
            format!("{status}its processor is in {}, {doing}", b.mode)
        }
        _ => format!("{status}its registers could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SeaBIOS with nothing to boot, as QEMU 10 dumps it (trimmed).
    const FIRMWARE: &str = "CPU#0\nEAX=00000000 EBX=00000000 ECX=0000b7d2 EDX=00000000\n\
EIP=0000b7ee EFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
ES =d900 000d9000 0000ffff 00009300\nCS =f000 000f0000 0000ffff 00009b00\n\
CR0=00000010 CR2=00000000 CR3=00000000 CR4=00000000\nEFER=0000000000000000\n";

    fn kernel(rip: &str, halted: bool) -> String {
        format!(
            "RAX=0000000000000000 RBX=ffffffff82a0a940\nRIP={rip} RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT={}\n\
CS =0010 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]\n\
CR0=80050033 CR2=00007f2b1c0f0000 CR3=000000000a40e000 CR4=000006f0\nEFER=0000000000000d01\n",
            u8::from(halted)
        )
    }

    #[test]
    fn a_quiet_processor_is_described() {
        assert_eq!(
            describe_processor("running", FIRMWARE, FIRMWARE),
            "its processor is in real mode (firmware or boot loader), halted (waiting for an interrupt) at f000:b7ee"
        );
        assert_eq!(
            describe_processor(
                "running",
                &kernel("ffffffff81e3a1b2", false),
                &kernel("ffffffff81e3a1c0", false)
            ),
            "its processor is in long mode, running (at ffffffff81e3a1b2, then ffffffff81e3a1c0)"
        );
        assert_eq!(
            describe_processor(
                "internal-error",
                &kernel("ffffffff81e3a1b2", false),
                &kernel("ffffffff81e3a1b2", false)
            ),
            "QEMU reports internal-error; its processor is in long mode, at ffffffff81e3a1b2 in both looks"
        );
        assert_eq!(
            describe_processor("paused", "", "garbage"),
            "QEMU reports paused; its registers could not be read"
        );
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            crate::text::strip_escapes(
                "\u{1b}[0;32m  OK  \u{1b}[0m] Started\r\n\u{1b}[?2004hroot# "
            ),
            "  OK  ] Started\nroot# "
        );
    }

    #[test]
    fn machine_options_become_qemu_arguments() {
        let options = MachineOptions {
            machine: "q35".into(),
            firmware: Firmware::Qboot,
            cpu: None,
            memory_mib: 512,
            cmdline: vec!["quiet".into()],
        };
        let tcg = options.qemu_args(Accel::Tcg).join(" ");
        assert_eq!(tcg, "-machine q35 -accel tcg -smp 1 -m 512 -bios qboot.rom");
        let kvm = options.qemu_args(Accel::Kvm).join(" ");
        assert!(
            kvm.contains("-accel kvm") && kvm.contains("-cpu host"),
            "{kvm}"
        );
        assert_eq!(
            options.describe(),
            "q35, qboot, default CPU, 512 MiB, cmdline +quiet"
        );
    }

    #[test]
    fn a_guest_s_qemu_command_line_has_its_disks_consoles_network_and_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workdir = Path::new("/tmp/vmrepro-vm-x");
        let mut config = VmConfig::for_tests(dir.path());
        config.disks = vec![VmDisk {
            name: "data".into(),
            base: dir.path().join("data.qcow2"),
            keep_overlay: None,
        }];
        config.resume_from = Some(dir.path().join("state file"));
        config.kernel.initrd = Some(dir.path().join("initrd.img"));
        let forwarded = BTreeMap::from([(8080, 40123)]);
        let command = qemu_command(&config, &workdir.join("overlay.qcow2"), workdir, &forwarded);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert_eq!(command.get_program(), "qemu-system-x86_64");
        for expected in [
            "-nodefaults -no-user-config -display none -machine pc -accel tcg",
            &format!("-kernel {}", dir.path().join("vmlinuz").display()),
            &format!("-initrd {}", dir.path().join("initrd.img").display()),
            "-drive file=/tmp/vmrepro-vm-x/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe",
            "-device virtio-scsi-pci,id=scsi0",
            "-drive file=/tmp/vmrepro-vm-x/disk-data.qcow2,if=none,id=drive-data,format=qcow2,cache=unsafe",
            "scsi-hd,bus=scsi0.0,drive=drive-data,id=disk-data,serial=data",
            "socket,id=console,path=/tmp/vmrepro-vm-x/console.sock,server=on,wait=off,logfile=",
            "-serial chardev:console -chardev socket,id=control,path=/tmp/vmrepro-vm-x/control.sock",
            "hostfwd=tcp:127.0.0.1:40123-:8080",
            "-qmp unix:/tmp/vmrepro-vm-x/qmp.sock,server=on,wait=off",
        ] {
            assert!(line.contains(expected), "{expected:?} not in {line}");
        }
        // The state's path is quoted for the shell QEMU hands it to.
        assert_eq!(args[args.len() - 2], "-incoming");
        assert!(args[args.len() - 1].starts_with("exec:cat '"), "{line}");
        assert!(args[args.len() - 1].ends_with("state file'"), "{line}");
        // The console comes before the control port: ttyS0 and ttyS1.
        let console = line.find("id=console").expect("console");
        let control = line.find("id=control").expect("control");
        assert!(console < control);
    }

    /// A guest whose QEMU is a `sleep`, and whose monitor answers `answers`.
    fn vm_answering(
        dir: &Path,
        answers: Vec<&'static str>,
    ) -> (Vm, std::thread::JoinHandle<Vec<String>>) {
        let (qmp, peer) = crate::guest::qmp::fake(answers);
        (Vm::for_tests("sleep", &["30"], qmp, dir), peer)
    }

    #[test]
    fn where_the_processor_is_comes_from_the_run_state_and_two_looks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = serde_json::to_string(&kernel("ffffffff81e3c0b4", false)).expect("json");
        let second = serde_json::to_string(&kernel("ffffffff81e3c0f0", false)).expect("json");
        let answers: Vec<&'static str> = vec![
            "{\"return\": {\"status\": \"running\", \"running\": true}}\n",
            Box::leak(format!("{{\"return\": {first}}}\n").into_boxed_str()),
            Box::leak(format!("{{\"return\": {second}}}\n").into_boxed_str()),
        ];
        let (mut vm, peer) = vm_answering(dir.path(), answers);
        let said = vm.processor().expect("an answer");
        assert_eq!(
            said,
            describe_processor(
                "running",
                &kernel("ffffffff81e3c0b4", false),
                &kernel("ffffffff81e3c0f0", false)
            )
        );
        vm.stop();
        let requests = peer.join().expect("peer");
        assert_eq!(requests.len(), 3);
        assert!(requests[1].contains("info registers"), "{}", requests[1]);
    }

    #[test]
    fn resuming_waits_for_the_state_then_lets_the_guest_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut vm, peer) = vm_answering(
            dir.path(),
            vec![
                "{\"return\": {\"status\": \"inmigrate\"}}\n",
                "{\"return\": {\"status\": \"paused\"}}\n",
                "{\"return\": {}}\n",
            ],
        );
        vm.resume(Duration::from_secs(10)).expect("resumed");
        drop(vm);
        let requests = peer.join().expect("peer");
        assert_eq!(requests[2], r#"{"execute":"cont"}"#);

        let (mut vm, _peer) = vm_answering(
            dir.path(),
            vec!["{\"return\": {\"status\": \"internal-error\"}}\n"],
        );
        std::fs::write(
            dir.path().join("qemu.log"),
            "qemu: a device failed to load\n",
        )
        .expect("log");
        let err = vm
            .resume(Duration::from_secs(10))
            .expect_err("an error state");
        let text = err.to_string();
        assert!(text.contains("loading the saved state"), "{text}");
        assert!(text.contains("internal-error"), "{text}");
        assert!(text.contains("a device failed to load"), "{text}");
    }

    #[test]
    fn saving_stops_the_guest_and_waits_for_the_migration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state");
        std::fs::write(&file, vec![0u8; 4096]).expect("state");
        let (mut vm, peer) = vm_answering(
            dir.path(),
            vec![
                "{\"return\": {}}\n",
                "{\"return\": {}}\n",
                "{\"return\": {}}\n",
                "{\"return\": {\"status\": \"active\"}}\n",
                "{\"return\": {\"status\": \"completed\"}}\n",
            ],
        );
        assert_eq!(
            vm.save_state(&file, Duration::from_secs(10))
                .expect("saved"),
            4096
        );
        drop(vm);
        let requests = peer.join().expect("peer");
        assert_eq!(requests[0], r#"{"execute":"stop"}"#);
        assert!(requests[2].contains("exec:cat >"), "{}", requests[2]);

        let (mut vm, _peer) = vm_answering(
            dir.path(),
            vec![
                "{\"return\": {}}\n",
                "{\"return\": {}}\n",
                "{\"return\": {}}\n",
                "{\"return\": {\"status\": \"failed\", \"error-desc\": \"No space left on device\"}}\n",
            ],
        );
        let err = vm
            .save_state(&file, Duration::from_secs(10))
            .expect_err("failed");
        assert!(err.to_string().contains("No space left on device"), "{err}");
    }

    #[test]
    fn a_disk_is_gone_when_qemu_says_its_device_was_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut vm, _peer) = vm_answering(
            dir.path(),
            vec!["{\"return\": {}}\n{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk-data\"}}\n"],
        );
        vm.detach("data", Duration::from_secs(5)).expect("detached");
        let (mut vm, _peer) = vm_answering(dir.path(), vec!["{\"return\": {}}\n"]);
        let err = vm
            .detach("data", Duration::from_millis(300))
            .expect_err("no event");
        assert!(err.to_string().contains("DEVICE_DELETED"), "{err}");
    }

    #[test]
    fn a_qemu_that_ended_says_how_with_its_output_and_the_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (qmp, _peer) = crate::guest::qmp::fake(Vec::new());
        std::fs::write(
            dir.path().join("qemu.log"),
            "qemu-system-x86_64: terminating on signal 15\n",
        )
        .expect("log");
        std::fs::write(
            dir.path().join("console.log"),
            "[    1.0] reboot: Power down\r\n",
        )
        .expect("log");
        let mut vm = Vm::for_tests("sh", &["-c", "exit 3"], qmp, dir.path());
        let err = vm
            .check_running_within(Duration::from_secs(5))
            .expect_err("it ended");
        let VmError::Exited {
            status,
            output,
            tail,
        } = err
        else {
            panic!("{err}");
        };
        assert!(status.contains('3'), "{status}");
        assert!(output.contains("terminating on signal 15"), "{output}");
        assert!(tail.contains("Power down"), "{tail}");
    }

    #[test]
    fn quitting_asks_qemu_and_waits_for_it_to_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (qmp, peer) = crate::guest::qmp::fake(vec!["{\"return\": {}}\n"]);
        let mut vm = Vm::for_tests("sleep", &["0.2"], qmp, dir.path());
        vm.check_running().expect("running");
        vm.quit().expect("ended");
        assert_eq!(peer.join().expect("peer"), [r#"{"execute":"quit"}"#]);
    }

    #[test]
    fn keys_typed_on_the_console_reach_its_socket() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (qmp, _peer) = crate::guest::qmp::fake(Vec::new());
        let mut vm = Vm::for_tests("sleep", &["30"], qmp, dir.path());
        let listener = std::os::unix::net::UnixListener::bind(vm.workdir().join(CONSOLE_SOCKET))
            .expect("bind");
        vm.type_on_console("root\r").expect("typed");
        vm.type_on_console("ls\r").expect("typed");
        let (mut console, _) = listener.accept().expect("connected");
        console
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buffer = [0u8; 64];
        while got.len() < 8 {
            let n = console.read(&mut buffer).expect("keys");
            assert!(n > 0, "closed after {got:?}");
            got.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(got, b"root\rls\r");
        assert!(vm.control().is_ok());
        assert!(vm.pid().is_some());
    }

    #[test]
    fn accel_can_be_forced() {
        let choice = choose_accel(AccelWanted::Tcg).expect("tcg is always there");
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.reason.contains("asked for"));
        assert_eq!(AccelWanted::parse(" KVM "), Some(AccelWanted::Kvm));
        assert_eq!(AccelWanted::parse("hvf"), None);
    }
}
