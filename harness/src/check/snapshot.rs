//! Turning a trial's captures into an `insta` snapshot and comparing it with
//! the committed one in `snapshots/`.

use std::cell::Cell;
use std::path::Path;
use std::sync::Once;

use crate::check::capture::Capture;
use crate::check::outcome::Outcome;
use crate::project::{Project, Scenario};

/// A snapshot did not match, or none is committed yet.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot is committed for this trial: its first run.
    #[error("no committed snapshot {path} yet; the captures were written beside it as {path}.new (unless INSTA_UPDATE=no): read it, then accept it with `vmrepro accept {name}` from the project directory")]
    New {
        /// The snapshot's name.
        name: String,
        /// The file that would hold it.
        path: String,
    },
    /// The captures differ from the committed snapshot.
    #[error("snapshot {name} does not match {path}: the report shows the difference; if the new captures are right, accept them with `vmrepro accept {name}`")]
    Differs {
        /// The snapshot's name.
        name: String,
        /// The committed file.
        path: String,
        /// The difference, as a unified diff of lines (committed, then new).
        diff: String,
    },
    /// insta could not compare or store the snapshot (an unreadable file,
    /// a folder it may not write to, one of its variables set to a value
    /// it refuses): the host's problem, not the trial's.
    #[error("snapshot {path} could not be compared: {message}")]
    Failed {
        /// The committed file, or where it would be.
        path: String,
        /// What insta said.
        message: String,
    },
}

/// The snapshot name of a trial: `scenario@release-kernel`.
pub(crate) fn name(scenario: &str, cell: &str) -> String {
    format!("{scenario}@{cell}")
}

/// Renders captures as the snapshot's text: one section per capture, with
/// its exit status.
pub fn render(captures: &[Capture]) -> String {
    let mut out = String::new();
    for capture in captures {
        out.push_str(&format!(
            "== {} (exit {}) ==\n",
            capture.name, capture.status
        ));
        out.push_str(&capture.text);
        if !capture.text.is_empty() && !capture.text.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Compares a trial's end-of-flow captures with its committed snapshot.
pub(crate) fn compare_outcome(
    project: &Project,
    scenario: &Scenario,
    outcome: &Outcome,
) -> Result<(), SnapshotError> {
    let info = insta::internals::Content::Map(
        [
            ("scenario", scenario.name.as_str()),
            ("release", outcome.cell.release.as_str()),
            ("kernel", outcome.cell.kernel.name()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect(),
    );
    compare(
        &project.root,
        &project.snapshots_dir(),
        &name(&scenario.name, &outcome.cell.to_string()),
        &Meta {
            description: &scenario.description,
            input_file: Some(&scenario.path),
            info: Some(&info),
        },
        &render(&outcome.captures),
    )
}

/// What a snapshot file's header says about it, so that a reviewer in
/// `cargo insta review` sees which scenario file and cell it belongs to.
pub struct Meta<'a> {
    /// The scenario's description.
    pub description: &'a str,
    /// The scenario file (stored relative to the project).
    pub input_file: Option<&'a Path>,
    /// Structured details: scenario, release, kernel.
    pub info: Option<&'a insta::internals::Content>,
}

/// Compares `content` with `snapshots_dir/NAME.snap` through insta, which
/// prints the diff (unless `INSTA_OUTPUT=none`) and, outside CI, writes
/// `NAME.snap.new` for review. The paths in a snapshot's header are written
/// relative to `project_root`.
pub fn compare(
    project_root: &Path,
    snapshots_dir: &Path,
    name: &str,
    meta: &Meta<'_>,
    content: &str,
) -> Result<(), SnapshotError> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshots_dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(meta.description);
    if let Some(file) = meta.input_file {
        settings.set_input_file(file);
    }
    if let Some(info) = meta.info {
        settings.set_raw_info(info);
    }
    quiet_insta_panics();
    let path = snapshots_dir.join(format!("{name}.snap"));
    let new = !path.exists();
    let result = settings.bind(|| {
        COMPARING.with(|c| c.set(true));
        // What `insta::assert_snapshot!` expands to, with the project as
        // the workspace: the macro would take it from `INSTA_WORKSPACE_ROOT`
        // or ask `cargo metadata` about the harness's own source folder,
        // neither of which is the project a run was given. (A hidden entry
        // point: insta is pinned to one version in Cargo.toml for this.)
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            insta::_macro_support::assert_snapshot(
                (name.to_owned(), content).into(),
                project_root,
                "compare",
                module_path!(),
                file!(),
                line!(),
                "content",
            )
        }));
        COMPARING.with(|c| c.set(false));
        result
    });
    let shown = path.display().to_string();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SnapshotError::Failed {
            path: shown,
            message: e.to_string(),
        }),
        Err(_) if new => Err(SnapshotError::New {
            name: name.to_owned(),
            path: shown,
        }),
        // insta reports a mismatch by panicking, and anything else it
        // cannot do too: the two are told apart by comparing here, the
        // only time the committed file is read again.
        Err(panic) => {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            let body = snapshot_body(&committed);
            if differs(body, content) {
                Err(SnapshotError::Differs {
                    diff: diff(body, content),
                    name: name.to_owned(),
                    path: shown,
                })
            } else {
                Err(SnapshotError::Failed {
                    path: shown,
                    message: panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("it stopped without saying why")
                        .to_owned(),
                })
            }
        }
    }
}

