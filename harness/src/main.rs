//! The `vmrepro` command line: a thin layer over the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use vmrepro::guest::vm;
use vmrepro::host;
use vmrepro::host::progress::{Events, Terminal};
use vmrepro::media::cache::Cache;
use vmrepro::media::{image, kernel};
use vmrepro::project::{KernelFlavour, Project, ProjectError};
use vmrepro::run::{RunError, RunOptions};
use vmrepro::settings::Settings;

use vmrepro::check::verdict::{self, EXIT_ENV, EXIT_FAIL, EXIT_PASS, EXIT_USAGE};

/// `vmrepro exec`'s status when it could not run the command (ssh(1): "exits
/// with the exit status of the remote command or with 255 if an error
/// occurred").
const EXIT_EXEC: u8 = 255;

/// `println!` for results on standard output: a reader that goes away (a
/// closed pipe, as in `vmrepro list | head -1`) ends the program quietly
/// with status 0 instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same closed-pipe behaviour as [`out!`].
macro_rules! outp {
    ($($arg:tt)*) => { $crate::emit(format_args!($($arg)*)) };
}

mod cli;

use cli::doctor::{doctor, setup};
use cli::flags::{settings, Cli, Command};
use cli::images::images;

fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(EXIT_PASS));
        }
        eprintln!("vmrepro: writing to standard output: {e}");
        std::process::exit(i32::from(EXIT_ENV));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `exec` passes the command's status through, so its own failures
    // need a status no command is likely to give.
    let exec = matches!(cli.command, Command::Exec { .. });
    let settings = match settings(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("vmrepro: {e}");
            return ExitCode::from(if exec { EXIT_EXEC } else { EXIT_USAGE });
        }
    };
    if matches!(cli.command, Command::Run(_) | Command::Repro(_)) && !settings.insta_quiet {
        return quiet_insta();
    }
    // Progress is rendered here, on standard error: live lines on a
    // terminal, plain ones with -v or off a terminal, none with -q.
    let terminal = Arc::new(Terminal::new(cli.quiet, !cli.verbose));
    let outputs = Outputs {
        colour: cli.color.wanted(&settings),
        events: Events::new(terminal.clone()),
        terminal,
        settings,
    };
    match dispatch(cli.command, outputs) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmrepro: {e:#}");
            ExitCode::from(if exec { EXIT_EXEC } else { classify(&e) })
        }
    }
}

/// Runs this program again, in place of this process, with insta told to
/// print nothing.
///
/// insta prints a snapshot's difference and its hints about `cargo insta`
/// on standard output, which is where the report goes; the report carries
/// the difference in its own words. insta takes its output mode only from
/// `INSTA_OUTPUT` (or an `insta.yaml` in the project, which is the user's),
/// and changing this process's own environment would race with any thread
/// reading it, so the variable is given to a new program image instead:
/// the same process (its PID, its terminal, its signals), nothing running.
fn quiet_insta() -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env("INSTA_OUTPUT", "none").exec();
    eprintln!("vmrepro: starting again with INSTA_OUTPUT=none: {error}");
    ExitCode::from(EXIT_ENV)
}

/// Maps an error to the documented exit status.
fn classify(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<ProjectError>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<host::HostError>().is_some() {
            return EXIT_ENV;
        }
        // A flow that broke (`shell`, `exec`): the verdict `run` gives it,
        // with the release required: one that cannot be fetched is the
        // host's problem here, not a skip.
        if let Some(e) = cause.downcast_ref::<RunError>() {
            let message = e.to_string();
            return verdict::decide(verdict::Ended::Unfinished {
                why: e.unfinished(),
                message: &message,
                release: "the release",
                required: true,
            })
            .status
            .exit_code();
        }
        // Building an image or a kernel (`images build`, `images import`)
        // failed, or QEMU did: the host's problem, as in a trial.
        if cause.downcast_ref::<vm::VmError>().is_some()
            || cause.downcast_ref::<image::ImageError>().is_some()
            || cause.downcast_ref::<kernel::KernelError>().is_some()
        {
            return EXIT_ENV;
        }
    }
    EXIT_FAIL
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// What every command is given: the run's settings, and how results and
/// progress are shown.
#[derive(Clone)]
struct Outputs {
    colour: bool,
    /// What the library's layers report their progress to.
    events: Events,
    /// Renders `events`; the interactive shell stops its live lines.
    terminal: Arc<Terminal>,
    /// The environment's settings with the options over them.
    settings: Settings,
}

impl Outputs {
    /// The cache, reporting its builds to the terminal.
    fn cache(&self) -> Cache {
        self.settings.cache().with_events(self.events.clone())
    }
}

fn dispatch(command: Command, outputs: Outputs) -> Result<u8> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    // The host commands need no project: they check and fix this machine.
    match command {
        Command::Setup => return setup(&outputs),
        Command::Doctor { format } => {
            return doctor(
                outputs.settings.project(&cwd).ok().as_ref(),
                format,
                &outputs,
            )
        }
        _ => {}
    }
    let project = outputs.settings.project(&cwd)?;
    match command {
        Command::Setup | Command::Doctor { .. } => unreachable!("answered above"),
        Command::List { format } => cli::project::list(&project, format),
        Command::Matrix { format } => cli::project::matrix(&project, format, &outputs),
        Command::New { name } => cli::project::new_scenario(&project, &name),
        Command::Accept { names, list } => cli::project::accept(&project, &names, list),
        Command::Images(command) => images(&project, command, &outputs),
        Command::Shell { guest } => cli::guests::shell(&project, &guest, &outputs),
        Command::Exec {
            guest,
            timeout,
            command,
        } => cli::guests::exec(&project, &guest, timeout, &command, &outputs),
        Command::Repro(args) => cli::trials::repro(&project, args, &outputs),
        Command::Run(args) => cli::trials::run(&project, args, &outputs),
    }
}

fn run_options(outputs: &Outputs) -> Result<RunOptions> {
    host::ensure_tools(&outputs.events, outputs.settings.install)?;
    let accel = outputs.settings.accel()?;
    outputs.events.line(&format!(
        "vmrepro: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    ));
    Ok(outputs.settings.run_options(outputs.cache(), accel))
}

fn parse_kernel(project: &Project, name: &str) -> Result<KernelFlavour> {
    Ok(project.kernel_flavour(name)?)
}

/// The project's kernel flavours that are built from a recipe.
fn built_kernels(project: &Project) -> Vec<(&str, &vmrepro::project::recipe::KernelRecipe)> {
    project
        .kernels
        .iter()
        .filter_map(|(name, source)| match source {
            vmrepro::project::recipe::KernelSource::Recipe(recipe) => Some((name.as_str(), recipe)),
            vmrepro::project::recipe::KernelSource::Prebuilt { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_map_to_exit_2() {
        let error = anyhow::Error::from(UsageError("bad".into()));
        assert_eq!(classify(&error), EXIT_USAGE);
    }
}
