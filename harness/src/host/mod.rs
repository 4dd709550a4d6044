//! The host tools the harness calls as commands, and installing them.
//!
//! One routine serves the command line and the test target alike: check for
//! QEMU, `qemu-img`, `mke2fs` and `mmdebstrap`; as root on a Debian-family host
//! install what is missing (saying what), otherwise print the exact command to
//! run and stop.
//!
//! The trap it avoids: a bookworm host may carry `qemu-utils` from
//! bookworm-backports; installing `qemu-system-x86` from plain bookworm then
//! removes that `qemu-utils` and `qemu-img` is gone. When the installed
//! `qemu-utils` is newer than what the release offers, both are taken from
//! the release's backports suite, added with the host's own mirror.

pub(crate) mod process;
pub mod progress;
pub(crate) mod sys;
pub(crate) mod threads;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::process::ProcessError;
use crate::host::progress::Events;

/// A host program the harness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The command's name.
    pub command: &'static str,
    /// The Debian package that provides it.
    pub(crate) package: &'static str,
    /// Other packages installed with it.
    pub(crate) companions: &'static [&'static str],
    /// What the harness uses it for.
    pub purpose: &'static str,
}

/// Every tool the harness needs.
pub const TOOLS: &[Tool] = &[
    Tool {
        command: "qemu-system-x86_64",
        package: "qemu-system-x86",
        companions: &[],
        purpose: "runs the guests",
    },
    Tool {
        command: "qemu-img",
        package: "qemu-utils",
        companions: &[],
        purpose: "converts images and creates throwaway overlays",
    },
    Tool {
        command: "mke2fs",
        package: "e2fsprogs",
        companions: &[],
        purpose: "makes the root file system from a directory tree",
    },
    Tool {
        command: "mmdebstrap",
        package: "mmdebstrap",
        // Needed to verify Debian's archive on hosts that are not Debian.
        companions: &["debian-archive-keyring"],
        purpose: "bootstraps Debian root trees",
    },
];

/// Why the host is not ready.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Tools are missing and the harness may not or cannot install them.
    #[error("missing host tools: {}\n{hint}", .missing.join(", "))]
    Missing {
        /// Commands not found.
        missing: Vec<String>,
        /// What the user should do.
        hint: String,
    },
    /// Installing failed.
    #[error("installing host packages failed: {0}")]
    Install(#[from] ProcessError),
    /// Writing an apt source failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Finds a command on `PATH` (and in the sbin directories, which a non-root
/// user's `PATH` often lacks).
pub fn find_command(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tools that are not installed.
pub(crate) fn missing_tools() -> Vec<Tool> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| find_command(t.command).is_none())
        .collect()
}

/// Makes sure every tool is present, installing them when allowed.
///
/// Installing is allowed when `install` says so (the settings' `install`:
/// not `--no-install`) and the harness runs as root on a host with `apt-get`.
pub fn ensure_tools(events: &Events, install: bool) -> Result<(), HostError> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let plan = InstallPlan::for_host();
    let names: Vec<String> = missing.iter().map(|t| t.command.to_owned()).collect();
    if let Some(why) = install_refusal(install) {
        return Err(HostError::Missing {
            missing: names,
            hint: format!(
                "vmrepro does not install them because {why}. Run, as root:\n{}",
                plan.shell_commands(&missing)
            ),
        });
    }
    for tool in &missing {
        events.note(
            "host setup",
            &format!(
                "installing {} ({}: {})",
                tool.package, tool.command, tool.purpose
            ),
        );
    }
    plan.install(events, &missing)
}

/// How to install the tools on this host.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// `Some((codename, mirror URI))` when QEMU must come from backports.
    pub(crate) backports: Option<(String, String)>,
}

impl InstallPlan {
    /// Works out the plan from the host's release and installed packages.
    pub fn for_host() -> InstallPlan {
        let codename = os_codename();
        let backports = codename.and_then(|codename| {
            let installed = dpkg_version("qemu-utils")?;
            let offered = apt_candidate("qemu-system-x86")?;
            if dpkg_compare(&installed, "gt", &offered) {
                let mirror = host_mirror()?;
                Some((codename, mirror))
            } else {
                None
            }
        });
        InstallPlan { backports }
    }

