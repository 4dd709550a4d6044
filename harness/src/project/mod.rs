//! What the project's files say: scenario files (the model here, the
//! parser beside it), release and kernel [`recipe`]s, and the [`Project`]
//! folder that holds them.
//!
//! A scenario says what to do inside a guest, what to look at afterwards,
//! and what must be true.
//!
//! A scenario is a TOML file in `scenarios/`. It is parsed strictly: an unknown
//! key, a wrong type or a missing field is an error that names the file, the
//! line and the key, because a typo in a regression test must never turn into a
//! silently weaker test.

mod layout;
mod parse;
pub mod recipe;
mod shard;

pub use layout::{Project, ProjectError};
pub(crate) use parse::line_column;
pub use parse::ScenarioError;
pub use shard::{trials_of, Shard};

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The names a scenario may use: releases with a recipe, kernel flavours.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Releases that have an image recipe.
    pub releases: Vec<String>,
    /// Kernel flavours: `stock` and the project's.
    pub kernels: Vec<String>,
}

/// The default time one `run` step or capture may take inside the guest.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The default time a reboot step may take to reach the new boot's shell:
/// generous, because TCG on a busy 2-core machine can take minutes.
pub(crate) const DEFAULT_REBOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a step may be given: a day, far beyond any reboot bug.
const MAX_STEP_TIMEOUT_SECS: i64 = 86_400;

/// A parsed, validated scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name, used in trial names, snapshot names and reports.
    pub name: String,
    /// What the scenario reproduces, in prose.
    pub(crate) description: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// Releases and kernel flavours the scenario runs on.
    pub matrix: Matrix,
    /// What is done inside the guest, in order.
    pub(crate) steps: Vec<Step>,
    /// Guest state recorded at the end of the flow (and before its last reboot).
    pub(crate) captures: Vec<CaptureSpec>,
    /// What must hold at the end of the flow, whatever the snapshot says.
    pub expect: Expectations,
    /// Per-cell overrides of `expect`, in file order.
    pub(crate) expect_cells: Vec<CellExpectations>,
    /// Packages added to the release's image for this scenario (with what
    /// they depend on), from the release's own archive.
    pub packages: Vec<String>,
    /// The line of `packages` in the file, for errors about them.
    pub(crate) packages_line: Option<usize>,
    /// Packages whose versions the report lists (`versions`; by default
    /// the scenario's `packages`).
    pub(crate) versions: Vec<String>,
    /// How the guest's first boot happens: from the saved, booted state
    /// (`warm`, the default) or as a real boot (`cold`), for scenarios whose
    /// subject is the first boot itself.
    pub(crate) first_boot: FirstBoot,
    /// Disks attached besides the root disk (`[[disk]]`), throwaway per
    /// trial.
    pub(crate) disks: Vec<DiskSpec>,
    /// What the harness reads on its own, before the last reboot and at
    /// the end, to say what the reboot changed (`[evidence]`).
    pub(crate) evidence: EvidenceSpec,
}

/// The `[evidence]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvidenceSpec {
    /// The sources read: all but those the scenario skips.
    pub(crate) sources: Vec<EvidenceSource>,
    /// Whether what the reboot changed goes into the snapshot too.
    pub(crate) snapshot: bool,
}

impl Default for EvidenceSpec {
    fn default() -> EvidenceSpec {
        EvidenceSpec {
            sources: EvidenceSource::ALL.to_vec(),
            snapshot: false,
        }
    }
}

/// A `[[disk]]` table: a disk the guest has besides its root disk, made on
/// the host and attached for the whole trial unless a `detach` step
/// removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskSpec {
    /// What steps call it; also the disk's serial number, so the guest sees
    /// it as `/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<name>`.
    pub(crate) name: String,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// The file system made on it (the whole disk, no partition table);
    /// `None` leaves it blank (all zeros).
    pub(crate) filesystem: Option<DiskFilesystem>,
}

/// The file system on an extra disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskFilesystem {
    /// `ext2`, `ext3` or `ext4`.
    pub(crate) kind: String,
    /// Its label (at most 16 bytes), for `LABEL=` and `/dev/disk/by-label`.
    pub(crate) label: Option<String>,
    /// A folder of the project whose content the file system starts with
    /// (owned by root, modes kept): as written, and where it is on the host.
    pub(crate) files: Option<(String, PathBuf)>,
}

