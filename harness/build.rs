//! Builds the project's release and kernel recipes (`../images`) into the
//! binary, so that `vmrepro` run anywhere knows every release without a
//! checkout; a project's own `images/` overrides them file by file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let images = manifest.join("../images");
    println!("cargo:rerun-if-changed={}", images.display());
    let mut out = String::from(
        "/// The recipes built into the binary: (path under `images/`, text).\npub(crate) const BUILT_IN: &[(&str, &str)] = &[\n",
    );
    let mut files = Vec::new();
    collect(&images, &images, &mut files);
    files.sort();
    for (relative, absolute) in files {
        println!("cargo:rerun-if-changed={}", absolute.display());
        let _ = writeln!(
            out,
            "    ({relative:?}, include_str!({:?})),",
            absolute.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("built_in.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

/// Every `.toml` and `.config` file under `dir`, with its path relative to
/// `root`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, files);
        } else if path
            .extension()
            .is_some_and(|e| e == "toml" || e == "config")
        {
            if let Ok(relative) = path.strip_prefix(root) {
                files.push((relative.to_string_lossy().into_owned(), path.clone()));
            }
        }
    }
}