    /// The commands a user would type.
    pub fn shell_commands(&self, tools: &[Tool]) -> String {
        let (qemu, rest): (Vec<&Tool>, Vec<&Tool>) =
            tools.iter().partition(|t| t.package.starts_with("qemu-"));
        let mut lines = vec!["apt-get update".to_owned()];
        if let Some((codename, mirror)) = &self.backports {
            if !qemu.is_empty() {
                lines.push(format!(
                    "printf 'Types: deb\\nURIs: {mirror}\\nSuites: {codename}-backports\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' > {}",
                    backports_source_path().display()
                ));
                lines.push("apt-get update".into());
                lines.push(format!(
                    "apt-get install -y -t {codename}-backports qemu-system-x86 qemu-utils"
                ));
            }
        } else if !qemu.is_empty() {
            lines.push("apt-get install -y qemu-system-x86 qemu-utils".into());
        }
        if !rest.is_empty() {
            let packages: Vec<&str> = rest
                .iter()
                .flat_map(|t| std::iter::once(t.package).chain(t.companions.iter().copied()))
                .collect();
            lines.push(format!("apt-get install -y {}", packages.join(" ")));
        }
        lines.join("\n")
    }

    fn install(&self, events: &Events, tools: &[Tool]) -> Result<(), HostError> {
        let apt = |what: &str, args: &[&str]| apt_get(events, what, args);
        apt("apt-get update", &["update"])?;
        let (qemu, rest): (Vec<&Tool>, Vec<&Tool>) =
            tools.iter().partition(|t| t.package.starts_with("qemu-"));
        if !qemu.is_empty() {
            match &self.backports {
                Some((codename, mirror)) => {
                    let path = backports_source_path();
                    let source = format!(
                        "Types: deb\nURIs: {mirror}\nSuites: {codename}-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                    );
                    events.note(
                        "host setup",
                        &format!(
                            "qemu-utils here is newer than {codename} offers; taking QEMU from {codename}-backports ({})",
                            path.display()
                        ),
                    );
                    std::fs::write(&path, source).map_err(|source| HostError::Write {
                        path: path.clone(),
                        source,
                    })?;
                    apt("apt-get update", &["update"])?;
                    let target = format!("{codename}-backports");
                    apt(
                        "installing QEMU",
                        &[
                            "install",
                            "-y",
                            "-t",
                            &target,
                            "qemu-system-x86",
                            "qemu-utils",
                        ],
                    )?;
                }
                None => apt(
                    "installing QEMU",
                    &["install", "-y", "qemu-system-x86", "qemu-utils"],
                )?,
            }
        }
        if !rest.is_empty() {
            let mut args = vec!["install", "-y"];
            args.extend(
                rest.iter()
                    .flat_map(|t| std::iter::once(t.package).chain(t.companions.iter().copied())),
            );
            apt("installing host packages", &args)?;
        }
        let still: Vec<String> = missing_tools()
            .iter()
            .map(|t| t.command.to_owned())
            .collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(HostError::Missing {
                missing: still,
                hint: "apt-get reported success but the commands are still missing".into(),
            })
        }
    }
}

fn backports_source_path() -> PathBuf {
    PathBuf::from("/etc/apt/sources.list.d/vmrepro-backports.sources")
}