/// How a guest reaches its first shell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstBoot {
    /// Resume a saved state of the same image, kernel and machine, booted
    /// once and cached; reboots in the flow are still real boots.
    #[default]
    Warm,
    /// Boot from power-on.
    Cold,
}

impl FirstBoot {
    /// The name scenario files and reports use.
    pub fn name(self) -> &'static str {
        match self {
            FirstBoot::Warm => "warm",
            FirstBoot::Cold => "cold",
        }
    }
}

/// The matrix cells a scenario runs on: every release with every kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Debian release code names, each with a recipe in `images/`.
    pub releases: Vec<String>,
    /// Kernel flavours.
    pub kernels: Vec<KernelFlavour>,
}

impl Matrix {
    /// The cells' names (`release-kernel`), in [`Matrix::cells`] order.
    pub fn cell_names(&self) -> Vec<String> {
        self.cells().iter().map(Cell::to_string).collect()
    }

    /// Every (release, kernel) pair, releases outermost.
    pub fn cells(&self) -> Vec<Cell> {
        self.releases
            .iter()
            .flat_map(|release| {
                self.kernels.iter().map(move |kernel| Cell {
                    release: release.clone(),
                    kernel: kernel.clone(),
                })
            })
            .collect()
    }
}

/// One matrix cell: a release booted with a kernel flavour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    /// Debian release code name.
    pub release: String,
    /// Kernel flavour.
    pub kernel: KernelFlavour,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.release, self.kernel)
    }
}

/// Which kernel boots the guest: `stock` (the release's own kernel package,
/// with its initrd and its module tree in the guest), or a flavour defined
/// by a file in `images/kernels/` (built from a recipe, or a kernel image
/// given by path), booted from outside the disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct KernelFlavour(String);

impl KernelFlavour {
    /// The name of the release's own kernel.
    pub const STOCK: &'static str = "stock";

    /// The release's own kernel.
    pub fn stock() -> KernelFlavour {
        KernelFlavour(Self::STOCK.to_owned())
    }

    /// A flavour by name (checked against the project where it is used).
    pub fn named(name: &str) -> KernelFlavour {
        KernelFlavour(name.to_owned())
    }

    /// Whether this is the release's own kernel.
    pub fn is_stock(&self) -> bool {
        self.0 == Self::STOCK
    }

    /// The flavour's name as scenario files and the command line spell it.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KernelFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing done inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// A human label for progress output and reports.
    pub(crate) title: String,
    /// What the step does.
    pub(crate) action: Action,
    /// How long the step may take before the trial fails.
    pub(crate) timeout: Duration,
    /// Per-cell exit statuses of a `run` step (`[[step.cell]]`), replacing
    /// the step's own `status` on the cells they name, in file order.
    pub(crate) cells: Vec<StepCell>,
}

impl Step {
    /// The exit status this step must end with on `cell`: its own `status`
    /// with every matching `[[step.cell]]` applied in file order. `None` for
    /// steps that have no exit status (writes and reboots).
    pub(crate) fn status_for(&self, cell: &Cell) -> Option<StepStatus> {
        let Action::Run { status, .. } = &self.action else {
            return None;
        };
        Some(
            self.cells
                .iter()
                .filter(|c| c.cells.applies_to(cell))
                .fold(*status, |_, c| c.status),
        )
    }
}

/// The exit status a `run` step must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Exactly this status (0–255).
    Exactly(i32),
    /// Any status; the report records the one it ended with. For a step
    /// whose outcome differs between releases in a way the scenario does not
    /// assert (a later step deals with both).
    Any,
}

impl StepStatus {
    /// Whether a step that ended with `status` did what was expected.
    pub(crate) fn accepts(self, status: i32) -> bool {
        match self {
            StepStatus::Exactly(expected) => status == expected,
            StepStatus::Any => true,
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepStatus::Exactly(status) => write!(f, "{status}"),
            StepStatus::Any => f.write_str("any"),
        }
    }
}

/// A `[[step.cell]]` table: the exit status a step must end with on some
/// cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepCell {
    /// The cells it applies to.
    pub(crate) cells: CellFilter,
    /// The status expected there.
    pub(crate) status: StepStatus,
}

/// The cells a `[[… .cell]]` table names: every cell whose release and
/// kernel are listed (all of them where a list is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CellFilter {
    /// Releases it applies to; all when `None`.
    pub(crate) releases: Option<Vec<String>>,
    /// Kernels it applies to; all when `None`.
    pub(crate) kernels: Option<Vec<KernelFlavour>>,
}

