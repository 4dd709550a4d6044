//! `vmrepro setup` and `vmrepro doctor`: what this machine has and lacks.

use anyhow::Result;

use std::path::PathBuf;
use vmrepro::project::Project;

use vmrepro::check::verdict::{EXIT_ENV, EXIT_PASS};
use vmrepro::host;
use vmrepro::media::image;

use super::flags::ListFormat;
use crate::{built_kernels, Outputs};

/// `vmrepro setup`: installs what the host lacks and says what it has.
pub(crate) fn setup(outputs: &Outputs) -> Result<u8> {
    host::ensure_tools(&outputs.events, outputs.settings.install)?;
    for tool in host::TOOLS {
        let version = host::tool_version(tool.command).unwrap_or_else(|| "installed".into());
        out!("{:<20} {version}", tool.command);
    }
    let accel = outputs.settings.accel()?;
    out!(
        "accelerator          {} ({})",
        accel.accel.name(),
        accel.reason
    );
    out!("cache                {}", outputs.settings.cache.display());
    Ok(EXIT_PASS)
}

/// What `vmrepro doctor` finds, for people (text) or programs (JSON).
#[derive(serde::Serialize)]
struct Doctor {
    tools: Vec<DoctorTool>,
    kernel_source: Option<DoctorTool>,
    accelerator: Result<String, String>,
    cache: DoctorCache,
    /// Releases of the project, where there is one.
    releases: Vec<DoctorRelease>,
    problems: usize,
}

#[derive(serde::Serialize)]
struct DoctorTool {
    name: String,
    found: Option<String>,
    version: Option<String>,
    purpose: String,
    fix: Option<String>,
}

#[derive(serde::Serialize)]
struct DoctorCache {
    path: PathBuf,
    entries: usize,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct DoctorRelease {
    release: String,
    mirror: String,
    cached: bool,
    /// `None` when the archive answers, else why not.
    unreachable: Option<String>,
}

pub(crate) fn doctor(
    project: Option<&Project>,
    format: ListFormat,
    outputs: &Outputs,
) -> Result<u8> {
    let tools: Vec<DoctorTool> = host::TOOLS
        .iter()
        .map(|tool| {
            let found = host::find_command(tool.command);
            DoctorTool {
                name: tool.command.to_owned(),
                version: found
                    .as_ref()
                    .and_then(|_| host::tool_version(tool.command)),
                fix: found
                    .is_none()
                    .then(|| host::InstallPlan::for_host().shell_commands(&[*tool])),
                found: found.map(|p| p.display().to_string()),
                purpose: tool.purpose.to_owned(),
            }
        })
        .collect();
    let kernel_source = project.and_then(|p| {
        let (name, recipe) = built_kernels(p).into_iter().next()?;
        let source = &recipe.source_package;
        let version = host::package_version(source);
        Some(DoctorTool {
            name: source.clone(),
            found: version.as_ref().map(|_| "installed".to_owned()),
            version,
            purpose: format!(
                "for kernel {name}; its first cell installs it (as root) or asks you to"
            ),
            fix: None,
        })
    });
    let cache = outputs.cache();
    let entries = cache.list();
    let releases = project
        .map(|p| {
            p.recipes
                .iter()
                .map(|(release, recipe)| DoctorRelease {
                    release: release.clone(),
                    mirror: recipe
                        .mirror()
                        .unwrap_or_else(|| "mmdebstrap's default".into()),
                    cached: image::lookup(&cache, recipe).is_some(),
                    unreachable: image::probe_reachable(recipe).err().map(|e| e.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let accelerator = outputs
        .settings
        .accel()
        .map(|a| format!("{} ({})", a.accel.name(), a.reason))
        .map_err(|e| e.to_string());
    let problems =
        tools.iter().filter(|t| t.found.is_none()).count() + usize::from(accelerator.is_err());
    let report = Doctor {
        tools,
        kernel_source,
        accelerator,
        cache: DoctorCache {
            path: cache.root().to_owned(),
            entries: entries.len(),
            bytes: entries.iter().map(|e| e.bytes).sum(),
        },
        releases,
        problems,
    };
    if format == ListFormat::Json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_doctor(&report, project.is_some());
    }
    Ok(if report.problems == 0 {
        EXIT_PASS
    } else {
        EXIT_ENV
    })
}

fn print_doctor(report: &Doctor, in_project: bool) {
    out!("host tools:");
    for tool in &report.tools {
        match (&tool.found, &tool.fix) {
            (Some(path), _) => out!(
                "  ok       {:<20} {path} ({})",
                tool.name,
                tool.version.as_deref().unwrap_or("")
            ),
            (None, fix) => out!(
                "  MISSING  {:<20} {}; fix: run `vmrepro setup` as root, or:\n{}",
                tool.name,
                tool.purpose,
                fix.as_deref()
                    .unwrap_or("")
                    .lines()
                    .map(|l| format!("             {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    if let Some(source) = &report.kernel_source {
        match &source.version {
            Some(version) => out!(
                "  ok       {:<20} {version} (for the Linode-style kernel)",
                source.name
            ),
            None => out!(
                "  later    {:<20} not installed; {}",
                source.name,
                source.purpose
            ),
        }
    }
    match &report.accelerator {
        Ok(accel) => out!("accelerator: {accel}"),
        Err(e) => out!("accelerator: {e}"),
    }
    out!(
        "cache: {} ({} entries, {:.1} GiB)",
        report.cache.path.display(),
        report.cache.entries,
        report.cache.bytes as f64 / (1u64 << 30) as f64
    );
    if in_project {
        out!("releases:");
    } else {
        out!("releases: not in a vmrepro project (no images/ and scenarios/ here or above)");
    }
    for r in &report.releases {
        match (&r.unreachable, r.cached) {
            (None, cached) => out!(
                "  ok       {:<9} {}{}",
                r.release,
                r.mirror,
                if cached { " (image cached)" } else { "" }
            ),
            (Some(e), true) => out!("  ok       {:<9} image cached; mirror unreachable: {e}", r.release),
            (Some(e), false) => out!(
                "  skip     {:<9} {e}; its trials are skipped. Fix: set VMREPRO_MIRROR_{} to a mirror or proxy you can reach, or `vmrepro images import {} ROOTFS.tar`",
                r.release,
                r.release.to_uppercase(),
                r.release
            ),
        }
    }
    if report.problems == 0 {
        out!("no problems found");
    } else {
        out!("{} problem(s) found", report.problems);
    }
}
