//! A stand-in guest for unit tests: a local bash behind a pty (via
//! `script(1)`), with terminal echo on, driven through a real [`Console`].
//! It tests the harness's framing and the scripts it sends to a shell, not
//! a guest: what only a guest does (booting, systemd, disks) is up to the
//! test that uses it.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::console::Console;

/// A local shell with a console attached and ready.
pub(crate) struct LocalShell {
    child: Child,
    /// The console on the shell's terminal.
    pub(crate) console: Console,
    /// The folder the console's runner lives in: the test's own, not the
    /// host's /run, which other tests share.
    pub(crate) home: tempfile::TempDir,
}

impl Drop for LocalShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalShell {
    /// A shell whose terminal has already been sent `typed_ahead`, with
    /// `path_first` (when given) ahead of the commands on its `PATH`.
    pub(crate) fn start(typed_ahead: &str, path_first: Option<&Path>) -> LocalShell {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let input = theirs.try_clone().expect("clone");
        // script(1) runs its command with a shell, which puts `path_first`
        // ahead of the PATH it was given.
        let shell = match path_first {
            Some(dir) => format!(
                "PATH={}:\"$PATH\" exec bash --norc --noprofile -i",
                crate::text::shell_quote(&dir.display().to_string())
            ),
            None => "exec bash --norc --noprofile -i".to_owned(),
        };
        let mut command = Command::new("script");
        command
            .args(["-q", "-f", "-c", &shell, "/dev/null"])
            .env("PS1", "fake-guest# ")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(input)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::null());
        let child = command.spawn().expect("script(1) from util-linux");
        {
            use std::io::Write as _;
            (&ours)
                .write_all(typed_ahead.as_bytes())
                .expect("type ahead");
        }
        let mut console = Console::attach(ours, None).expect("attach");
        let home = tempfile::tempdir().expect("a home for the runner");
        console.set_home(home.path());
        console
            .wait_ready("fake guest", Duration::from_secs(20))
            .expect("ready");
        LocalShell {
            child,
            console,
            home,
        }
    }
}
