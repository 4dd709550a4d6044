//! Progress of long work (image and kernel builds, boots, steps) as events.
//!
//! The layers emit [`Event`]s through an [`Events`] handle they are given;
//! they never print. What becomes of the events is the caller's choice: the
//! command line renders them on a [`Terminal`] (live lines or plain ones),
//! the test target as plain lines, a quiet run drops them.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One thing the harness has to say while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// What a piece of work (`label`: one VM, image or kernel) is doing now.
    Note {
        /// The piece of work.
        label: &'a str,
        /// What it does.
        message: &'a str,
    },
    /// A piece of work is done.
    Finished {
        /// The piece of work.
        label: &'a str,
        /// How it ended.
        message: &'a str,
    },
    /// A line of its own, such as the accelerator chosen.
    Line(&'a str),
}

/// Renders events. Implementations must not block for long: events come
/// from the threads doing the work.
pub trait Reporter: Send + Sync {
    /// Shows (or drops) one event.
    fn report(&self, event: &Event<'_>);
}

/// Where the layers send their events: a cheap, cloneable handle on a
/// [`Reporter`].
#[derive(Clone)]
pub struct Events(Arc<dyn Reporter>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    /// Events for `reporter`.
    pub fn new(reporter: Arc<dyn Reporter>) -> Events {
        Events(reporter)
    }

    /// Events nobody sees.
    pub fn silent() -> Events {
        struct Silent;
        impl Reporter for Silent {
            fn report(&self, _: &Event<'_>) {}
        }
        Events(Arc::new(Silent))
    }

    pub(crate) fn note(&self, label: &str, message: &str) {
        self.0.report(&Event::Note { label, message });
    }

    pub(crate) fn finish(&self, label: &str, message: &str) {
        self.0.report(&Event::Finished { label, message });
    }

    /// A line of its own.
    pub fn line(&self, text: &str) {
        self.0.report(&Event::Line(text));
    }
}

/// Events on standard error: on a terminal in live mode, one line per label
/// redrawn in place with its latest message and elapsed time; otherwise one
/// plain line per event, prefixed with the elapsed time, which reads the same
/// in `cargo test` output and in a CI log.
pub struct Terminal {
    quiet: bool,
    start: Instant,
    live: Mutex<Option<Live>>,
}

struct Live {
    bars: MultiProgress,
    lines: HashMap<String, ProgressBar>,
}

impl Terminal {
    /// Plain lines (or nothing when `quiet`); live lines when `live` is
    /// asked for and standard error is a terminal.
    pub fn new(quiet: bool, live: bool) -> Terminal {
        let target = ProgressDrawTarget::stderr();
        let live = (live && !quiet && !target.is_hidden()).then(|| Live {
            bars: MultiProgress::with_draw_target(target),
            lines: HashMap::new(),
        });
        Terminal {
            quiet,
            start: Instant::now(),
            live: Mutex::new(live),
        }
    }

    /// Ends the live display, leaving finished lines as they are; later
    /// events print plain lines. Needed before handing the terminal to
    /// something else, such as an interactive shell.
    pub fn stop_live(&self) {
        if let Ok(mut guard) = self.live.lock() {
            if let Some(live) = guard.take() {
                for (_, bar) in live.lines {
                    bar.abandon();
                }
            }
        }
    }

    fn plain(&self, label: &str, message: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let _ = writeln!(std::io::stderr(), "[{elapsed:7.1}s] {label}: {message}");
    }
}

impl Reporter for Terminal {
    fn report(&self, event: &Event<'_>) {
        if self.quiet {
            return;
        }
        let Ok(mut guard) = self.live.lock() else {
            return;
        };
        match (event, guard.as_mut()) {
            (Event::Note { label, message }, Some(live)) => {
                let bar = live.lines.entry((*label).to_owned()).or_insert_with(|| {
                    let bar = live.bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix:.bold} [{elapsed:>4}] {wide_msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix((*label).to_owned());
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                // Keep every line within the terminal: a wrapped line
                // breaks the in-place redraw.
                let room = usize::from(terminal_size().1)
                    .saturating_sub(label.chars().count() + 12)
                    .max(20);
                bar.set_message(message.chars().take(room).collect::<String>());
            }
            (Event::Finished { label, message }, Some(live)) => match live.lines.remove(*label) {
                Some(bar) => bar.finish_with_message((*message).to_owned()),
                None => self.plain(label, message),
            },
            (Event::Line(text), Some(live)) => {
                let _ = live.bars.println(*text);
            }
            (Event::Note { label, message } | Event::Finished { label, message }, None) => {
                self.plain(label, message)
            }
            (Event::Line(text), None) => {
                let _ = writeln!(std::io::stderr(), "{text}");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is told, as a test's reporter would.
    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl Reporter for Record {
        fn report(&self, event: &Event<'_>) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(format!("{event:?}"));
            }
        }
    }

    #[test]
    fn events_reach_the_reporter_they_were_given() {
        let record = Arc::new(Record::default());
        let events = Events::new(record.clone());
        events.note("image bookworm", "bootstrapping");
        events.clone().finish("image bookworm", "built");
        events.line("accelerator tcg");
        Events::silent().note("x", "nobody hears this");
        let seen = record.0.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [
                "Note { label: \"image bookworm\", message: \"bootstrapping\" }",
                "Finished { label: \"image bookworm\", message: \"built\" }",
                "Line(\"accelerator tcg\")",
            ]
        );
    }
}
