//! The commands about the project's files: `list`, `matrix`, `new`,
//! `accept`.

use anyhow::{Context as _, Result};

use vmrepro::check::report;
use vmrepro::check::verdict::EXIT_PASS;
use vmrepro::project::Project;

use super::flags::{Format, ListFormat};
use super::trials::print_rows;
use crate::{Outputs, UsageError};

/// `vmrepro list`: the scenarios and their cells.
pub(crate) fn list(project: &Project, format: ListFormat) -> Result<u8> {
    let scenarios = project.scenarios()?;
    if format == ListFormat::Json {
        let list: Vec<serde_json::Value> = scenarios
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "path": s.path,
                    "cells": s.matrix.cells().iter().map(|c| serde_json::json!({
                        "release": c.release,
                        "kernel": c.kernel.name(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(EXIT_PASS);
    }
    for scenario in scenarios {
        out!(
            "{}: {}",
            scenario.name,
            scenario.matrix.cell_names().join(" ")
        );
    }
    Ok(EXIT_PASS)
}

/// `vmrepro matrix`: the outcome table of the trials run so far.
pub(crate) fn matrix(project: &Project, format: Format, outputs: &Outputs) -> Result<u8> {
    let mut rows = report::load_rows(&project.artifacts_root());
    report::sort_rows(&mut rows);
    print_rows(&rows, format, outputs)?;
    Ok(EXIT_PASS)
}

/// `vmrepro accept`: pending snapshots made the committed ones, or listed.
pub(crate) fn accept(project: &Project, names: &[String], list: bool) -> Result<u8> {
    let dir = project.snapshots_dir();
    if list {
        for name in vmrepro::check::snapshot::pending(&dir)? {
            out!("{}", dir.join(format!("{name}.snap.new")).display());
        }
        return Ok(EXIT_PASS);
    }
    let accepted = vmrepro::check::snapshot::accept(&dir, names)?;
    if accepted.is_empty() {
        return Err(UsageError(format!(
            "no pending snapshot{} in {}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" for {}", names.join(", "))
            },
            dir.display()
        ))
        .into());
    }
    for name in accepted {
        out!("accepted {}", dir.join(format!("{name}.snap")).display());
    }
    Ok(EXIT_PASS)
}

/// A scenario skeleton that runs as written.
const SKELETON: &str = include_str!("../skeleton.toml");

pub(crate) fn new_scenario(project: &Project, name: &str) -> Result<u8> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(UsageError(format!("{name:?}: use only letters, digits, `-` and `_`")).into());
    }
    let path = project.scenarios_dir().join(format!("{name}.toml"));
    if path.exists() {
        return Err(UsageError(format!("{} exists already", path.display())).into());
    }
    std::fs::write(&path, SKELETON.replace("NAME", name))
        .with_context(|| format!("writing {}", path.display()))?;
    out!(
        "wrote {}\nedit it, then: vmrepro repro {name}",
        path.display()
    );
    Ok(EXIT_PASS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrepro::project::Scenario;

    #[test]
    fn the_skeleton_is_a_valid_scenario() {
        let text = SKELETON.replace("NAME", "example");
        let scenario = Scenario::parse(
            std::path::Path::new("example.toml"),
            &text,
            &vmrepro::project::Known {
                releases: vec!["bookworm".to_owned()],
                kernels: vec!["stock".to_owned()],
            },
        )
        .expect("the skeleton parses");
        assert_eq!(scenario.name, "example");
        assert!(scenario.has_reboot());
        assert_eq!(scenario.expect.survive_reboot, ["saved configuration"]);
        // The name goes where the scenario's name goes, and nowhere else
        // (not into the examples of other keys).
        let placed: Vec<&str> = SKELETON
            .lines()
            .filter(|line| line.contains("NAME"))
            .collect();
        assert_eq!(
            placed,
            [
                "name = \"NAME\"",
                "# Captures are recorded into the snapshot (snapshots/NAME@RELEASE-KERNEL.snap),"
            ]
        );
    }
}
