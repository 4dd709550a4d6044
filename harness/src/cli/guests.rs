//! `vmrepro shell` and `vmrepro exec`: a guest booted for a person or a
//! command.

use anyhow::Result;

use vmrepro::check::verdict::EXIT_PASS;
use vmrepro::project::{Cell, Project, Scenario};
use vmrepro::run;

use super::flags::GuestArgs;
use super::terminal::interactive;
use crate::{parse_kernel, run_options, Outputs, EXIT_EXEC};

/// `vmrepro shell`: a root shell on the user's terminal.
pub(crate) fn shell(project: &Project, guest: &GuestArgs, outputs: &Outputs) -> Result<u8> {
    let (scenario, cell) = guest_of(project, guest)?;
    let options = run_options(outputs)?;
    let terminal = outputs.terminal.clone();
    run::shell(project, scenario.as_ref(), &cell, &options, |stream| {
        // The terminal is the shell's now.
        terminal.stop_live();
        interactive(stream)
    })?;
    eprintln!("\nvmrepro: left the shell; the guest is stopped");
    Ok(EXIT_PASS)
}

/// `vmrepro exec`: one command, its output and its exit status passed
/// through.
pub(crate) fn exec(
    project: &Project,
    guest: &GuestArgs,
    timeout: u64,
    command: &[String],
    outputs: &Outputs,
) -> Result<u8> {
    let (scenario, cell) = guest_of(project, guest)?;
    let options = run_options(outputs)?;
    let out = run::exec(
        project,
        scenario.as_ref(),
        &cell,
        &options,
        command,
        std::time::Duration::from_secs(timeout),
    )?;
    outputs.terminal.stop_live();
    outp!("{}", out.stdout);
    eprint!("{}", out.stderr);
    Ok(u8::try_from(out.status).unwrap_or(EXIT_EXEC))
}

/// The cell (and the scenario whose steps run first) that `shell` and
/// `exec` boot.
fn guest_of(project: &Project, guest: &GuestArgs) -> Result<(Option<Scenario>, Cell)> {
    let scenario = guest
        .after
        .as_deref()
        .map(|name| project.scenario(name))
        .transpose()?;
    let cell = Cell {
        release: project.recipe(&guest.release)?.release.clone(),
        kernel: parse_kernel(project, &guest.kernel)?,
    };
    Ok((scenario, cell))
}
