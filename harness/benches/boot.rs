//! Boot and trial timings, printed, never asserted.
//!
//! `cargo bench` runs the sections that give the performance targets (`warm`,
//! `suite`, `kernel`, `first-run`) and prints them together at the end;
//! `cargo bench -- warm matrix` runs the ones named:
//!
//! - `warm`: the founding scenario on bookworm × stock: one bare cold boot,
//!   the scenario with a cold first boot, the scenario warm, the ratios and
//!   where the warm trial's time went;
//! - `suite`: every scenario on every reachable cell, warm, with as many
//!   guests as cores: each trial's time phase by phase, the harness's own
//!   time per trial, and the suite's wall time against the sum of its
//!   reboots (from asking to settled) shared among the cores;
//! - `kernel`: the Linode-style kernel built from nothing, in a cache of its
//!   own;
//! - `first-run`: the README's first command as on a fresh machine: vmrepro
//!   compiled into an empty target directory, then the founding bug
//!   reproduced with an empty cache (image and kernel built at the same
//!   time, then the trial). The host's packages are already installed here;
//!   that part of a fresh machine's first run is not in the figure;
//! - `boot-path` (only when named): bare cold boots of bookworm with both
//!   kernels under each machine type, firmware, CPU model, memory size and
//!   command line tried, one setting changed at a time from a reference;
//! - `matrix` (only when named): the founding scenario's reachable cells
//!   run cold one at a time, warm one at a time, and warm with as many
//!   guests as cores;
//! - `packages` (only when named): in a cache of its own, bookworm's image
//!   built, then the same with a scenario's package (procps) added, their
//!   ratio and sizes, and how long a second scenario asking for that
//!   package waits for it.
//!
//! Everything runs in one process, side by side, so that the ratios hold on
//! a noisy machine even where the seconds do not. `VMREPRO_BENCH_ROUNDS=N`
//! repeats the boot-path and warm measurements N times and reports medians;
//! `VMREPRO_BENCH_VARIANTS=qboot,512` limits the boot path to the reference
//! and the settings whose names contain those words.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmrepro::check::snapshot;
use vmrepro::guest::vm::{self, Firmware, MachineOptions};
use vmrepro::host::{self, progress};
use vmrepro::media::{cache::Cache, image};
use vmrepro::project::{Cell, FirstBoot, KernelFlavour, Project, Scenario};
use vmrepro::run::{self, BootTimes, Outcome, RunOptions, Start};
use vmrepro::settings::Settings;

