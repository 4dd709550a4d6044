//! The command line's flags and commands (clap), and the run's settings
//! they make with the environment.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use vmrepro::project::{FirstBoot, Shard};
use vmrepro::settings::{AccelWanted, Settings, SettingsError};

#[derive(Parser)]
#[command(
    name = "vmrepro",
    version,
    about = "Turn \"my machine breaks after a reboot\" bug reports into VM-based regression tests",
    after_help = AFTER_HELP,
)]
pub(crate) struct Cli {
    /// Print no progress lines.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Print every progress event as its own line, even on a terminal.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    /// Boot every guest from power-on instead of resuming the saved state of
    /// an already booted one (reboots in a scenario are real either way);
    /// the same as `--first-boot cold`.
    #[arg(long, global = true)]
    pub(crate) cold: bool,
    /// How guests reach their first shell: resumed from a saved, booted
    /// state (warm) or booted from power-on (cold).
    #[arg(long, global = true, value_enum, value_name = "HOW")]
    pub(crate) first_boot: Option<FirstBootArg>,
    /// The accelerator: kvm (refused where KVM cannot run guests), tcg, or
    /// auto (KVM where it works, else TCG).
    #[arg(long, global = true, value_enum, value_name = "ACCEL")]
    pub(crate) accel: Option<AccelArg>,
    /// The image and kernel cache (default: $XDG_CACHE_HOME/vmrepro, else ~/.cache/vmrepro).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// The project directory (default: found from the current directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) project: Option<PathBuf>,
    /// Never install host packages; print the commands instead.
    #[arg(long, global = true)]
    pub(crate) no_install: bool,
    /// When to colour the outcome table. `auto` colours a terminal unless
    /// NO_COLOR is set; CLICOLOR_FORCE=1 colours even a pipe.
    #[arg(long, global = true, value_enum, default_value_t = ColorArg::Auto, value_name = "WHEN")]
    pub(crate) color: ColorArg,
    #[command(subcommand)]
    pub(crate) command: Command,
}

const AFTER_HELP: &str = "Exit status: 0 every trial passed (pass or reproduced); 1 a trial failed, or is new (no \
committed snapshot yet); 2 usage or input error; 3 environment problem (nothing failed, but a trial could \
not run: tools, image, kernel, QEMU, a required release); 4 everything that ran passed, but some trials \
were skipped (their release cannot be fetched here). A failure wins over an environment problem, and \
both over skips.

Verdicts: pass, reproduced (the cell asserts the state is lost, and it is), new (no committed snapshot: \
read it, then `vmrepro accept`), fail, error (the host could not run it), skipped.

Environment (an option given wins over its variable; an empty variable counts as unset):
  VMREPRO_ACCEL=auto|kvm|tcg   as --accel
  VMREPRO_FIRST_BOOT=warm|cold as --first-boot
  VMREPRO_CACHE=DIR            as --cache
  VMREPRO_ROOT=DIR             as --project
  VMREPRO_NO_INSTALL=1         as --no-install (1/0, true/false, yes/no, on/off)
  VMREPRO_SHARD=K/N            as `run --shard`
  VMREPRO_ARTIFACTS=DIR        where reports and rows go, relative to the project (default target/vmrepro)
  VMREPRO_MIRROR, VMREPRO_MIRROR_<RELEASE>   Debian mirror or apt proxy to bootstrap from
  VMREPRO_REQUIRE_ALL=1, VMREPRO_REQUIRE=bookworm,trixie   a release that cannot be fetched is an
                               error, not a skip
  NO_COLOR, CLICOLOR_FORCE     see --color
A value a variable does not accept is a usage error that names it (exit status 2; 255 for exec).";

/// `--first-boot`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FirstBootArg {
    /// Resume a saved, booted state.
    Warm,
    /// Boot from power-on.
    Cold,
}

