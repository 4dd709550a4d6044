//! The crate's one `unsafe` block, kept here alone so it is easy to find
//! and to review: everything else goes through safe wrappers (`nix`).

/// Makes `command`'s process die when the harness does, even a SIGKILLed
/// harness, which cannot clean up after itself (Linux's parent-death
/// signal).
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // The one `unsafe` of the crate. `pre_exec` runs in the forked child
    // before exec, where only async-signal-safe calls are allowed.
    // SAFETY: set_pdeathsig is a single prctl(2) call, async-signal-safe,
    // and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