impl CellFilter {
    /// Whether `cell` is one of the named cells.
    pub(crate) fn applies_to(&self, cell: &Cell) -> bool {
        self.releases
            .as_ref()
            .is_none_or(|r| r.contains(&cell.release))
            && self
                .kernels
                .as_ref()
                .is_none_or(|k| k.contains(&cell.kernel))
    }
}

/// The kinds of step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run a shell script (bash) as root; its exit status must be `status`
    /// (on cells without a `[[step.cell]]` of their own).
    Run {
        /// The script.
        command: String,
        /// The exit status the script must end with.
        status: StepStatus,
    },
    /// Write a file, replacing what was there.
    Write {
        /// Absolute path in the guest.
        path: String,
        /// The file's whole content.
        content: String,
        /// Octal permission bits, such as `0644`.
        mode: u32,
    },
    /// Reboot the guest inside the same QEMU process and wait until it is back.
    Reboot,
    /// Copy a file or a folder from the scenario's project into the guest,
    /// modes kept, owned by root.
    Copy {
        /// The path as the scenario wrote it, relative to the scenario file.
        from: String,
        /// Where it is on the host (checked to be inside the project).
        source: PathBuf,
        /// The absolute path it gets in the guest.
        to: String,
    },
    /// Wait, polling inside the guest, until a unit reaches a state
    /// (`systemctl is-active`); waiting for anything but `failed` ends at
    /// once, as a failure, when the unit fails.
    WaitForUnit {
        /// The unit.
        unit: String,
        /// The state to wait for, such as `active`.
        state: String,
    },
    /// Wait, polling inside the guest, until a shell command succeeds.
    WaitUntil {
        /// The command (bash).
        command: String,
    },
    /// Pull an extra disk out of the running guest, as if unplugged: QEMU
    /// removes the device, and the step waits until the guest's kernel no
    /// longer lists it. It stays gone across later reboots.
    Detach {
        /// The `[[disk]]` it names.
        disk: String,
    },
}

impl Action {
    /// Whether the step only waits for the guest.
    pub(crate) fn is_wait(&self) -> bool {
        matches!(self, Action::WaitForUnit { .. } | Action::WaitUntil { .. })
    }
}

/// A named piece of guest state recorded into the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaptureSpec {
    /// Section name in the snapshot; also what expectations refer to.
    pub(crate) name: String,
    /// What is recorded.
    pub(crate) what: CaptureKind,
    /// Extra normalisers, applied after the ones every capture gets.
    pub(crate) normalize: Vec<Normalizer>,
    /// How many bytes of each output stream come back from the guest: the
    /// first and the last half, with the number omitted between them.
    pub(crate) max_output: u64,
}

/// A source of evidence, as scenarios name it in `[evidence]` and in
/// `expect.unchanged` (`"sysctl:net.ipv4.ip_forward"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EvidenceSource {
    /// Units' states, and the units failed after the reboot.
    Units,
    /// The boot's journal entries of priority warning or worse.
    Journal,
    /// Kernel settings: every readable key under `/proc/sys`.
    Sysctl,
    /// What is mounted where.
    Mounts,
    /// Addresses and routes.
    Network,
    /// Loaded kernel modules.
    Modules,
    /// The firewall: `iptables-save`, `ip6tables-save`, `nft list ruleset`.
    Firewall,
}

impl EvidenceSource {
    /// Every source, most telling first (the report's order).
    pub const ALL: [EvidenceSource; 7] = [
        EvidenceSource::Units,
        EvidenceSource::Journal,
        EvidenceSource::Sysctl,
        EvidenceSource::Firewall,
        EvidenceSource::Mounts,
        EvidenceSource::Network,
        EvidenceSource::Modules,
    ];