/// `--accel`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AccelArg {
    /// KVM where it can run guests, else TCG.
    Auto,
    /// KVM, or an error.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// `--color`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorArg {
    /// On a terminal, unless NO_COLOR is set (or CLICOLOR_FORCE=1 says always).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorArg {
    pub(crate) fn wanted(self, settings: &Settings) -> bool {
        use std::io::IsTerminal as _;
        match self {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto if settings.no_color => false,
            ColorArg::Auto if settings.clicolor_force => true,
            ColorArg::Auto => std::io::stdout().is_terminal(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Reproduce one scenario on one release and kernel, and print a Markdown report.
    #[command(
        after_help = "Example:\n  vmrepro repro netfilter-persistent-reboot --release bookworm --kernel stock"
    )]
    Repro(ReproArgs),
    /// Run scenarios over their matrices and compare with the committed snapshots.
    #[command(
        after_help = "Examples:\n  vmrepro run\n  vmrepro run netfilter-persistent-reboot --release bookworm"
    )]
    Run(RunArgs),
    /// Run one command as root in a guest (after a scenario's steps, if
    /// asked), print its output and exit with its status.
    #[command(
        after_help = "Exit status: the command's own, or 255 when vmrepro could not run it (as ssh(1) does).

One argument is a shell command line; several are a command and its arguments, each quoted.

Examples:
  vmrepro exec --release bookworm --kernel stock -- uname -r
  vmrepro exec --release trixie --kernel linode --after netfilter-persistent-reboot -- 'iptables-save | head'"
    )]
    Exec {
        #[command(flatten)]
        guest: GuestArgs,
        /// Seconds the command may run before it is stopped inside the guest.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
        /// The command.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// List scenarios and their matrix cells.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Print the outcome table (release × kernel × scenario) of the last runs,
    /// from `vmrepro run` or `cargo test`.
    #[command(after_help = "Example:\n  vmrepro matrix --format json")]
    Matrix {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Build, list, import and remove cached images and kernels.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Check the host tools and install what is missing (as root, with apt).
    Setup,
    /// Check the host without changing it: tools, accelerator, cache, mirrors.
    Doctor {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// An interactive root shell in a guest, optionally after a scenario's
    /// steps (reboots included). Ctrl-] leaves; the guest is always stopped.
    #[command(
        after_help = "Examples:\n  vmrepro shell --release bookworm --kernel linode\n  vmrepro shell --release trixie --kernel stock --after netfilter-persistent-reboot"
    )]
    Shell {
        #[command(flatten)]
        guest: GuestArgs,
    },
    /// Accept pending snapshots (snapshots/NAME.snap.new, written by a first run
    /// or a changed one) after reading them: all, or those of the scenarios or
    /// SCENARIO@CELL names given.
    #[command(
        after_help = "Examples:\n  vmrepro accept --list\n  vmrepro accept sysctl-of-a-late-module\n  vmrepro accept sysctl-of-a-late-module@bookworm-stock"
    )]
    Accept {
        /// Scenarios or SCENARIO@CELL names; every pending snapshot when none.
        names: Vec<String>,
        /// Only list the pending snapshots.
        #[arg(long)]
        list: bool,
    },
    /// Write a commented scenario skeleton to scenarios/NAME.toml.
    #[command(
        after_help = "Example:\n  vmrepro new sshd-port-after-reboot\n  vmrepro repro sshd-port-after-reboot"
    )]
    New {
        /// The scenario's name (letters, digits, `-` and `_`).
        name: String,
    },
}

/// Which guest `shell` and `exec` boot.
#[derive(clap::Args)]
pub(crate) struct GuestArgs {
    /// Release to boot.
    #[arg(long)]
    pub(crate) release: String,
    /// Kernel flavour.
    #[arg(long, default_value = "stock")]
    pub(crate) kernel: String,
    /// Run this scenario's steps first.
    #[arg(long)]
    pub(crate) after: Option<String>,
}

/// Output formats of `list`, `images list` and `doctor`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ListFormat {
    /// Lines for people.
    Text,
    /// JSON for programs.
    Json,
}

/// Output formats of `run` and `matrix`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// An aligned table.
    Text,
    /// A JSON array of rows: {scenario, release, kernel, after_reboot, units, status, verdict, accel}.
    Json,
    /// A Markdown table (for CI job summaries and bug reports).
    Markdown,
}

