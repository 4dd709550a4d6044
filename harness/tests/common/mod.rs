//! Helpers the test targets share.

// Each test target uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The settings this test process's environment gives, read as `vmrepro`
/// reads them; a value it does not accept stops the test with its name.
pub fn settings() -> vmrepro::settings::Settings {
    match vmrepro::settings::Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => panic!("the environment's settings: {e}"),
    }
}

/// The project's root: the folder above the harness crate.
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Copies a file, or a folder with everything in it.
pub fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Writes `text` to `to`, creating its folder.
pub fn copy_text(text: &str, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(to, text)
}

/// A project of its own in a temporary folder: this project's image and
/// kernel recipes, the scenario files given as (file name, text), and an
/// empty `snapshots/`.
pub fn scratch_project(scenarios: &[(&str, &str)]) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    copy(&root().join("images"), &dir.path().join("images"))?;
    std::fs::create_dir_all(dir.path().join("scenarios"))?;
    std::fs::create_dir_all(dir.path().join("snapshots"))?;
    for (name, text) in scenarios {
        copy_text(text, &dir.path().join("scenarios").join(name))?;
    }
    Ok(dir)
}