/// The host's Debian code name (`VERSION_CODENAME` in /etc/os-release).
pub(crate) fn os_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The installed version of a Debian package, if it is installed.
pub fn package_version(package: &str) -> Option<String> {
    let out = process::output(
        "dpkg-query",
        &["-W", "-f", "${Status} ${Version}", package],
        Duration::from_secs(20),
    )
    .ok()?;
    let version = out.strip_prefix("install ok installed ")?;
    Some(version.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Makes sure Debian packages are installed, installing them when allowed
/// (as [`ensure_tools`] does for the basic tools).
pub(crate) fn ensure_packages(
    events: &Events,
    install: bool,
    purpose: &str,
    packages: &[&str],
) -> Result<(), HostError> {
    // One apt at a time: a kernel build and an image build (or two trials)
    // may ask at once, and a second apt-get would fail on dpkg's lock.
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|p| p.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| package_version(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if let Some(why) = install_refusal(install) {
        return Err(HostError::Missing {
            missing: missing.iter().map(|p| p.to_string()).collect(),
            hint: format!("{purpose} needs them; vmrepro does not install them because {why}. Run, as root:\n{command}"),
        });
    }
    events.note(
        "host setup",
        &format!("installing {} ({purpose})", missing.join(" ")),
    );
    apt_get(events, "apt-get update", &["update"])?;
    apt_get(
        events,
        &format!("installing packages for {purpose}"),
        &[vec!["install", "-y"], missing].concat(),
    )
}

/// Runs apt-get non-interactively, saying what it runs, with its output in
/// a log file whose tail goes into the error.
fn apt_get(events: &Events, what: &str, args: &[&str]) -> Result<(), HostError> {
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    events.note("host setup", &format!("apt-get {}", args.join(" ")));
    process::run_logged(
        events,
        what,
        command,
        &std::env::temp_dir().join("vmrepro-host-setup.log"),
        Duration::from_secs(1200),
    )?;
    Ok(())
}

/// Why installing is not allowed here, if it is not.
fn install_refusal(install: bool) -> Option<&'static str> {
    let root = nix::unistd::geteuid().is_root();
    if !install {
        Some("it was told not to (--no-install, VMREPRO_NO_INSTALL=1)")
    } else if find_command("apt-get").is_none() {
        Some("this host has no apt-get")
    } else if !root {
        Some("installing needs root")
    } else {
        None
    }
}

fn dpkg_version(package: &str) -> Option<String> {
    let out = process::output(
        "dpkg-query",
        &["-W", "-f", "${Version}", package],
        Duration::from_secs(20),
    )
    .ok()?;
    Some(out.trim().to_owned()).filter(|v| !v.is_empty())
}

fn apt_candidate(package: &str) -> Option<String> {
    let out = process::output("apt-cache", &["policy", package], Duration::from_secs(30)).ok()?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "(none)")
}

fn dpkg_compare(a: &str, op: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, op, b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The first line of `TOOL --version`, for reports.
pub fn tool_version(command: &str) -> Option<String> {
    let out = process::output(command, &["--version"], Duration::from_secs(10)).ok()?;
    out.lines().next().map(|l| l.trim().to_owned())
}

/// `qemu-system-x86_64 --version`, first line; asked once per process (it
/// goes into every report and every warm-state key), empty while QEMU is
/// missing.
pub fn qemu_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(version) = VERSION.get() {
        return version.clone();
    }
    match tool_version("qemu-system-x86_64") {
        Some(version) => VERSION.get_or_init(|| version).clone(),
        None => String::new(),
    }
}

/// `MemAvailable` from /proc/meminfo, in MiB.
pub fn available_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Debian release code names, for recognising Debian entries in apt sources.
const DEBIAN_CODENAMES: &[&str] = &[
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// The Debian archive URI the host's apt uses, if any: guests are bootstrapped
/// from the same mirror (or proxy) the host already trusts and reaches.
pub(crate) fn host_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => mirror_from_deb822(&text),
            _ if path.file_name().is_some_and(|n| n == "sources.list")
                || path.extension().is_some_and(|e| e == "list") =>
            {
                mirror_from_one_line(&text)
            }
            _ => None,
        }
    })
}

fn is_debian_suite(suite: &str) -> bool {
    let base = suite.split(['-', '/']).next().unwrap_or(suite);
    DEBIAN_CODENAMES.contains(&base)
}

fn usable_uri(uri: &str) -> bool {
    !uri.contains("security")
        && (uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file:/"))
}

/// The first Debian archive URI in a deb822 `.sources` file.
pub(crate) fn mirror_from_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if field("Enabled").first().is_some_and(|v| v == "no")
            || !field("Types").iter().any(|t| t == "deb")
            || !field("Suites").iter().any(|s| is_debian_suite(s))
        {
            return None;
        }
        field("URIs").into_iter().find(|u| usable_uri(u))
    })
}

/// The first Debian archive URI in a one-line-style `sources.list`.
pub(crate) fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        // Skip an options block such as `[signed-by=...]`.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        let suite = words.next()?;
        (is_debian_suite(suite) && usable_uri(uri)).then(|| uri.trim_end_matches('/').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_archive_in_deb822_and_skips_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn finds_the_archive_in_one_line_sources() {
        let text =
            "# comment\ndeb [signed-by=/x.gpg] http://proxy.local:3142/debian/ bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://proxy.local:3142/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb https://download.example/node nodistro main\n"),
            None
        );
    }

    #[test]
    fn install_commands_take_qemu_from_backports_when_needed() {
        let plan = InstallPlan {
            backports: Some(("bookworm".into(), "http://mirror.example/debian".into())),
        };
        let text = plan.shell_commands(TOOLS);
        assert!(
            text.contains("apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils")
        );
        assert!(text.contains("apt-get install -y e2fsprogs mmdebstrap debian-archive-keyring"));
        let plain = InstallPlan { backports: None }.shell_commands(&TOOLS[..1]);
        assert_eq!(
            plain,
            "apt-get update\napt-get install -y qemu-system-x86 qemu-utils"
        );
    }
}
