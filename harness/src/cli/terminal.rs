//! The user's terminal handed to a guest's shell: raw mode, and an escape
//! key that hands it back.

use anyhow::Result;

use crate::UsageError;

/// `--shell-fail` opens a shell on the user's terminal; without one it
/// would wait for input that never comes.
pub(crate) fn need_terminal() -> Result<()> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return Ok(());
    }
    Err(UsageError(
        "--shell-fail opens a shell in the failed guest and needs a terminal on standard input and output; without one (CI), read the report and the artifacts instead"
            .into(),
    )
    .into())
}

/// The key that leaves the interactive shell: Ctrl-].
const ESCAPE: u8 = 0x1d;

/// Connects the terminal to the guest's shell until Ctrl-] or until the
/// guest goes away.
pub(crate) fn interactive(stream: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    eprintln!("vmrepro: root shell in the guest; Ctrl-] leaves and stops the guest\r");
    let _raw = RawTerminal::enter();
    let done = Arc::new(AtomicBool::new(false));
    let mut to_guest = stream.try_clone()?;
    to_guest.write_all(b"\n")?;
    let input_done = done.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        while !input_done.load(Ordering::SeqCst) {
            match stdin.read(&mut byte) {
                Ok(1) if byte[0] != ESCAPE => {
                    if to_guest.write_all(&byte).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        input_done.store(true, Ordering::SeqCst);
    });
    let mut from_guest = stream;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    while !done.load(Ordering::SeqCst) {
        match from_guest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Puts the terminal in raw mode (when standard input is one) and restores
/// it when dropped.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            // Not a terminal: nothing to change or restore.
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}
