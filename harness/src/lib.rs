//! vmrepro turns "my machine breaks after a reboot" bug reports into VM-based
//! regression tests.
//!
//! One folder per layer, and data flows one way through them:
//!
//! - [`project`]: what the project's files say: scenarios (model, parser,
//!   sharding), release and kernel recipes, and the folder that holds them;
//! - [`media`]: what a trial boots, built once and kept in the [`media::cache`]:
//!   release images, the Linode-style kernel, data disks;
//! - [`guest`]: one running guest: QEMU and its monitor, the root shell on
//!   the control port, saved booted states;
//! - [`check`]: what a trial came to: captures, the evidence, the verdict,
//!   the snapshot comparison, the report and the table rows;
//! - [`run`]: one scenario on one cell through all of the above, and many
//!   cells at once;
//! - [`host`]: the machine the harness runs on (host tools, supervised
//!   processes, progress events), which every layer may use.
//!
//! [`settings`] is what a run is told from outside (the environment, the
//! command line), read once and handed down in parts.
//!
//! No layer prints its progress: each emits events to the
//! [`host::progress::Events`] handle it is given (through the cache and the
//! run options), and the caller chooses the reporter: live or plain lines
//! on a terminal, or none.
//!
//! Each layer's public items are what the command line, the test targets
//! and the benchmark use; the rest is the crate's own.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod check;
pub mod guest;
pub mod host;
pub mod media;
pub mod project;
pub mod run;
pub mod settings;
mod text;

#[cfg(test)]
mod layering {
    //! The layers' one-way flow, checked: a layer may use the layers below
    //! it, never one above.

    use std::path::Path;

    /// Each layer and what it may use besides itself and `text`.
    const BELOW: &[(&str, &[&str])] = &[
        ("host", &[]),
        ("project", &[]),
        ("media", &["project", "host"]),
        ("guest", &["media", "project", "host"]),
        ("check", &["guest", "media", "project", "host"]),
        ("run", &["check", "guest", "media", "project", "host"]),
    ];

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_layer_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for (layer, below) in BELOW {
            let mut files = Vec::new();
            sources(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no sources in src/{layer}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for (other, _) in BELOW {
                    let used = text.contains(&format!("crate::{other}::"))
                        || text.contains(&format!("crate::{other};"));
                    if used && other != layer && !below.contains(other) {
                        wrong.push(format!("{} uses crate::{other}", file.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
        // Nothing below the settings uses them: each layer is given its part.
        let mut files = Vec::new();
        for (layer, _) in BELOW {
            sources(&src.join(layer), &mut files);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                !text.contains("crate::settings"),
                "{} uses the settings",
                file.display()
            );
        }
    }

    /// The README's architecture section names every file under `src/`,
    /// and only those.
    #[test]
    fn the_architecture_section_lists_every_file() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(manifest.join("../README.md")).expect("README.md");
        let section = readme
            .split_once("### Architecture")
            .and_then(|(_, rest)| rest.split_once("```\nharness/src/\n"))
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .expect("the architecture block in README.md");
        let mut listed = std::collections::BTreeSet::new();
        let mut folder = String::new();
        for line in section.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let indent = line.len() - line.trim_start().len();
            if name.ends_with('/') && indent == 2 {
                folder = name.to_owned();
            } else if indent == 2 {
                folder.clear();
                listed.insert(name.to_owned());
            } else if indent == 4 {
                listed.insert(format!("{folder}{name}"));
            }
        }
        let src = manifest.join("src");
        let mut present = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&src).expect("src").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                for inner in std::fs::read_dir(entry.path()).expect("folder").flatten() {
                    present.insert(format!("{name}/{}", inner.file_name().to_string_lossy()));
                }
            } else {
                present.insert(name);
            }
        }
        let missing: Vec<_> = present.difference(&listed).collect();
        let gone: Vec<_> = listed.difference(&present).collect();
        assert!(
            missing.is_empty() && gone.is_empty(),
            "README's architecture section lacks {missing:?} and lists {gone:?}, which do not exist"
        );
    }

    #[test]
    fn the_environment_is_read_in_one_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        // The settings read it; `PATH` is where host commands are found.
        // (Spelt in pieces, so that this test does not find itself.)
        let env = concat!("env", "::");
        let allowed = [
            ("settings.rs", format!("{env}vars_os()")),
            ("host/mod.rs", format!("{env}var_os(\"PATH\")")),
        ];
        let calls = [
            "var(",
            "var_os(",
            "vars",
            concat!("set", "_var("),
            "remove_var(",
        ]
        .map(|c| format!("{env}{c}"));
        let mut wrong = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let name = file.strip_prefix(&src).unwrap_or(file).to_string_lossy();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let reads = calls.iter().any(|call| code.contains(call.as_str()));
                let fine = allowed
                    .iter()
                    .any(|(f, call)| name == *f && code.contains(call.as_str()));
                if reads && !fine {
                    wrong.push(format!("{name}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "the environment read outside the settings:\n{}",
            wrong.join("\n")
        );
    }
}