/// Whether two snapshot bodies differ beyond trailing blank space, which
/// insta ignores too.
fn differs(old: &str, new: &str) -> bool {
    old.trim_end() != new.trim_end()
}

/// The contents of a snapshot file: what follows its header.
fn snapshot_body(file: &str) -> &str {
    file.strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map_or(file, |(_, body)| body)
}

/// A unified diff of lines, `old` to `new`, with three lines of context.
fn diff(old: &str, new: &str) -> String {
    // Both end in one newline, so that a difference in trailing blank
    // lines (which the comparison ignores too) is not shown as one.
    let (old, new) = (
        format!("{}\n", old.trim_end()),
        format!("{}\n", new.trim_end()),
    );
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("committed", "this run")
        .to_string()
}

/// The pending snapshots (`NAME.snap.new`) in `snapshots_dir`, by name.
pub fn pending(snapshots_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = match std::fs::read_dir(snapshots_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".snap.new"))
                    .map(str::to_owned)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    Ok(names)
}

/// Accepts pending snapshots: `NAME.snap.new` becomes `NAME.snap`, as
/// `cargo insta accept` does. `wanted` selects by scenario name or by
/// `SCENARIO@CELL`; all pending ones when empty. Returns the names accepted.
pub fn accept(snapshots_dir: &Path, wanted: &[String]) -> std::io::Result<Vec<String>> {
    let mut accepted = Vec::new();
    for name in pending(snapshots_dir)? {
        let scenario = name.split('@').next().unwrap_or("");
        if !wanted.is_empty() && !wanted.iter().any(|w| *w == name || *w == scenario) {
            continue;
        }
        std::fs::rename(
            snapshots_dir.join(format!("{name}.snap.new")),
            snapshots_dir.join(format!("{name}.snap")),
        )?;
        accepted.push(name);
    }
    Ok(accepted)
}

thread_local! {
    static COMPARING: Cell<bool> = const { Cell::new(false) };
}

/// insta reports a mismatch by printing its diff and then panicking; the
/// panic is caught and turned into a [`SnapshotError`], so its message and
/// backtrace would only be noise after the diff.
fn quiet_insta_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !COMPARING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_lines_and_ignores_trailing_blank_lines() {
        let text = diff(
            "== a (exit 0) ==\nold\nsame\n\n",
            "== a (exit 0) ==\nnew\nsame",
        );
        assert_eq!(
            text,
            "--- committed\n+++ this run\n@@ -1,3 +1,3 @@\n == a (exit 0) ==\n-old\n+new\n same\n"
        );
        assert_eq!(
            snapshot_body("---\nsource: x\ninfo:\n  a: b\n---\n== a ==\nx\n"),
            "== a ==\nx\n"
        );
        assert_eq!(snapshot_body("no header"), "no header");
    }
}