    /// The name scenarios use.
    pub fn name(self) -> &'static str {
        match self {
            EvidenceSource::Units => "units",
            EvidenceSource::Journal => "journal",
            EvidenceSource::Sysctl => "sysctl",
            EvidenceSource::Mounts => "mounts",
            EvidenceSource::Network => "network",
            EvidenceSource::Modules => "modules",
            EvidenceSource::Firewall => "firewall",
        }
    }

    /// The source a scenario names.
    pub fn named(name: &str) -> Option<EvidenceSource> {
        EvidenceSource::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for EvidenceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a guest stopped running the flow without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestEnd {
    /// systemd's emergency mode: no getty, no control shell.
    Emergency,
    /// systemd's rescue mode.
    Rescue,
    /// The kernel panicked.
    Panic,
    /// The guest powered itself off.
    PowerOff,
    /// The guest halted.
    Halt,
    /// The guest restarted with no reboot step asking for it.
    Reboot,
    /// The kernel started again while the guest was still booting.
    BootLoop,
    /// The control shell ended and a new login appeared in its place.
    ShellDied,
    /// No console output and no shell for a long while during a boot.
    Hung,
}

impl GuestEnd {
    /// Every end, in the order the documentation lists them.
    pub const ALL: &'static [GuestEnd] = &[
        GuestEnd::Emergency,
        GuestEnd::Rescue,
        GuestEnd::Panic,
        GuestEnd::PowerOff,
        GuestEnd::Halt,
        GuestEnd::Reboot,
        GuestEnd::BootLoop,
        GuestEnd::ShellDied,
        GuestEnd::Hung,
    ];

    /// The word a scenario uses for it (`boot = "emergency"`).
    pub fn name(self) -> &'static str {
        match self {
            GuestEnd::Emergency => "emergency",
            GuestEnd::Rescue => "rescue",
            GuestEnd::Panic => "panic",
            GuestEnd::PowerOff => "power-off",
            GuestEnd::Halt => "halt",
            GuestEnd::Reboot => "reboot",
            GuestEnd::BootLoop => "boot-loop",
            GuestEnd::ShellDied => "shell-died",
            GuestEnd::Hung => "hung",
        }
    }

    /// The end a scenario's word names.
    pub fn named(word: &str) -> Option<GuestEnd> {
        GuestEnd::ALL.iter().copied().find(|e| e.name() == word)
    }

    /// In words, for verdicts.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            GuestEnd::Emergency => "is in emergency mode",
            GuestEnd::Rescue => "is in rescue mode",
            GuestEnd::Panic => "kernel panicked",
            GuestEnd::PowerOff => "powered off",
            GuestEnd::Halt => "halted",
            GuestEnd::Reboot => "rebooted without a reboot step",
            GuestEnd::BootLoop => {
                "is in a boot loop: the kernel started again before the shell came"
            }
            GuestEnd::ShellDied => "control shell died: a new login appeared in its place",
            GuestEnd::Hung => "is hung",
        }
    }
}

/// How many bytes of each output stream of a command come back from the
/// guest when the scenario sets no `max_output`: the first half and the
/// last half of this many, with a line saying how many were omitted
/// between them. Enough for a whole boot's journal; small enough that a
/// flood crosses the serial port in seconds.
pub const DEFAULT_MAX_OUTPUT: u64 = 256 * 1024;

/// Where a capture's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaptureKind {
    /// The standard output of a shell script run in the guest.
    Run(String),
    /// Whether a guest TCP port answers a connection from the host, through
    /// the scenario's restricted network: `open` (the guest sent bytes),
    /// `refused` (closed or reset without a byte) or `no answer` (nothing
    /// within the probe's time, as when a firewall drops the packets).
    ProbeTcp(u16),
}

impl CaptureSpec {
    /// The command, or what the probe does, in words for reports.
    pub(crate) fn command_text(&self) -> String {
        match &self.what {
            CaptureKind::Run(command) => command.clone(),
            CaptureKind::ProbeTcp(port) => {
                format!("connect from the host to the guest's tcp/{port} and see whether the guest accepts")
            }
        }
    }
}

/// Rewrites that make captured text stable from run to run.
///
/// Every capture gets [`Normalizer::DEFAULT`]; scenarios add the others by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Normalizer {
    /// Wall-clock and monotonic timestamps (syslog, ISO 8601, `[   1.234]`).
    Timestamps,
    /// Process IDs in `name[1234]:` log prefixes.
    Pids,
    /// The guest's host name.
    Hostname,
    /// The running kernel's release string.
    KernelRelease,
    /// iptables-save output: packet and byte counters, and the dated
    /// `# Generated by` / `# Completed on` comments.
    Iptables,
    /// Sort the lines, for output whose order is not meaningful.
    SortLines,
}

impl Normalizer {
    /// A one-line summary of normalised text, for normalisers that know its
    /// format: iptables-save gives the INPUT chain's policy and rule count.
    pub(crate) fn summary(self, text: &str) -> Option<String> {
        if self != Normalizer::Iptables {
            return None;
        }
        let policy = text
            .lines()
            .find_map(|l| l.strip_prefix(":INPUT "))
            .and_then(|l| l.split_whitespace().next());
        let rules = text.lines().filter(|l| l.starts_with("-A INPUT")).count();
        Some(match policy {
            Some(policy) => format!("INPUT policy {policy} with {rules} rules"),
            None if text.trim().is_empty() => "no rules at all".into(),
            None => format!("no INPUT chain in {} lines", text.lines().count()),
        })
    }

