//! Progress lines on standard error for long work: image builds, boots, steps.
//!
//! Deliberately plain (one line per event, prefixed with the elapsed time) so
//! that it reads the same in a terminal, in `cargo test` output and in a CI log.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Silences progress lines (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Prints one progress line: `[  12.3s] label: message`.
pub fn note(label: &str, message: &str) {
    let elapsed = start().elapsed().as_secs_f64();
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let _ = writeln!(std::io::stderr(), "[{elapsed:7.1}s] {label}: {message}");
}
