//! Progress output for long work: image and kernel builds, boots, steps.
//!
//! Every event has a label (one per VM, image or kernel) and a message. On a
//! terminal, with live mode on, each label gets one line that is redrawn in
//! place with its latest message and elapsed time; otherwise each event is
//! one plain line prefixed with the elapsed time, which reads the same in
//! `cargo test` output and in a CI log.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

struct Live {
    bars: MultiProgress,
    lines: HashMap<String, ProgressBar>,
}

fn live() -> &'static Mutex<Option<Live>> {
    static LIVE: OnceLock<Mutex<Option<Live>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(None))
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Silences progress output (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Turns on the live display (one redrawn line per label) when standard
/// error is a terminal; a no-op otherwise.
pub fn set_live(enabled: bool) {
    let target = ProgressDrawTarget::stderr();
    if !enabled || target.is_hidden() {
        return;
    }
    if let Ok(mut live) = live().lock() {
        *live = Some(Live {
            bars: MultiProgress::with_draw_target(target),
            lines: HashMap::new(),
        });
    }
}

/// Reports an event: `label: message`.
pub(crate) fn note(label: &str, message: &str) {
    let elapsed = start().elapsed().as_secs_f64();
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut guard) = live().lock() {
        if let Some(live) = guard.as_mut() {
            let bar = live.lines.entry(label.to_owned()).or_insert_with(|| {
                let bar = live.bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} [{elapsed:>4}] {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(label.to_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            // Keep every line within the terminal: a wrapped line breaks
            // the in-place redraw.
            let room = usize::from(terminal_size().1)
                .saturating_sub(label.chars().count() + 12)
                .max(20);
            bar.set_message(message.chars().take(room).collect::<String>());
            return;
        }
    }
    let _ = writeln!(std::io::stderr(), "[{elapsed:7.1}s] {label}: {message}");
}

/// Ends a label's line with a final message (live mode) or prints it.
pub(crate) fn finish(label: &str, message: &str) {
    if let Ok(mut guard) = live().lock() {
        if let Some(live) = guard.as_mut() {
            if let Some(bar) = live.lines.remove(label) {
                bar.finish_with_message(message.to_owned());
                return;
            }
        }
    }
    note(label, message);
}

/// Ends the live display, leaving finished lines as they are; later events
/// print plain lines. Needed before handing the terminal to something else,
/// such as an interactive shell.
pub fn stop_live() {
    if let Ok(mut guard) = live().lock() {
        if let Some(live) = guard.take() {
            for (_, bar) in live.lines {
                bar.abandon();
            }
        }
    }
}

/// Rows and columns of the terminal on standard output (24×80 if unknown).
pub fn terminal_size() -> (u16, u16) {
    [console::Term::stdout(), console::Term::stderr()]
        .iter()
        .find_map(|term| term.size_checked())
        .filter(|(rows, _)| *rows > 0)
        .unwrap_or((24, 80))
}

/// Prints a line without tearing the live display.
pub fn println(text: &str) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(guard) = live().lock() {
        if let Some(live) = guard.as_ref() {
            let _ = live.bars.println(text);
            return;
        }
    }
    let _ = writeln!(std::io::stderr(), "{text}");
}