#[derive(Subcommand)]
pub(crate) enum ImagesCommand {
    /// List the cache's entries with their sizes.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Build the images of releases (all when none are named) and the Linode-style kernel.
    #[command(
        after_help = "Examples:\n  vmrepro images build bookworm trixie\n  vmrepro images build --kernel-only"
    )]
    Build {
        /// Releases to build.
        releases: Vec<String>,
        /// Build only the Linode-style kernel.
        #[arg(long)]
        kernel_only: bool,
        /// Do not build the Linode-style kernel.
        #[arg(long, conflicts_with = "kernel_only")]
        no_kernel: bool,
    },
    /// Remove cache entries: everything, or the entries of the releases named
    /// (their images and saved warm states); `kernels` names the kernel
    /// entries and `warm` every saved warm state.
    Clean {
        /// Releases, `kernels` or `warm`; everything when none are named.
        names: Vec<String>,
    },
    /// Print the cache key of a release's image, or of the Linode-style kernel
    /// (for CI caches such as actions/cache).
    #[command(
        after_help = "Examples:\n  vmrepro images key bookworm\n  vmrepro images key --kernel"
    )]
    Key {
        /// The release whose image key to print.
        #[arg(required_unless_present = "kernel")]
        release: Option<String>,
        /// Print the key of a kernel flavour built from a recipe instead: the one
        /// named, or the only one (installs its source package if allowed).
        #[arg(long, conflicts_with = "release", num_args = 0..=1, default_missing_value = "", value_name = "FLAVOUR")]
        kernel: Option<String>,
    },
    /// Use your own machine's root file system as a release's image, instead
    /// of a bootstrapped one (until `vmrepro images clean RELEASE`).
    #[command(
        after_help = "Examples:\n  vmrepro images import bookworm my-server-rootfs.tar.gz\n  vmrepro images import bookworm my-server.qcow2"
    )]
    Import {
        /// The release the tarball is an installation of.
        release: String,
        /// A tarball of the root file system (tar, tar.gz, tar.xz, tar.zst), or a
        /// disk image (qcow2, raw, vmdk…) holding an ext file system, bare or
        /// in an MBR/GPT partition.
        file: PathBuf,
    },
}

/// The run's settings: the environment's, and the options over them.
pub(crate) fn settings(cli: &Cli) -> Result<Settings, SettingsError> {
    let mut settings = Settings::from_env()?;
    match cli.accel {
        Some(AccelArg::Auto) => settings.accel = AccelWanted::Auto,
        Some(AccelArg::Kvm) => settings.accel = AccelWanted::Kvm,
        Some(AccelArg::Tcg) => settings.accel = AccelWanted::Tcg,
        None => {}
    }
    match cli.first_boot {
        Some(FirstBootArg::Warm) => settings.first_boot = FirstBoot::Warm,
        Some(FirstBootArg::Cold) => settings.first_boot = FirstBoot::Cold,
        None => {}
    }
    if cli.cold {
        settings.first_boot = FirstBoot::Cold;
    }
    if let Some(cache) = &cli.cache {
        settings.cache = cache.clone();
    }
    if let Some(project) = &cli.project {
        settings.project = Some(project.clone());
    }
    if cli.no_install {
        settings.install = false;
    }
    Ok(settings)
}

/// What `vmrepro repro` is asked.
#[derive(clap::Args)]
pub(crate) struct ReproArgs {
    /// Scenario name (a file in scenarios/) or path to a scenario file.
    pub(crate) scenario: String,
    /// Release to boot; defaults to the scenario's first.
    #[arg(long)]
    pub(crate) release: Option<String>,
    /// Kernel flavour; defaults to the scenario's first.
    #[arg(long)]
    pub(crate) kernel: Option<String>,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// When the trial fails (a step, a capture, an expectation or the
    /// snapshot), keep the guest and open a root shell in it; leaving
    /// the shell stops it. Needs a terminal.
    #[arg(long)]
    pub(crate) shell_fail: bool,
}

/// What `vmrepro run` is asked.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Scenarios to run (names or paths); all when none are given.
    pub(crate) scenarios: Vec<String>,
    /// Only cells of this release.
    #[arg(long)]
    pub(crate) release: Option<String>,
    /// Only cells of this kernel flavour.
    #[arg(long)]
    pub(crate) kernel: Option<String>,
    /// Format of the outcome table printed at the end.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// How many guests run at once (default: from cores and free memory).
    #[arg(short = 'j', long)]
    pub(crate) jobs: Option<usize>,
    /// Run only share K of N of the cells (1-based, counted over every
    /// cell of the selected scenarios before --release and --kernel
    /// filter them), to split a suite across machines; the same split as
    /// `VMREPRO_SHARD` in `cargo test`.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    pub(crate) shard: Option<Shard>,
    /// With a selection of exactly one cell: when it fails, keep the
    /// guest and open a root shell in it (as `repro --shell-fail`).
    #[arg(long)]
    pub(crate) shell_fail: bool,
}