    /// The normalisers applied to every capture.
    pub(crate) const DEFAULT: &'static [Normalizer] = &[
        Normalizer::Timestamps,
        Normalizer::Pids,
        Normalizer::Hostname,
        Normalizer::KernelRelease,
    ];
}

/// Assertions checked at the end of the flow, independent of the snapshot, so
/// that accepting a snapshot cannot turn a regression into a pass.
///
/// `[expect]` holds what is expected everywhere; `[[expect.cell]]` tables
/// override it for the releases and kernels they name, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    /// Unit name → the `systemctl is-active` answer it must give.
    pub(crate) units: BTreeMap<String, String>,
    /// Captures that must read the same before the last reboot and after it.
    pub survive_reboot: Vec<String>,
    /// Captures that must read differently after the last reboot: the state
    /// is expected to be lost (a known failure, asserted so it stays known).
    pub(crate) lost_on_reboot: Vec<String>,
    /// Capture name → texts its raw output must contain.
    pub(crate) contains: BTreeMap<String, Vec<String>>,
    /// How the boot after a reboot step must end when the guest is not to
    /// come back (`boot = "emergency"`); `None`: it must come back.
    pub boot: Option<GuestEnd>,
    /// Evidence the last reboot must not change: a source (`"firewall"`)
    /// or one item of it (`"sysctl:net.ipv4.ip_forward"`).
    pub(crate) unchanged: Vec<String>,
}

/// Expectations for some cells only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CellExpectations {
    /// The cells it applies to.
    pub(crate) cells: CellFilter,
    /// Replaces `survive_reboot` when given.
    pub(crate) survive_reboot: Option<Vec<String>>,
    /// Replaces `lost_on_reboot` when given.
    pub(crate) lost_on_reboot: Option<Vec<String>>,
    /// Unit states that replace the general ones, unit by unit.
    pub(crate) units: BTreeMap<String, String>,
    /// Texts added to the general ones, capture by capture.
    pub(crate) contains: BTreeMap<String, Vec<String>>,
    /// Replaces `boot` when given (`Some(None)`: `boot = "up"`).
    pub(crate) boot: Option<Option<GuestEnd>>,
    /// Replaces `unchanged` when given.
    pub(crate) unchanged: Option<Vec<String>>,
}

impl Scenario {
    /// The expectations that hold for one cell: `[expect]` with every
    /// matching `[[expect.cell]]` applied in file order.
    pub(crate) fn expectations_for(&self, cell: &Cell) -> Expectations {
        let mut expect = self.expect.clone();
        for over in self
            .expect_cells
            .iter()
            .filter(|c| c.cells.applies_to(cell))
        {
            if let Some(names) = &over.survive_reboot {
                expect.survive_reboot = names.clone();
            }
            if let Some(names) = &over.lost_on_reboot {
                expect.lost_on_reboot = names.clone();
            }
            for (unit, state) in &over.units {
                expect.units.insert(unit.clone(), state.clone());
            }
            if let Some(boot) = over.boot {
                expect.boot = boot;
            }
            if let Some(unchanged) = &over.unchanged {
                expect.unchanged = unchanged.clone();
            }
            for (capture, texts) in &over.contains {
                expect
                    .contains
                    .entry(capture.clone())
                    .or_default()
                    .extend(texts.iter().cloned());
            }
        }
        expect
    }

    /// The same scenario with no evidence read on the harness's own: what
    /// a benchmark sets beside it to learn what the evidence costs.
    pub fn without_evidence(&self) -> Scenario {
        let mut bare = self.clone();
        bare.evidence.sources.clear();
        bare
    }

    /// The guest TCP ports the scenario probes from the host; the guest
    /// gets a restricted network only when there are any.
    pub fn probed_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .captures
            .iter()
            .filter_map(|c| match c.what {
                CaptureKind::ProbeTcp(port) => Some(port),
                CaptureKind::Run(_) => None,
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Whether the flow reboots the guest at least once.
    pub fn has_reboot(&self) -> bool {
        self.steps.iter().any(|s| s.action == Action::Reboot)
    }
}