const SCENARIO: &str = "netfilter-persistent-reboot";
const RELEASE: &str = "bookworm";
const SECTIONS: &[&str] = &[
    "warm",
    "suite",
    "kernel",
    "first-run",
    "boot-path",
    "matrix",
    "packages",
    "flood",
    "emergency",
];
/// What `cargo bench` runs when no section is named.
const DEFAULT_SECTIONS: &[&str] = &["flood", "emergency", "warm", "suite", "kernel", "first-run"];
/// The README's first command, as its arguments to vmrepro.
const FIRST_COMMAND: &[&str] = &[
    "repro",
    "jessie-chain-emulated",
    "--release",
    "bookworm",
    "--kernel",
    "linode",
];
/// A variant that has not reached a shell by then does not boot.
const VARIANT_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(bad) = named.iter().find(|n| !SECTIONS.contains(&n.as_str())) {
        eprintln!("unknown section {bad:?}; sections: {}", SECTIONS.join(", "));
        return ExitCode::from(2);
    }
    let wanted = |section: &str| {
        if named.is_empty() {
            DEFAULT_SECTIONS.contains(&section)
        } else {
            named.iter().any(|n| n == section)
        }
    };
    match bench(wanted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn bench(wanted: impl Fn(&str) -> bool) -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf();
    // The sections' own scratch projects have no snapshots; insta's diffs
    // of them would bury the figures.
    std::env::set_var("INSTA_OUTPUT", "none");
    // Progress as plain lines, between the figures.
    let events = progress::Events::new(std::sync::Arc::new(progress::Terminal::new(false, false)));
    let settings = Settings::from_env()?;
    let project = settings.project_at(&root)?;
    host::ensure_tools(&events, settings.install)?;
    let accel = settings.accel()?;
    // Each section chooses warm or cold itself.
    let options = RunOptions {
        first_boot: FirstBoot::Warm,
        ..settings.run_options(settings.cache().with_events(events.clone()), accel.clone())
    };
    let rounds: usize = std::env::var("VMREPRO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("vmrepro benchmark");
    println!(
        "  host: {cores} cores, {} MiB available; {}",
        host::available_memory_mib().unwrap_or(0),
        host::qemu_version()
    );
    println!("  accelerator: {} ({})", accel.accel.name(), accel.reason);
    println!(
        "  default machine: {}; rounds: {rounds}\n",
        MachineOptions::default().describe()
    );
    let scenario = project.scenario(SCENARIO)?;
    let mut summary = Vec::new();
    // First: its memory figures are the process's peak, reset before each
    // of its trials, and nothing else has run yet.
    if wanted("flood") {
        summary.extend(flood(&root, &options)?);
    }
    if wanted("emergency") {
        summary.extend(emergency(&project, &options)?);
    }
    if wanted("boot-path") {
        boot_path(&project, &options, rounds)?;
    }
    if wanted("warm") {
        summary.extend(warm_vs_cold(&project, &scenario, &options, rounds)?);
    }
    if wanted("suite") {
        summary.extend(suite(&project, &options, cores)?);
    }
    if wanted("kernel") {
        summary.extend(kernel_build(&project, &events)?);
    }
    if wanted("first-run") {
        summary.extend(first_run(&root)?);
    }
    if wanted("matrix") {
        summary.extend(matrix(&project, &scenario, &options, cores)?);
    }
    if wanted("packages") {
        summary.extend(packages(&project, &events)?);
    }
    if !summary.is_empty() {
        println!("\n== summary ==");
        for line in summary {
            println!("  {line}");
        }
    }
    Ok(())
}

/// A capture that prints 200 MB against one that prints a line, side by
/// side on the same warm cell: the trial's time and this process's peak
/// memory (VmHWM, reset through /proc/self/clear_refs before each trial).
fn flood(root: &Path, options: &RunOptions) -> Result<Vec<String>, Error> {
    println!("== flood: a 200 MB capture against a one-line one (bookworm × stock, warm) ==");
    let dir = tempfile::tempdir()?;
    copy_dir(&root.join("images"), &dir.path().join("images"))?;
    std::fs::create_dir_all(dir.path().join("snapshots"))?;
    std::fs::create_dir_all(dir.path().join("scenarios"))?;
    for (name, command) in [
        ("one-line", "echo one line"),
        (
            "flood",
            "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 200000000",
        ),
    ] {
        std::fs::write(
            dir.path().join(format!("scenarios/{name}.toml")),
            format!(
                "name = \"{name}\"\ndescription = \"bench\"\n[matrix]\nreleases = [\"{RELEASE}\"]\nkernels = [\"stock\"]\n[[capture]]\nname = \"out\"\nrun = \"{command}\"\n"
            ),
        )?;
    }
    let project = Settings::from_env()?.project_at(dir.path())?;
    let cell = cell(KernelFlavour::stock());
    let peak_kib = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut figures = Vec::new();
    for name in ["one-line", "flood"] {
        let scenario = project.scenario(name)?;
        // The warm state first, outside the figures.
        run::warm_state(&project, Some(&scenario), &cell, options)?;
        std::fs::write("/proc/self/clear_refs", "5")?;
        let started = Instant::now();
        let checked = run::check(&project, &scenario, &cell, options);
        let seconds = started.elapsed().as_secs_f64();
        let peak = peak_kib();
        let captures = snapshot::render(
            &checked
                .outcome
                .as_ref()
                .map_err(|e| format!("{name}: {e}"))?
                .captures,
        )
        .len();
        println!(
            "  {name}: trial {seconds:.1}s, captured text {captures} bytes, peak memory {:.1} MiB",
            peak as f64 / 1024.0
        );
        figures.push((seconds, peak));
    }
    let ((small_s, small_kib), (flood_s, flood_kib)) = (figures[0], figures[1]);
    Ok(vec![format!(
        "200 MB capture: trial {flood_s:.1}s ({:.2} × a one-line capture's {small_s:.1}s), peak memory {:.1} MiB ({:.2} × {:.1} MiB)",
        flood_s / small_s,
        flood_kib as f64 / 1024.0,
        flood_kib as f64 / small_kib.max(1) as f64,
        small_kib as f64 / 1024.0
    )])
}

/// The fstab scenario on bookworm × stock: how long after the kernel
/// console first shows emergency mode the trial has its verdict. A thread
/// watches the console log every 10 ms, apart from the harness's own
/// reading of it.
fn emergency(project: &Project, options: &RunOptions) -> Result<Vec<String>, Error> {
    const SCENARIO: &str = "fstab-missing-disk";
    println!("== emergency: from the console's first word of emergency mode to the verdict ({SCENARIO}, {RELEASE} × stock) ==");
    let scenario = project.scenario(SCENARIO)?;
    let cell = cell(KernelFlavour::stock());
    run::warm_state(project, Some(&scenario), &cell, options)?;
    let log = project
        .artifacts_dir(SCENARIO, &cell.to_string())
        .join("console.log");
    let _ = std::fs::remove_file(&log);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || -> Option<Instant> {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let text = std::fs::read(&log).unwrap_or_default();
                if String::from_utf8_lossy(&text)
                    .to_ascii_lowercase()
                    .contains("emergency mode")
                {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    let started = Instant::now();
    let checked = run::check(project, &scenario, &cell, options);
    let verdict = Instant::now();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let shown = watcher.join().map_err(|_| "the console watcher stopped")?;
    let shown = shown.ok_or("the console never showed emergency mode")?;
    let outcome = checked.outcome.as_ref().map_err(|e| e.to_string())?;
    let stop = outcome.timings.stop;
    let after = verdict.duration_since(shown).as_secs_f64();
    println!(
        "  verdict {:?} (boot: {}) {after:.2}s after the console showed emergency mode, stopping QEMU {stop:.2}s of it; whole trial {:.1}s",
        checked.row.status,
        checked.row.boot,
        started.elapsed().as_secs_f64()
    );
    Ok(vec![format!(
        "emergency mode named {after:.2}s after the console showed it (target: within 10 s)"
    )])
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A package added by a scenario: its image against the release's own,
/// both built from nothing, one after the other, in a cache of their own.
fn packages(project: &Project, events: &progress::Events) -> Result<Vec<String>, Error> {
    println!("== packages: an image with a scenario's package against its base ==");
    let dir = tempfile::tempdir()?;
    let cache = Cache::at(dir.path().to_owned()).with_events(events.clone());
    let base = project.recipe(RELEASE)?;
    let with = base.with_extra_packages(&["procps".to_owned()]);
    let size = |image: &image::Image| -> u64 {
        std::fs::metadata(image.dir.join("rootfs.qcow2")).map_or(0, |m| m.len())
    };
    let built = image::image(&cache, base)?;
    let (base_seconds, base_bytes) = (built.manifest.build_seconds, size(&built));
    let built = image::image(&cache, &with)?;
    let (with_seconds, with_bytes) = (built.manifest.build_seconds, size(&built));
    let started = Instant::now();
    image::image(&cache, &with)?;
    let again = started.elapsed().as_secs_f64();
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    println!(
        "  {RELEASE}: {base_seconds:.1}s, {:.0} MiB; + procps: {with_seconds:.1}s, {:.0} MiB; ratio {:.2}; asked again: {again:.3}s",
        mib(base_bytes),
        mib(with_bytes),
        with_seconds / base_seconds
    );
    Ok(vec![format!(
        "image with a scenario's package: {:.2} × its base's build ({with_seconds:.1}s / {base_seconds:.1}s, {:.0} MiB / {:.0} MiB); reused in {again:.3}s",
        with_seconds / base_seconds,
        mib(with_bytes),
        mib(base_bytes)
    )])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn cell(kernel: KernelFlavour) -> Cell {
    Cell {
        release: RELEASE.into(),
        kernel,
    }
}

/// The boot-path section: one setting at a time changed from a reference.
fn boot_path(project: &Project, options: &RunOptions, rounds: usize) -> Result<(), Error> {
    println!("== boot path: bare cold boot of {RELEASE} to a settled shell, one setting changed at a time ==");
    let reference = MachineOptions {
        machine: "pc".into(),
        firmware: Firmware::SeaBios,
        cpu: None,
        memory_mib: 1024,
        cmdline: Vec::new(),
    };
    let with = |change: &dyn Fn(&mut MachineOptions)| {
        let mut options = reference.clone();
        change(&mut options);
        options
    };
    let mut variants: Vec<(&str, MachineOptions)> = vec![
        ("reference", reference.clone()),
        ("machine q35", with(&|o| o.machine = "q35".into())),
        (
            "machine microvm",
            with(&|o| o.machine = "microvm,pcie=on,rtc=on".into()),
        ),
        ("firmware qboot", with(&|o| o.firmware = Firmware::Qboot)),
        ("cpu max", with(&|o| o.cpu = Some("max".into()))),
        ("memory 512 MiB", with(&|o| o.memory_mib = 512)),
        ("memory 2048 MiB", with(&|o| o.memory_mib = 2048)),
        (
            "cmdline +quiet",
            with(&|o| o.cmdline = vec!["quiet".into()]),
        ),
        (
            "cmdline +mitigations=off",
            with(&|o| o.cmdline = vec!["mitigations=off".into()]),
        ),
    ];
    if options.accel.accel == vm::Accel::Kvm {
        variants.push(("cpu host", with(&|o| o.cpu = Some("host".into()))));
    }
    // VMREPRO_BENCH_VARIANTS=qboot,512 keeps the reference and the variants
    // whose names contain one of the words, for repeating a close call.
    if let Ok(filter) = std::env::var("VMREPRO_BENCH_VARIANTS") {
        let words: Vec<&str> = filter
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        variants.retain(|(name, _)| *name == "reference" || words.iter().any(|w| name.contains(w)));
    }
    let kernels = [KernelFlavour::named("linode"), KernelFlavour::stock()];
    // times[variant][kernel] = (shell, settled) per round, or the failure.
    let mut times: Vec<Vec<Result<Vec<BootTimes>, String>>> =
        vec![vec![Ok(Vec::new()); kernels.len()]; variants.len()];
    for round in 0..rounds {
        // Interleaved, so that a slow minute of the host hurts every
        // variant a little rather than one a lot.
        for (v, (name, machine)) in variants.iter().enumerate() {
            for (k, kernel) in kernels.iter().enumerate() {
                if times[v][k].is_err() {
                    continue;
                }
                let mut variant = options.clone();
                variant.machine = machine.clone();
                eprintln!(
                    "[round {}/{rounds}] {name}, {}: booting",
                    round + 1,
                    cell(kernel.clone())
                );
                match run::bare_boot(project, &cell(kernel.clone()), &variant, VARIANT_TIMEOUT) {
                    Ok(t) => {
                        if let Ok(list) = &mut times[v][k] {
                            list.push(t);
                        }
                    }
                    Err(e) => {
                        let first = e.to_string().lines().next().unwrap_or("").to_owned();
                        times[v][k] = Err(first);
                    }
                }
            }
        }
    }
    let settled = |v: usize, k: usize| -> Option<f64> {
        times[v][k]
            .as_ref()
            .ok()
            .map(|l| median(l.iter().map(|t| t.settled_seconds).collect()))
    };
    println!(
        "\n  {:<26} {:>22} {:>22}",
        "setting", "linode: shell/settled", "stock: shell/settled"
    );
    for (v, (name, _)) in variants.iter().enumerate() {
        let mut line = format!("  {name:<26}");
        for (k, result) in times[v].iter().enumerate() {
            let cell = match result {
                Ok(list) => {
                    let shell = median(list.iter().map(|t| t.shell_seconds).collect());
                    let set = median(list.iter().map(|t| t.settled_seconds).collect());
                    let ratio = match (settled(v, k), settled(0, k)) {
                        (Some(a), Some(b)) => format!("{:.2}×", a / b),
                        _ => "-".into(),
                    };
                    format!("{shell:5.1}s/{set:5.1}s {ratio:>6}")
                }
                Err(_) => "does not boot".into(),
            };
            line.push_str(&format!(" {cell:>22}"));
        }
        println!("{line}");
    }
    for (v, (name, machine)) in variants.iter().enumerate() {
        for (k, kernel) in kernels.iter().enumerate() {
            if let Err(why) = &times[v][k] {
                println!("  {name} ({}, {kernel}): {why}", machine.describe());
            }
        }
    }
    println!(
        "  (ratios are settled-shell times against the reference on the same kernel; the default is {})\n",
        MachineOptions::default().describe()
    );
    Ok(())
}

/// The warm section: bare boot, scenario cold, scenario warm, ratios.
fn warm_vs_cold(
    project: &Project,
    scenario: &Scenario,
    options: &RunOptions,
    rounds: usize,
) -> Result<Vec<String>, Error> {
    let cell = cell(KernelFlavour::stock());
    println!("== warm start: {} on {cell} ==", scenario.name);
    let started = Instant::now();
    let state = run::warm_state(project, Some(scenario), &cell, options)?;
    println!(
        "  saved state {}: {:.0} MiB; the boot that saved it reached a shell after {:.1}s, saving took {:.1}s (this run spent {:.1}s getting it)",
        state.key,
        state.meta.state_bytes as f64 / 1048576.0,
        state.meta.boot_seconds,
        state.meta.save_seconds,
        started.elapsed().as_secs_f64()
    );
    let mut cold_options = options.clone();
    cold_options.first_boot = FirstBoot::Cold;
    let mut warm_options = options.clone();
    warm_options.first_boot = FirstBoot::Warm;
    let (mut bare, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut identical = true;
    let mut passed = true;
    for round in 0..rounds {
        eprintln!("[round {}/{rounds}] bare cold boot", round + 1);
        bare.push(run::bare_boot(project, &cell, options, VARIANT_TIMEOUT)?);
        eprintln!("[round {}/{rounds}] scenario, cold", round + 1);
        let c = run::run_cell(project, scenario, &cell, &cold_options)?;
        eprintln!("[round {}/{rounds}] scenario, warm", round + 1);
        let w = run::run_cell(project, scenario, &cell, &warm_options)?;
        if !matches!(w.start, Start::Warm { .. }) {
            return Err(
                format!("the warm trial did not start warm: {}", w.start.describe()).into(),
            );
        }
        identical &= snapshot::render(&c.captures) == snapshot::render(&w.captures)
            && snapshot::render(&c.before_reboot) == snapshot::render(&w.before_reboot);
        passed &= c.passed() && w.passed();
        cold.push(c);
        warm.push(w);
    }
    let bare_shell = median(bare.iter().map(|t| t.shell_seconds).collect());
    let bare_settled = median(bare.iter().map(|t| t.settled_seconds).collect());
    let total = |list: &[Outcome]| median(list.iter().map(|o| o.timings.total).collect());
    let first = |list: &[Outcome]| median(list.iter().map(|o| o.timings.start).collect());
    let reboot = |list: &[Outcome]| {
        median(
            list.iter()
                .map(|o| o.timings.reboot_to_shell + o.timings.reboot_settle)
                .collect(),
        )
    };
    let (cold_total, warm_total) = (total(&cold), total(&warm));
    println!("  bare cold boot:  shell after {bare_shell:.1}s, settled after {bare_settled:.1}s");
    println!(
        "  scenario, cold:  {cold_total:.1}s (first boot to shell {:.1}s, reboot step {:.1}s)",
        first(&cold),
        reboot(&cold)
    );
    println!(
        "  scenario, warm:  {warm_total:.1}s (resume to shell {:.1}s, reboot step {:.1}s)",
        first(&warm),
        reboot(&warm)
    );
    if let Some(last) = warm.last() {
        println!("  the warm trial, phase by phase:");
        print_phases(last);
    }
    // The instrument: what the harness spends on a warm trial beyond the
    // flow and the reboot itself, against the reboot; and, side by side,
    // the same warm trial without the evidence read on the harness's own.
    let instrument = |o: &Outcome| {
        let t = &o.timings;
        t.start + t.reboot_settle + t.captures_before + t.captures_after
    };
    let captures = |list: &[Outcome]| {
        median(
            list.iter()
                .map(|o| o.timings.captures_before + o.timings.captures_after)
                .collect(),
        )
    };
    let bare_scenario = scenario.without_evidence();
    let mut without = Vec::new();
    for round in 0..rounds {
        eprintln!("[round {}/{rounds}] scenario, warm, no evidence", round + 1);
        without.push(run::run_cell(
            project,
            &bare_scenario,
            &cell,
            &warm_options,
        )?);
    }
    let warm_instrument = median(warm.iter().map(instrument).collect());
    let warm_reboot = reboot(&warm);
    let evidence_per_boot = (captures(&warm) - captures(&without)) / 2.0;
    println!(
        "  captures with evidence {:.1}s, without {:.1}s: the evidence costs {evidence_per_boot:.1}s per boot",
        captures(&warm),
        captures(&without)
    );
    let ratios = vec![
        format!(
            "{cell}: the instrument (resume, settling after the reboot, captures with evidence) {warm_instrument:.1}s / the reboot {warm_reboot:.1}s = {:.2} (target ≤ 0.10)",
            warm_instrument / warm_reboot
        ),
        format!(
            "{cell}: evidence per boot {evidence_per_boot:.1}s / the reboot = {:.2}",
            evidence_per_boot / warm_reboot
        ),
        format!(
            "{cell}: warm founding scenario {warm_total:.1}s / bare cold boot (settled) {bare_settled:.1}s = {:.2} (target ≤ 1.10)",
            warm_total / bare_settled
        ),
        format!(
            "{cell}: cold scenario / bare cold boot (settled) = {:.2}",
            cold_total / bare_settled
        ),
        format!(
            "{cell}: warm scenario / cold scenario = {:.2}",
            warm_total / cold_total
        ),
        format!(
            "{cell}: warm and cold snapshots identical: {}; expectations held in both: {}",
            yes(identical),
            yes(passed)
        ),
    ];
    for line in &ratios {
        println!("  {line}");
    }
    println!();
    Ok(ratios)
}

/// A trial's phases, one line each.
fn print_phases(outcome: &Outcome) {
    let resumed = matches!(outcome.start, Start::Warm { .. });
    for (phase, seconds) in outcome.timings.phases(resumed) {
        println!("    {phase:<40} {seconds:6.1}s");
    }
    println!("    {:<40} {:6.1}s", "whole trial", outcome.timings.total);
}

/// The suite section: every scenario on every reachable cell, warm, at
/// -j cores.
fn suite(project: &Project, options: &RunOptions, cores: usize) -> Result<Vec<String>, Error> {
    let scenarios = project.scenarios()?;
    let cells: Vec<(Scenario, Cell)> = vmrepro::project::trials_of(&scenarios)
        .into_iter()
        .filter(|(_, c)| run::reachable(project, &options.cache, &c.release).is_ok())
        .collect();
    println!(
        "== suite: {} trials on the reachable releases, warm, -j {cores} ==",
        cells.len()
    );
    // The saved states first, so that the suite's time is that of a warm
    // cache.
    let started = Instant::now();
    let mut warm_options = options.clone();
    warm_options.first_boot = FirstBoot::Warm;
    for (scenario, cell) in &cells {
        run::warm_state(project, Some(scenario), cell, &warm_options)?;
    }
    println!(
        "  saved states ready ({:.0}s spent here getting them)",
        started.elapsed().as_secs_f64()
    );
    eprintln!("suite: the timed pass");
    let started = Instant::now();
    let results = run::check_all(project, cells.clone(), &warm_options, cores, |_, _, _| ())?;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "\n  {:<48} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
        "trial", "start", "steps", "reboot", "settle", "capt.", "own", "total"
    );
    let (mut reboots, mut own, mut worst, mut count, mut passed) = (0.0, 0.0, 0.0f64, 0, true);
    let mut failed = Vec::new();
    for ((checked, ()), (scenario, cell)) in results.iter().zip(&cells) {
        let name = format!("{} {cell}", scenario.name);
        if !checked.passed() {
            passed = false;
            failed.push(name.clone());
        }
        let Ok(outcome) = &checked.outcome else {
            println!("  {name:<48} (did not run to the end)");
            continue;
        };
        let t = &outcome.timings;
        reboots += t.reboot_to_shell + t.reboot_settle;
        own += t.harness();
        worst = worst.max(t.harness());
        count += 1;
        println!(
            "  {name:<48} {:>5.1}s {:>5.1}s {:>5.1}s {:>5.1}s {:>5.1}s {:>5.1}s {:>6.1}s",
            t.prepare + t.start + t.start_settle,
            t.steps,
            t.reboot_to_shell,
            t.reboot_settle,
            t.captures_before + t.captures_after,
            t.harness(),
            t.total
        );
    }
    let floor = reboots / cores as f64;
    let mean_own = own / f64::from(count.max(1));
    println!(
        "  (start: preparing and resuming; own: the harness's own time, preparing, stopping and between phases)"
    );
    println!(
        "  suite wall time {wall:.0}s; its reboots, asking to settled, {reboots:.0}s in all, {floor:.0}s shared among {cores} cores"
    );
    Ok(vec![
        format!(
            "harness's own time per trial: {mean_own:.2}s on average, {worst:.2}s at most, over {count} trials (target ≤ 1.5s)"
        ),
        format!(
            "warm-cache suite at -j {cores}: {wall:.0}s / (sum of its reboots {reboots:.0}s ÷ {cores}) = {:.2} (target ≤ 1.25)",
            wall / floor.max(f64::MIN_POSITIVE)
        ),
        format!(
            "suite trials passed: {}{}",
            yes(passed),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" (not: {})", failed.join(", "))
            }
        ),
    ])
}

/// The kernel section: each kernel flavour built from a recipe, from
/// nothing, in a cache of its own.
fn kernel_build(project: &Project, events: &progress::Events) -> Result<Vec<String>, Error> {
    println!("== kernel: the kernels built from recipes, from nothing ==");
    let mut lines = Vec::new();
    for (name, source) in &project.kernels {
        let vmrepro::project::recipe::KernelSource::Recipe(recipe) = source else {
            continue;
        };
        let dir = tempfile::tempdir()?;
        let cache = Cache::at(dir.path().to_owned()).with_events(events.clone());
        let started = Instant::now();
        let built = vmrepro::media::kernel::built(&cache, name, recipe)?;
        let seconds = started.elapsed().as_secs_f64();
        let size = std::fs::metadata(&built.image).map_or(0, |m| m.len());
        println!(
            "  {name}: {} in {seconds:.0}s ({:.1} min), {:.1} MiB",
            built.release,
            seconds / 60.0,
            size as f64 / 1048576.0
        );
        lines.push(format!(
            "kernel {name} cold build on {} cores: {:.1} min ({seconds:.0}s; target ≤ 6 min)",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            seconds / 60.0
        ));
    }
    Ok(lines)
}

/// The first-run section: the README's first command with nothing built.
fn first_run(root: &Path) -> Result<Vec<String>, Error> {
    println!("== first run: the README's first command with nothing compiled or cached ==");
    let target = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("first run: compiling vmrepro into an empty target directory");
    let started = Instant::now();
    let status = std::process::Command::new(&cargo)
        .args(["build", "--bin", "vmrepro"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target.path())
        .status()?;
    let compile = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("cargo build: {status}").into());
    }
    eprintln!("first run: {}", FIRST_COMMAND.join(" "));
    let started = Instant::now();
    let output = std::process::Command::new(target.path().join("debug/vmrepro"))
        .args(FIRST_COMMAND)
        .current_dir(root)
        .env("VMREPRO_CACHE", cache.path())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let repro = started.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&output.stdout);
    let verdict = report
        .lines()
        .find(|l| l.contains("**Verdict"))
        .unwrap_or("(no verdict line)")
        .trim()
        .to_owned();
    let total = compile + repro;
    println!(
        "  cargo build: {compile:.0}s; vmrepro repro: {repro:.0}s (exit {:?}); {verdict}",
        output.status.code()
    );
    println!("  in all {total:.0}s ({:.1} min)", total / 60.0);
    Ok(vec![format!(
        "README's first command, nothing compiled or cached: {:.1} min (cargo build {compile:.0}s + repro {repro:.0}s, exit {:?}; host packages already installed; target ≤ 10 min)",
        total / 60.0,
        output.status.code()
    )])
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// A trial's cell, seconds and whether it passed.
type Timed = (String, f64, bool);

/// The matrix section: the founding scenario's reachable cells, cold at
/// -j 1, warm at -j 1 and warm at -j cores.
fn matrix(
    project: &Project,
    scenario: &Scenario,
    options: &RunOptions,
    cores: usize,
) -> Result<Vec<String>, Error> {
    let cells: Vec<Cell> = scenario
        .matrix
        .cells()
        .into_iter()
        .filter(|c| {
            project.recipes.get(&c.release).is_some_and(|r| {
                image::lookup(&options.cache, r).is_some() || image::probe_reachable(r).is_ok()
            })
        })
        .collect();
    let names: Vec<String> = cells.iter().map(Cell::to_string).collect();
    println!(
        "== matrix: {} on its {} reachable cells ({}) ==",
        scenario.name,
        cells.len(),
        names.join(", ")
    );
    let started = Instant::now();
    for cell in &cells {
        run::warm_state(project, Some(scenario), cell, options)?;
    }
    println!(
        "  saved states ready ({:.1}s spent here getting them)",
        started.elapsed().as_secs_f64()
    );
    // As many guests as cores; `vmrepro run` also caps this by free memory.
    let jobs = cores;
    println!(
        "  -j 1 against -j {jobs} (cores); by free memory `vmrepro run` would allow -j {}",
        run::default_jobs(options.machine.memory_mib)
    );
    let pass = |first_boot: FirstBoot, jobs: usize| -> Result<(f64, Vec<Timed>), Error> {
        let mut opts = options.clone();
        opts.first_boot = first_boot;
        eprintln!("matrix, {} first boot, -j {jobs}", first_boot.name());
        let started = Instant::now();
        let work: Vec<(Scenario, Cell)> = cells
            .iter()
            .map(|c| (scenario.clone(), c.clone()))
            .collect();
        let results = run::check_all(project, work, &opts, jobs, |_, _, _| ())?;
        let wall = started.elapsed().as_secs_f64();
        let per_cell = results
            .into_iter()
            .map(|(checked, ())| {
                let seconds = checked
                    .outcome
                    .as_ref()
                    .map_or(f64::NAN, |o| o.timings.total);
                (
                    format!("{}-{}", checked.row.release, checked.row.kernel),
                    seconds,
                    checked.passed(),
                )
            })
            .collect();
        Ok((wall, per_cell))
    };
    let (cold_wall, cold_cells) = pass(FirstBoot::Cold, 1)?;
    let (warm_wall, warm_cells) = pass(FirstBoot::Warm, 1)?;
    let (par_wall, par_cells) = pass(FirstBoot::Warm, jobs)?;
    println!(
        "\n  {:<18} {:>9} {:>9} {:>10} {:>12}",
        "cell",
        "cold -j1",
        "warm -j1",
        "warm/cold",
        format!("warm -j{jobs}")
    );
    let mut slower = Vec::new();
    let mut all_passed = true;
    for ((c, w), p) in cold_cells.iter().zip(&warm_cells).zip(&par_cells) {
        all_passed &= c.2 && w.2 && p.2;
        if w.1 > c.1 {
            slower.push(c.0.clone());
        }
        println!(
            "  {:<18} {:>8.1}s {:>8.1}s {:>10.2} {:>11.1}s",
            c.0,
            c.1,
            w.1,
            w.1 / c.1,
            p.1
        );
    }
    println!(
        "  {:<18} {:>8.1}s {:>8.1}s {:>10.2} {:>11.1}s   (wall time)",
        "whole matrix",
        cold_wall,
        warm_wall,
        warm_wall / cold_wall,
        par_wall
    );
    let lines = vec![
        format!(
            "matrix ({} cells), warm: wall at -j {jobs} / at -j 1 = {:.2} ({par_wall:.0}s / {warm_wall:.0}s; target ≤ 0.6 on 2 cores)",
            cells.len(),
            par_wall / warm_wall
        ),
        format!(
            "matrix at -j 1: warm / cold wall = {:.2} ({warm_wall:.0}s / {cold_wall:.0}s)",
            warm_wall / cold_wall
        ),
        format!(
            "trials slower warm than cold: {}; every trial passed: {}",
            if slower.is_empty() {
                "none".to_owned()
            } else {
                slower.join(", ")
            },
            yes(all_passed)
        ),
    ];
    Ok(lines)
}
