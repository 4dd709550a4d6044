//! Reading scenario files: strict TOML, every error naming the file, the
//! line and the key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::*;

/// Why a scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read scenario: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Scenario {
    /// Reads and validates a scenario file. `known_releases` are the releases
    /// that have an image recipe; a matrix naming any other is an error.
    pub(crate) fn load(path: &Path, known: &Known) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::parse(path, &text, known)
    }

    /// Parses scenario text; `path` is only used in messages and the result.
    ///
    /// Each section has its reader below, in the order of a scenario file:
    /// the name and matrix, disks, steps, captures, expectations, packages
    /// and evidence; an error names the first problem in that order.
    pub fn parse(path: &Path, text: &str, known: &Known) -> Result<Scenario, ScenarioError> {
        let reader = Reader { path, text, known };
        let raw: RawScenario = toml::from_str(text)
            .map_err(|e| reader.invalid(e.span(), e.message().trim().to_owned()))?;
        let name = reader.name(&raw)?;
        let matrix = reader.matrix(&raw)?;
        let disks = reader.disks(&raw)?;
        let steps = reader.steps(&raw, &disks)?;
        let captures = reader.captures(&raw)?;
        let (expect, expect_cells) = Expect {
            reader: &reader,
            captures: &captures,
            has_reboot: steps.iter().any(|s| s.action == Action::Reboot),
        }
        .read(&raw)?;
        let (packages, packages_line) = reader.packages(&raw)?;
        let versions = raw.versions.clone().unwrap_or_else(|| packages.clone());
        let evidence = reader.evidence(&raw)?;
        Ok(Scenario {
            name,
            packages,
            packages_line,
            versions,
            description: raw.description.trim().to_owned(),
            path: path.to_owned(),
            matrix,
            steps,
            captures,
            expect,
            expect_cells,
            first_boot: raw.first_boot,
            disks,
            evidence,
        })
    }
}

/// Reads a scenario file's sections, with what each needs: the file's path
/// and text (errors name the line and column) and the releases and kernel
/// flavours the project knows.
struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    known: &'a Known,
}

impl Reader<'_> {
    /// An error at `span` (the file's start without one).
    fn invalid(&self, span: Option<Range<usize>>, message: String) -> ScenarioError {
        let (line, column) = line_column(self.text, span.map(|s| s.start).unwrap_or(0));
        ScenarioError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }

    /// `name`: letters, digits, `-` and `_`.
    fn name(&self, raw: &RawScenario) -> Result<String, ScenarioError> {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
            Some(raw.name.span()),
            format!("key `name`: {name:?} must be non-empty and use only letters, digits, `-` and `_`"),
        ));
        }
        Ok(name)
    }

    /// A release without a recipe, wherever a scenario names one.
    fn release(&self, key: &str, release: &Spanned<String>) -> Result<String, ScenarioError> {
        if self.known.releases.contains(release.get_ref()) {
            Ok(release.get_ref().clone())
        } else {
            Err(self.invalid(
                Some(release.span()),
                format!(
                    "key `{key}`: no image recipe for release {:?} (known: {})",
                    release.get_ref(),
                    self.known.releases.join(", ")
                ),
            ))
        }
    }

    /// A kernel flavour without a file, wherever a scenario names one.
    fn kernel(&self, key: &str, kernel: &Spanned<String>) -> Result<KernelFlavour, ScenarioError> {
        if self.known.kernels.contains(kernel.get_ref()) {
            Ok(KernelFlavour::named(kernel.get_ref()))
        } else {
            Err(self.invalid(
                Some(kernel.span()),
                format!(
                    "key `{key}`: unknown kernel flavour {:?} (known: {})",
                    kernel.get_ref(),
                    self.known.kernels.join(", ")
                ),
            ))
        }
    }

    /// `[matrix]`: at least one release and one kernel flavour, all known.
    fn matrix(&self, raw: &RawScenario) -> Result<Matrix, ScenarioError> {
        let mut releases = Vec::new();
        for release in &raw.matrix.get_ref().releases {
            releases.push(self.release("matrix.releases", release)?);
        }
        if releases.is_empty() {
            return Err(self.invalid(
                Some(raw.matrix.span()),
                "key `matrix.releases`: name at least one release".into(),
            ));
        }
        let kernels: Vec<KernelFlavour> = raw
            .matrix
            .get_ref()
            .kernels
            .iter()
            .map(|k| self.kernel("matrix.kernels", k))
            .collect::<Result<_, _>>()?;
        if kernels.is_empty() {
            return Err(self.invalid(
                Some(raw.matrix.span()),
                "key `matrix.kernels`: name at least one kernel flavour".into(),
            ));
        }

        Ok(Matrix { releases, kernels })
    }

    /// The `releases` and `kernels` of a `cell` table.
    fn cell_filter(
        &self,
        key: &str,
        releases: &Option<Vec<Spanned<String>>>,
        kernels: &Option<Vec<Spanned<String>>>,
    ) -> Result<CellFilter, ScenarioError> {
        let release_key = format!("{key}.releases");
        let kernel_key = format!("{key}.kernels");
        Ok(CellFilter {
            releases: releases
                .as_ref()
                .map(|r| r.iter().map(|s| self.release(&release_key, s)).collect())
                .transpose()?,
            kernels: kernels
                .as_ref()
                .map(|k| k.iter().map(|s| self.kernel(&kernel_key, s)).collect())
                .transpose()?,
        })
    }

    /// A step's `status`: an exit status, or "any".
    fn step_status(
        &self,
        index: usize,
        raw: &Spanned<RawStatus>,
    ) -> Result<StepStatus, ScenarioError> {
        match raw.get_ref() {
            RawStatus::Code(code) if (0..=255).contains(code) => {
                Ok(StepStatus::Exactly(*code as i32))
            }
            RawStatus::Word(word) if word == "any" => Ok(StepStatus::Any),
            RawStatus::Code(code) => Err(self.invalid(
                Some(raw.span()),
                format!("step {index}: key `status`: {code} is not an exit status (0 to 255)"),
            )),
            RawStatus::Word(word) => Err(self.invalid(
                Some(raw.span()),
                format!("step {index}: key `status`: {word:?} is neither an exit status (0 to 255) nor \"any\""),
            )),
        }
    }

    /// What `systemctl is-active` can answer, in any release from
    /// jessie's 215 (which says "unknown" for a unit it cannot find;
    /// later ones say "inactive") to trixie's 257 ("maintenance" since
    /// 246, "refreshing" since 254): a state outside these would never
    /// be read, so a wait for it could only time out.
    fn unit_state(&self, key: &str, state: &Spanned<String>) -> Result<String, ScenarioError> {
        const STATES: &[&str] = &[
            "active",
            "inactive",
            "failed",
            "activating",
            "deactivating",
            "reloading",
            "maintenance",
            "refreshing",
            "unknown",
        ];
        let word = state.get_ref();
        if STATES.contains(&word.as_str()) {
            Ok(word.clone())
        } else {
            Err(self.invalid(
                Some(state.span()),
                format!(
                    "{key}: {word:?} is not a state `systemctl is-active` reports; use one of {}",
                    STATES.join(", ")
                ),
            ))
        }
    }

    /// `[[disk]]`: names, sizes, file systems, labels and files.
    fn disks(&self, raw: &RawScenario) -> Result<Vec<DiskSpec>, ScenarioError> {
        let mut disks: Vec<DiskSpec> = Vec::new();
        for spanned in &raw.disks {
            let disk = spanned.get_ref();
            let name = disk.name.get_ref();
            // The name is the disk's SCSI serial number too, which QEMU
            // takes up to 20 characters of without complaint; a name the
            // guest shows cut short would mislead.
            if name.is_empty()
                || name.len() > 20
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                return Err(self.invalid(
                Some(disk.name.span()),
                format!("key `disk.name`: {name:?} must be 1 to 20 lower-case letters, digits, `-` or `_`"),
            ));
            }
            if disks.iter().any(|d| &d.name == name) {
                return Err(self.invalid(
                    Some(disk.name.span()),
                    format!("key `disk.name`: {name:?} is used twice"),
                ));
            }
            let size = disk.size.get_ref().size().filter(|b| DISK_SIZE_RANGE.contains(b)).ok_or_else(|| {
            self.invalid(
                Some(disk.size.span()),
                format!("disk {name:?}: key `size`: give a size from 1 MiB to 64 GiB, such as \"64 MiB\" or \"2 GiB\""),
            )
        })?;
            let kind = match (&disk.filesystem, &disk.label, &disk.files) {
            (None, None, None) => None,
            (None, _, _) => Some("ext4".to_owned()),
            (Some(fs), _, _) if ["ext2", "ext3", "ext4"].contains(&fs.get_ref().as_str()) => {
                Some(fs.get_ref().clone())
            }
            (Some(fs), _, _) => {
                return Err(self.invalid(
                    Some(fs.span()),
                    format!("disk {name:?}: key `filesystem`: {:?} is not one vmrepro makes; use \"ext2\", \"ext3\" or \"ext4\"", fs.get_ref()),
                ))
            }
        };
            if let Some(label) = &disk.label {
                let text = label.get_ref();
                // e2label(8): an ext label is at most 16 bytes.
                if text.is_empty()
                    || text.len() > 16
                    || text.chars().any(|c| c.is_control() || c == '/')
                {
                    return Err(self.invalid(
                    Some(label.span()),
                    format!("disk {name:?}: key `label`: {text:?} must be 1 to 16 bytes, without `/` or control characters"),
                ));
                }
            }
            let files = match &disk.files {
                None => None,
                Some(written) => {
                    let source = copy_source(self.path, written.get_ref())
                        .and_then(|source| {
                            if source.is_dir() {
                                Ok(source)
                            } else {
                                Err(format!("{:?} must be a folder", written.get_ref()))
                            }
                        })
                        .map_err(|why| {
                            self.invalid(
                                Some(written.span()),
                                format!("disk {name:?}: key `files`: {why}"),
                            )
                        })?;
                    Some((written.get_ref().clone(), source))
                }
            };
            disks.push(DiskSpec {
                name: name.clone(),
                size,
                filesystem: kind.map(|kind| DiskFilesystem {
                    kind,
                    label: disk.label.as_ref().map(|l| l.get_ref().clone()),
                    files,
                }),
            });
        }
        Ok(disks)
    }

    /// `[[step]]`: one action each, with its own keys only.
    fn steps(&self, raw: &RawScenario, disks: &[DiskSpec]) -> Result<Vec<Step>, ScenarioError> {
        // Which step detached each disk, so that a second detach is an
        // error here rather than in the guest.
        let mut detached: BTreeMap<String, usize> = BTreeMap::new();

        let mut steps = Vec::new();
        for (index, spanned) in raw.steps.iter().enumerate() {
            let step = spanned.get_ref();
            let timeout = match &step.timeout {
            None if step.reboot == Some(true) => super::DEFAULT_REBOOT_TIMEOUT,
            None => DEFAULT_STEP_TIMEOUT,
            Some(t) if *t.get_ref() >= 1 && *t.get_ref() <= MAX_STEP_TIMEOUT_SECS => {
                Duration::from_secs(*t.get_ref() as u64)
            }
            Some(t) => {
                return Err(self.invalid(
                    Some(t.span()),
                    format!(
                        "step {}: key `timeout`: {} is not a number of seconds from 1 to {MAX_STEP_TIMEOUT_SECS}",
                        index + 1,
                        t.get_ref()
                    ),
                ))
            }
        };
            let given: Vec<&str> = [
                step.run.as_ref().map(|_| "run"),
                step.write.as_ref().map(|_| "write"),
                step.reboot.filter(|r| *r).map(|_| "reboot"),
                step.copy.as_ref().map(|_| "copy"),
                step.wait_for_unit.as_ref().map(|_| "wait_for_unit"),
                step.wait_until.as_ref().map(|_| "wait_until"),
                step.detach.as_ref().map(|_| "detach"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let here = Some(spanned.span());
            let action = match given.as_slice() {
            ["run"] => Action::Run {
                command: step.run.clone().unwrap_or_default(),
                status: step
                    .status
                    .as_ref()
                    .map(|s| self.step_status(index + 1, s))
                    .transpose()?
                    .unwrap_or(StepStatus::Exactly(0)),
            },
            ["write"] => {
                let content = step.content.clone().ok_or_else(|| {
                    self.invalid(
                        here.clone(),
                        format!("step {}: key `content` is missing (a `write` step needs the file's content)", index + 1),
                    )
                })?;
                let path = step.write.clone().unwrap_or_default();
                if !path.starts_with('/') {
                    return Err(self.invalid(
                        here,
                        format!(
                            "step {}: key `write`: {path:?} must be an absolute path",
                            index + 1
                        ),
                    ));
                }
                let mode = match &step.mode {
                    None => 0o644,
                    Some(m) => u32::from_str_radix(m, 8).map_err(|_| {
                        self.invalid(
                            here.clone(),
                            format!("step {}: key `mode`: {m:?} is not an octal mode such as \"0644\"", index + 1),
                        )
                    })?,
                };
                Action::Write {
                    path,
                    content,
                    mode,
                }
            }
            ["reboot"] => Action::Reboot,
            ["copy"] => {
                let from = step.copy.clone().unwrap_or_default();
                let to = step.to.clone().ok_or_else(|| {
                    self.invalid(
                        here.clone(),
                        format!("step {}: key `to` is missing (a `copy` step needs the absolute path in the guest)", index + 1),
                    )
                })?;
                if !to.starts_with('/') {
                    return Err(self.invalid(
                        here,
                        format!("step {}: key `to`: {to:?} must be an absolute path in the guest", index + 1),
                    ));
                }
                let source = copy_source(self.path, &from).map_err(|why| {
                    self.invalid(here.clone(), format!("step {}: key `copy`: {why}", index + 1))
                })?;
                Action::Copy { from, source, to }
            }
            ["wait_for_unit"] => {
                let unit = step.wait_for_unit.clone().unwrap_or_default();
                if unit.trim().is_empty() || unit.chars().any(char::is_whitespace) {
                    return Err(self.invalid(
                        here,
                        format!("step {}: key `wait_for_unit`: {unit:?} is not a unit name", index + 1),
                    ));
                }
                Action::WaitForUnit {
                    unit,
                    state: match &step.state {
                        Some(state) => {
                            self.unit_state(&format!("step {}: key `state`", index + 1), state)?
                        }
                        None => "active".into(),
                    },
                }
            }
            ["wait_until"] => Action::WaitUntil {
                command: step.wait_until.clone().unwrap_or_default(),
            },
            ["detach"] => {
                let disk = step.detach.clone().unwrap_or_default();
                if !disks.iter().any(|d| d.name == disk) {
                    return Err(self.invalid(
                        here,
                        format!(
                            "step {}: key `detach`: no `[[disk]]` is named {disk:?}{}",
                            index + 1,
                            if disks.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (disks: {})",
                                    disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                                )
                            }
                        ),
                    ));
                }
                if let Some(before) = detached.insert(disk.clone(), index + 1) {
                    return Err(self.invalid(
                        here,
                        format!("step {}: key `detach`: disk {disk:?} is already detached by step {before}", index + 1),
                    ));
                }
                Action::Detach { disk }
            }
            [] => {
                return Err(self.invalid(
                    here,
                    format!(
                        "step {}: give one of the keys `run`, `write`, `copy`, `reboot = true`, `wait_for_unit`, `wait_until` or `detach`",
                        index + 1
                    ),
                ))
            }
            several => {
                return Err(self.invalid(
                    here,
                    format!(
                        "step {}: keys `{}` cannot be combined; one action per step",
                        index + 1,
                        several.join("`, `")
                    ),
                ))
            }
        };
            let stray: Vec<&str> = [
                (
                    step.status.is_some() && !matches!(action, Action::Run { .. }),
                    "status",
                ),
                (
                    !step.cell.is_empty() && !matches!(action, Action::Run { .. }),
                    "cell",
                ),
                (
                    (step.content.is_some() || step.mode.is_some())
                        && !matches!(action, Action::Write { .. }),
                    "content/mode",
                ),
                (
                    step.state.is_some() && !matches!(action, Action::WaitForUnit { .. }),
                    "state",
                ),
                (
                    step.to.is_some() && !matches!(action, Action::Copy { .. }),
                    "to",
                ),
            ]
            .into_iter()
            .filter_map(|(bad, key)| bad.then_some(key))
            .collect();
            if let Some(key) = stray.first() {
                return Err(self.invalid(
                    here,
                    format!(
                        "step {}: key `{key}` does not apply to a `{}` step",
                        index + 1,
                        given[0]
                    ),
                ));
            }
            let title = step.title.clone().unwrap_or_else(|| match &action {
                Action::Run { command, .. } => first_line(command),
                Action::Write { path, .. } => format!("write {path}"),
                Action::Reboot => "reboot".into(),
                Action::Copy { from, to, .. } => format!("copy {from} to {to}"),
                Action::WaitForUnit { unit, state } => format!("wait for {unit} to be {state}"),
                Action::WaitUntil { command } => format!("wait until {}", first_line(command)),
                Action::Detach { disk } => format!("detach disk {disk}"),
            });
            let mut cells = Vec::new();
            for raw_cell in &step.cell {
                let raw_cell = raw_cell.get_ref();
                cells.push(StepCell {
                    cells: self.cell_filter("step.cell", &raw_cell.releases, &raw_cell.kernels)?,
                    status: self.step_status(index + 1, &raw_cell.status)?,
                });
            }
            steps.push(Step {
                title,
                action,
                timeout,
                cells,
            });
        }

        Ok(steps)
    }

    /// `[[capture]]`: a command or a probe each, names used once.
    fn captures(&self, raw: &RawScenario) -> Result<Vec<CaptureSpec>, ScenarioError> {
        let mut captures: Vec<CaptureSpec> = Vec::new();
        for spanned in &raw.captures {
            let capture = spanned.get_ref();
            if captures.iter().any(|c| c.name == capture.name) {
                return Err(self.invalid(
                    Some(spanned.span()),
                    format!("key `capture.name`: {:?} is used twice", capture.name),
                ));
            }
            let what = match (&capture.run, &capture.probe_tcp) {
                (Some(run), None) => CaptureKind::Run(run.clone()),
                (None, Some(port)) => match u16::try_from(*port.get_ref()) {
                    Ok(port) if port > 0 => CaptureKind::ProbeTcp(port),
                    _ => {
                        return Err(self.invalid(
                            Some(port.span()),
                            format!(
                                "capture {:?}: key `probe_tcp`: {} is not a TCP port (1 to 65535)",
                                capture.name,
                                port.get_ref()
                            ),
                        ))
                    }
                },
                (run, _) => {
                    return Err(self.invalid(
                        Some(spanned.span()),
                        format!(
                            "capture {:?}: {}",
                            capture.name,
                            if run.is_some() {
                                "keys `run` and `probe_tcp` cannot be combined"
                            } else {
                                "give the key `run` (a command) or `probe_tcp` (a port)"
                            }
                        ),
                    ))
                }
            };
            let max_output = match &capture.max_output {
            None => super::DEFAULT_MAX_OUTPUT,
            Some(size) => size.get_ref().bytes().ok_or_else(|| {
                self.invalid(
                    Some(size.span()),
                    format!(
                        "capture {:?}: key `max_output`: give bytes from 2 to 64 MiB, as a number or as \"64 KiB\" or \"2 MiB\"",
                        capture.name
                    ),
                )
            })?,
        };
            if matches!(what, CaptureKind::ProbeTcp(_)) && !capture.normalize.is_empty() {
                return Err(self.invalid(
                    Some(spanned.span()),
                    format!(
                        "capture {:?}: key `normalize` does not apply to a probe",
                        capture.name
                    ),
                ));
            }
            captures.push(CaptureSpec {
                name: capture.name.clone(),
                what,
                normalize: capture.normalize.clone(),
                max_output,
            });
        }

        Ok(captures)
    }

    /// `packages`: Debian package names, each once, and the line of the
    /// first (where a version report points).
    fn packages(&self, raw: &RawScenario) -> Result<(Vec<String>, Option<usize>), ScenarioError> {
        let mut packages = Vec::new();
        for package in &raw.packages {
            let name = package.get_ref();
            if !is_package_name(name) {
                return Err(self.invalid(
                    Some(package.span()),
                    format!("key `packages`: {name:?} is not a Debian package name"),
                ));
            }
            if !packages.contains(name) {
                packages.push(name.clone());
            }
        }
        let packages_line = raw
            .packages
            .first()
            .map(|p| line_column(self.text, p.span().start).0);
        Ok((packages, packages_line))
    }

    /// `[evidence]`: the sources a scenario turns off, and whether the
    /// evidence joins the snapshot.
    fn evidence(&self, raw: &RawScenario) -> Result<EvidenceSpec, ScenarioError> {
        let mut evidence = EvidenceSpec::default();
        if let Some(raw_evidence) = &raw.evidence {
            for skipped in &raw_evidence.get_ref().skip {
                let source = EvidenceSource::named(skipped.get_ref()).ok_or_else(|| {
                    self.invalid(
                        Some(skipped.span()),
                        format!(
                            "key `evidence.skip`: {:?} is not a source of evidence; use {}",
                            skipped.get_ref(),
                            EvidenceSource::ALL.map(|s| s.name()).join(", ")
                        ),
                    )
                })?;
                evidence.sources.retain(|s| *s != source);
            }
            evidence.snapshot = raw_evidence.get_ref().snapshot;
        }
        Ok(evidence)
    }
}

/// Reads `[expect]` and its `[[expect.cell]]` tables, whose names must be
/// captures, and whose reboot expectations need a reboot step.
struct Expect<'a> {
    reader: &'a Reader<'a>,
    captures: &'a [CaptureSpec],
    has_reboot: bool,
}

impl Expect<'_> {
    /// Capture names (`survive_reboot`, `lost_on_reboot`).
    fn names(&self, key: &str, names: &[Spanned<String>]) -> Result<Vec<String>, ScenarioError> {
        let mut out = Vec::new();
        for name in names {
            if !self.captures.iter().any(|c| &c.name == name.get_ref()) {
                return Err(self.reader.invalid(
                    Some(name.span()),
                    format!("key `{key}`: no capture is named {:?}", name.get_ref()),
                ));
            }
            if !self.has_reboot {
                return Err(self.reader.invalid(
                    Some(name.span()),
                    format!("key `{key}`: the scenario has no reboot step"),
                ));
            }
            out.push(name.get_ref().clone());
        }
        Ok(out)
    }

    /// `contains`: texts each named capture must contain.
    fn contains(
        &self,
        contains: &BTreeMap<Spanned<String>, Vec<String>>,
    ) -> Result<BTreeMap<String, Vec<String>>, ScenarioError> {
        let mut out = BTreeMap::new();
        for (name, texts) in contains {
            if !self.captures.iter().any(|c| &c.name == name.get_ref()) {
                return Err(self.reader.invalid(
                    Some(name.span()),
                    format!("key `contains`: no capture is named {:?}", name.get_ref()),
                ));
            }
            out.insert(name.get_ref().clone(), texts.clone());
        }
        Ok(out)
    }

    // How a boot may end: "up" (it comes back), or one of the ends the
    // console shows; only a scenario that reboots can ask.
    fn boot(&self, key: &str, word: &Spanned<String>) -> Result<Option<GuestEnd>, ScenarioError> {
        let end = match word.get_ref().as_str() {
            "up" => None,
            other => Some(GuestEnd::named(other).ok_or_else(|| {
                self.reader.invalid(
                    Some(word.span()),
                    format!(
                        "key `{key}`: {other:?} is not how a boot ends; use \"up\" or one of {}",
                        GuestEnd::ALL
                            .iter()
                            .map(|e| format!("{:?}", e.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?),
        };
        if end.is_some() && !self.has_reboot {
            return Err(self.reader.invalid(
                Some(word.span()),
                format!("key `{key}`: the scenario has no reboot step"),
            ));
        }
        Ok(end)
    }

    /// Evidence items an expectation names: a source, or `source:item`.
    fn unchanged(
        &self,
        key: &str,
        names: &[Spanned<String>],
    ) -> Result<Vec<String>, ScenarioError> {
        let mut out = Vec::new();
        for name in names {
            let text = name.get_ref();
            let source = text.split_once(':').map_or(text.as_str(), |(s, _)| s);
            if EvidenceSource::named(source).is_none() {
                return Err(self.reader.invalid(
                        Some(name.span()),
                        format!(
                            "key `{key}`: {text:?} does not name evidence: give a source ({}) or `source:item`, such as \"sysctl:net.ipv4.ip_forward\"",
                            EvidenceSource::ALL.map(|s| s.name()).join(", ")
                        ),
                    ));
            }
            if !self.has_reboot {
                return Err(self.reader.invalid(
                    Some(name.span()),
                    format!("key `{key}`: the scenario has no reboot step"),
                ));
            }
            out.push(text.clone());
        }
        Ok(out)
    }

    /// Everything under `[expect]`.
    fn read(
        &self,
        raw: &RawScenario,
    ) -> Result<(Expectations, Vec<CellExpectations>), ScenarioError> {
        let mut expect = Expectations::default();
        let mut expect_cells = Vec::new();
        if let Some(raw_expect) = &raw.expect {
            expect.survive_reboot =
                self.names("expect.survive_reboot", &raw_expect.survive_reboot)?;
            expect.lost_on_reboot =
                self.names("expect.lost_on_reboot", &raw_expect.lost_on_reboot)?;
            expect.contains = self.contains(&raw_expect.contains)?;
            for (unit, state) in &raw_expect.units {
                let state = self
                    .reader
                    .unit_state(&format!("key `expect.units`: {unit:?}"), state)?;
                expect.units.insert(unit.clone(), state);
            }
            if let Some(boot) = &raw_expect.boot {
                expect.boot = self.boot("expect.boot", boot)?;
            }
            expect.unchanged = self.unchanged("expect.unchanged", &raw_expect.unchanged)?;
            for cell in &raw_expect.cell {
                let raw_cell = cell.get_ref();
                expect_cells.push(CellExpectations {
                    cells: self.reader.cell_filter(
                        "expect.cell",
                        &raw_cell.releases,
                        &raw_cell.kernels,
                    )?,
                    survive_reboot: raw_cell
                        .survive_reboot
                        .as_ref()
                        .map(|n| self.names("expect.cell.survive_reboot", n))
                        .transpose()?,
                    lost_on_reboot: raw_cell
                        .lost_on_reboot
                        .as_ref()
                        .map(|n| self.names("expect.cell.lost_on_reboot", n))
                        .transpose()?,
                    units: raw_cell
                        .units
                        .iter()
                        .map(|(unit, state)| {
                            self.reader
                                .unit_state(&format!("key `expect.cell.units`: {unit:?}"), state)
                                .map(|state| (unit.clone(), state))
                        })
                        .collect::<Result<_, _>>()?,
                    contains: self.contains(&raw_cell.contains)?,
                    boot: raw_cell
                        .boot
                        .as_ref()
                        .map(|b| self.boot("expect.cell.boot", b))
                        .transpose()?,
                    unchanged: raw_cell
                        .unchanged
                        .as_ref()
                        .map(|n| self.unchanged("expect.cell.unchanged", n))
                        .transpose()?,
                });
            }
        }
        Ok((expect, expect_cells))
    }
}

/// Debian policy 5.6.7: "at least two characters long", lower case letters,
/// digits, `+`, `-` and `.`, starting with a letter or digit. An
/// architecture qualifier (`:amd64`) is allowed, as apt takes it.
fn is_package_name(name: &str) -> bool {
    let bare = name.split_once(':').map_or(name, |(bare, _)| bare);
    bare.len() >= 2
        && bare
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && bare
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The project a scenario file belongs to: the folder holding its
/// `scenarios/` folder, or the file's own folder when it is elsewhere.
pub(crate) fn project_of(scenario_file: &Path) -> PathBuf {
    let dir = scenario_file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match dir.file_name() {
        Some(name) if name == "scenarios" => dir.parent().unwrap_or(dir).to_owned(),
        _ => dir.to_owned(),
    }
}

/// Where a `copy` step's source is on the host: `written` relative to the
/// scenario file, inside the scenario's own project once `..` and symbolic
/// links are resolved, and (for a folder) nothing in it leading out by a
/// symbolic link. Scenarios come from bug
/// reports written by strangers; running one must never carry a host file
/// into a guest or a report.
pub(crate) fn copy_source(scenario_file: &Path, written: &str) -> Result<PathBuf, String> {
    let relative = Path::new(written);
    if written.is_empty() || relative.is_absolute() {
        return Err(format!(
            "{written:?} must be a path relative to the scenario file"
        ));
    }
    let base = scenario_file.parent().unwrap_or(Path::new("."));
    let project = project_of(scenario_file)
        .canonicalize()
        .map_err(|e| format!("the scenario's project: {e}"))?;
    let source = base.join(relative);
    let real = source
        .canonicalize()
        .map_err(|e| format!("{}: {e}", source.display()))?;
    if !real.starts_with(&project) {
        return Err(format!(
            "{written:?} is outside the scenario's project ({}); only files inside it can be copied",
            project.display()
        ));
    }
    check_tree(&real, &project, written)?;
    Ok(real)
}

/// Refuses a folder with anything in it that leads out of `project`, or
/// that is neither a file, a folder nor a link within it.
fn check_tree(path: &Path, project: &Path, written: &str) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        let target = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !target.starts_with(project) {
            return Err(format!(
                "{written:?}: {} leads out of the project by a symbolic link",
                path.display()
            ));
        }
        return Ok(());
    }
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            check_tree(&entry.path(), project, written)?;
        }
        return Ok(());
    }
    if meta.is_file() {
        return Ok(());
    }
    Err(format!(
        "{written:?}: {} is neither a file nor a folder",
        path.display()
    ))
}

/// The first non-empty line, as a default step title.
fn first_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    crate::text::ellipsize(line.trim(), 60)
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    description: String,
    matrix: Spanned<RawMatrix>,
    #[serde(rename = "step", default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(rename = "capture", default)]
    captures: Vec<Spanned<RawCapture>>,
    expect: Option<RawExpect>,
    #[serde(default)]
    first_boot: FirstBoot,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    versions: Option<Vec<String>>,
    #[serde(rename = "disk", default)]
    disks: Vec<Spanned<RawDisk>>,
    evidence: Option<Spanned<RawEvidence>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvidence {
    #[serde(default)]
    skip: Vec<Spanned<String>>,
    #[serde(default)]
    snapshot: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: Spanned<String>,
    size: Spanned<RawSize>,
    filesystem: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
    files: Option<Spanned<String>>,
}

/// The sizes an extra disk may have.
const DISK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(64 << 30);

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    releases: Vec<Spanned<String>>,
    kernels: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    title: Option<String>,
    run: Option<String>,
    status: Option<Spanned<RawStatus>>,
    write: Option<String>,
    content: Option<String>,
    mode: Option<String>,
    reboot: Option<bool>,
    copy: Option<String>,
    to: Option<String>,
    wait_for_unit: Option<String>,
    state: Option<Spanned<String>>,
    wait_until: Option<String>,
    detach: Option<String>,
    timeout: Option<Spanned<i64>>,
    #[serde(default)]
    cell: Vec<Spanned<RawStepCell>>,
}

/// An exit status as written: a number, or a word such as `"any"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawStatus {
    Code(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepCell {
    releases: Option<Vec<Spanned<String>>>,
    kernels: Option<Vec<Spanned<String>>>,
    status: Spanned<RawStatus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    name: String,
    run: Option<String>,
    probe_tcp: Option<Spanned<i64>>,
    #[serde(default)]
    normalize: Vec<Normalizer>,
    max_output: Option<Spanned<RawSize>>,
}

/// A size as written: bytes, or a number with `KiB` or `MiB`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Words(String),
}

/// The most a capture may bring back of each output stream.
const MAX_OUTPUT_RANGE: std::ops::RangeInclusive<u64> = 2..=(64 << 20);

impl RawSize {
    /// The size of a capture's output limit.
    fn bytes(&self) -> Option<u64> {
        self.size().filter(|bytes| MAX_OUTPUT_RANGE.contains(bytes))
    }

    /// The size in bytes, whatever its range.
    fn size(&self) -> Option<u64> {
        let bytes = match self {
            RawSize::Bytes(n) => u64::try_from(*n).ok()?,
            RawSize::Words(text) => {
                let text = text.trim();
                let (number, unit) = text
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or((text, ""), |at| text.split_at(at));
                let unit: u64 = match unit.trim() {
                    "" | "B" => 1,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    _ => return None,
                };
                number.parse::<u64>().ok()?.checked_mul(unit)?
            }
        };
        Some(bytes)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    units: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    survive_reboot: Vec<Spanned<String>>,
    #[serde(default)]
    lost_on_reboot: Vec<Spanned<String>>,
    #[serde(default)]
    contains: BTreeMap<Spanned<String>, Vec<String>>,
    boot: Option<Spanned<String>>,
    #[serde(default)]
    unchanged: Vec<Spanned<String>>,
    #[serde(default)]
    cell: Vec<Spanned<RawCellExpect>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCellExpect {
    releases: Option<Vec<Spanned<String>>>,
    kernels: Option<Vec<Spanned<String>>>,
    survive_reboot: Option<Vec<Spanned<String>>>,
    lost_on_reboot: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    units: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    contains: BTreeMap<Spanned<String>, Vec<String>>,
    boot: Option<Spanned<String>>,
    unchanged: Option<Vec<Spanned<String>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn releases() -> Vec<String> {
        vec!["bookworm".into(), "trixie".into()]
    }

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(
            Path::new("scenarios/x.toml"),
            text,
            &Known {
                releases: releases(),
                kernels: vec!["stock".into(), "linode".into()],
            },
        )
    }

    const GOOD: &str = r#"
name = "x"
description = "d"

[matrix]
releases = ["bookworm", "trixie"]
kernels = ["stock"]

[[step]]
run = "echo loop >> /etc/modules"

[[step]]
write = "/etc/x.conf"
content = "a\n"
mode = "0600"

[[step]]
reboot = true

[[capture]]
name = "rules"
run = "iptables-save"
normalize = ["iptables"]

[expect]
survive_reboot = ["rules"]
units = { "netfilter-persistent.service" = "active" }
"#;

    #[test]
    fn shards_split_without_overlap() {
        let shards: Vec<Shard> = (1..=3)
            .map(|k| Shard::parse(&format!("{k}/3")).expect("valid"))
            .collect();
        for index in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.holds(index)).count(), 1);
        }
        assert!(Shard::parse("0/3").is_err());
        assert!(Shard::parse("4/3").is_err());
        assert!(Shard::parse("x").is_err());
    }

    #[test]
    fn a_good_scenario_parses() {
        let s = parse(GOOD).expect("valid");
        assert_eq!(s.matrix.cells().len(), 2);
        assert_eq!(s.steps.len(), 3);
        assert_eq!(
            s.steps[0].action,
            Action::Run {
                command: "echo loop >> /etc/modules".into(),
                status: StepStatus::Exactly(0)
            }
        );
        assert_eq!(s.steps[0].title, "echo loop >> /etc/modules");
        assert!(matches!(
            s.steps[1].action,
            Action::Write { mode: 0o600, .. }
        ));
        assert_eq!(s.steps[2].action, Action::Reboot);
        assert_eq!(s.captures[0].normalize, vec![Normalizer::Iptables]);
        assert_eq!(s.expect.units["netfilter-persistent.service"], "active");
    }

    #[test]
    fn the_first_boot_is_warm_unless_the_scenario_says_cold() {
        assert_eq!(parse(GOOD).expect("valid").first_boot, FirstBoot::Warm);
        let cold = GOOD.replace(
            "description = \"d\"\n",
            "description = \"d\"\nfirst_boot = \"cold\"\n",
        );
        assert_eq!(parse(&cold).expect("valid").first_boot, FirstBoot::Cold);
        let bad = GOOD.replace(
            "description = \"d\"\n",
            "description = \"d\"\nfirst_boot = \"hot\"\n",
        );
        let (line, message) = error_of(&bad);
        assert_eq!(line, 4, "{message}");
        assert!(
            message.contains("hot") && message.contains("cold"),
            "{message}"
        );
    }

    fn error_of(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ScenarioError::Invalid { line, message, .. }) => (line, message),
            other => panic!("expected an invalid-scenario error, got {other:?}"),
        }
    }

    const DISKS: &str = r#"
name = "x"
description = "d"

[matrix]
releases = ["bookworm"]
kernels = ["stock"]

[[disk]]
name = "data"
size = "64 MiB"
label = "DATA"

[[disk]]
name = "blank"
size = 1048576

[[step]]
detach = "data"

[[step]]
reboot = true
"#;

    #[test]
    fn disks_parse_with_their_defaults_and_a_detach_step_names_one() {
        let s = parse(DISKS).expect("valid");
        assert_eq!(s.disks.len(), 2);
        assert_eq!(s.disks[0].size, 64 << 20);
        let fs = s.disks[0]
            .filesystem
            .as_ref()
            .expect("a label makes a file system");
        assert_eq!(
            (fs.kind.as_str(), fs.label.as_deref()),
            ("ext4", Some("DATA"))
        );
        assert_eq!(s.disks[1].filesystem, None, "no label, no files: blank");
        assert_eq!(
            s.steps[0].action,
            Action::Detach {
                disk: "data".into()
            }
        );
        assert_eq!(s.steps[0].title, "detach disk data");
    }

    #[test]
    fn bad_disks_and_detaches_are_refused_where_written() {
        for (from, to, line, words) in [
            (
                "name = \"data\"",
                "name = \"Data Disk\"",
                10,
                "key `disk.name`",
            ),
            ("name = \"blank\"", "name = \"data\"", 15, "used twice"),
            ("size = \"64 MiB\"", "size = \"65 GiB\"", 11, "key `size`"),
            ("size = \"64 MiB\"", "size = 512", 11, "from 1 MiB"),
            (
                "label = \"DATA\"",
                "label = \"A-LABEL-TOO-LONG-X\"",
                12,
                "16 bytes",
            ),
            (
                "label = \"DATA\"",
                "filesystem = \"xfs\"",
                12,
                "\"xfs\" is not one vmrepro makes",
            ),
            (
                "detach = \"data\"",
                "detach = \"dat\"",
                18,
                "no `[[disk]]` is named \"dat\" (disks: data, blank)",
            ),
            (
                "reboot = true",
                "detach = \"data\"",
                21,
                "already detached by step 1",
            ),
        ] {
            let text = DISKS.replacen(from, to, 1);
            let (at, message) = error_of(&text);
            assert!(message.contains(words), "{to}: {message}");
            assert_eq!(at, line, "{to}: {message}");
        }
    }

    #[test]
    fn a_disks_files_are_a_folder_inside_the_project() {
        let project = tempfile::tempdir().expect("temp dir");
        let scenarios = project.path().join("scenarios");
        std::fs::create_dir_all(scenarios.join("data/etc")).expect("mkdir");
        std::fs::write(scenarios.join("note.txt"), "x").expect("write");
        let file = scenarios.join("x.toml");
        let known = Known {
            releases: releases(),
            kernels: vec!["stock".into()],
        };
        let with = |files: &str| {
            DISKS.replacen(
                "label = \"DATA\"",
                &format!("label = \"DATA\"\nfiles = {files:?}"),
                1,
            )
        };
        let s = Scenario::parse(&file, &with("data"), &known).expect("valid");
        let fs = s.disks[0].filesystem.as_ref().expect("a file system");
        assert_eq!(fs.files.as_ref().map(|f| f.0.as_str()), Some("data"));
        for (files, words) in [
            ("note.txt", "must be a folder"),
            ("../..", "outside the scenario's project"),
        ] {
            match Scenario::parse(&file, &with(files), &known) {
                Err(ScenarioError::Invalid { line, message, .. }) => {
                    assert!(
                        message.contains(words) && message.contains("key `files`"),
                        "{message}"
                    );
                    assert_eq!(line, 13, "{message}");
                }
                other => panic!("{files}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn evidence_sources_can_be_skipped_and_named_by_expectations() {
        let s = parse(DISKS).expect("valid");
        assert_eq!(s.evidence, EvidenceSpec::default());
        assert_eq!(s.evidence.sources.len(), 7);
        let text = format!(
            "{DISKS}\n[evidence]\nskip = [\"journal\", \"modules\"]\nsnapshot = true\n\n[expect]\nunchanged = [\"firewall\", \"sysctl:net.ipv4.ip_forward\"]\n"
        );
        let s = parse(&text).expect("valid");
        assert!(s.evidence.snapshot);
        assert!(!s.evidence.sources.contains(&EvidenceSource::Journal));
        assert_eq!(s.evidence.sources.len(), 5);
        assert_eq!(
            s.expect.unchanged,
            vec!["firewall", "sysctl:net.ipv4.ip_forward"]
        );
        let (line, message) = error_of(&text.replace("\"modules\"]", "\"modles\"]"));
        assert_eq!(line, 25, "{message}");
        assert!(
            message.contains("key `evidence.skip`: \"modles\" is not a source"),
            "{message}"
        );
        let (line, message) = error_of(&text.replace("\"firewall\",", "\"firewal:x\","));
        assert_eq!(line, 29, "{message}");
        assert!(
            message.contains("\"firewal:x\" does not name evidence"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_key_names_its_line_and_key() {
        let text = GOOD.replace("reboot = true", "rebot = true");
        let (line, message) = error_of(&text);
        assert_eq!(line, 18, "{message}");
        assert!(message.contains("rebot"), "{message}");
    }

    #[test]
    fn a_wrong_type_names_its_line() {
        let text = GOOD.replace("kernels = [\"stock\"]", "kernels = \"stock\"");
        let (line, message) = error_of(&text);
        assert_eq!(line, 7, "{message}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = GOOD.replace("description = \"d\"\n", "");
        let (_, message) = error_of(&text);
        assert!(message.contains("description"), "{message}");
    }

    #[test]
    fn an_unknown_release_or_kernel_is_rejected_where_it_is_written() {
        let (line, message) = error_of(&GOOD.replace("\"trixie\"]", "\"jessy\"]"));
        assert_eq!(line, 6);
        assert!(message.contains("jessy"), "{message}");
        let (line, message) = error_of(&GOOD.replace("[\"stock\"]", "[\"stok\"]"));
        assert_eq!(line, 7);
        assert!(message.contains("stok"), "{message}");
    }

    #[test]
    fn a_captures_output_limit_is_bytes_or_a_size_in_words() {
        let with = |value: &str| {
            GOOD.replace(
                "normalize = [\"iptables\"]",
                &format!("normalize = [\"iptables\"]\nmax_output = {value}"),
            )
        };
        assert_eq!(
            parse(GOOD).expect("parses").captures[0].max_output,
            super::super::DEFAULT_MAX_OUTPUT
        );
        for (value, bytes) in [("4096", 4096), ("\"64 KiB\"", 65536), ("\"2MiB\"", 2 << 20)] {
            let s = parse(&with(value)).expect("parses");
            assert_eq!(s.captures[0].max_output, bytes, "{value}");
        }
        for value in ["0", "-1", "\"1 GiB\"", "\"lots\"", "\"65 MiB\""] {
            let (line, message) = error_of(&with(value));
            assert!(
                line > 1 && message.contains("max_output"),
                "{value}: {line} {message}"
            );
        }
    }

    #[test]
    fn unit_states_are_checked_where_they_are_written() {
        let (line, message) = error_of(&GOOD.replace(
            "\"netfilter-persistent.service\" = \"active\"",
            "\"netfilter-persistent.service\" = \"actve\"",
        ));
        assert!(line > 1, "{line}");
        assert!(message.contains("\"actve\" is not a state"), "{message}");
        let cell = format!(
            "{GOOD}\n[[expect.cell]]\nreleases = [\"trixie\"]\nunits = {{ \"x.service\" = \"runing\" }}\n"
        );
        let (line, message) = error_of(&cell);
        assert_eq!(line, cell.lines().count(), "{message}");
        assert!(
            message.contains("expect.cell.units") && message.contains("runing"),
            "{message}"
        );
        let (_, message) = error_of(&GOOD.replace(
            "reboot = true",
            "reboot = true\n\n[[step]]\nwait_for_unit = \"x.service\"\nstate = \"up\"",
        ));
        assert!(
            message.contains("key `state`") && message.contains("\"up\""),
            "{message}"
        );
    }

    #[test]
    fn steps_need_exactly_one_action() {
        let (line, message) =
            error_of(&GOOD.replace("reboot = true", "reboot = true\nrun = \"x\""));
        assert_eq!(line, 17);
        assert!(message.contains("cannot be combined"), "{message}");
        let (_, message) = error_of(&GOOD.replace("content = \"a\\n\"\n", ""));
        assert!(message.contains("content"), "{message}");
    }

    #[test]
    fn wait_steps_parse_with_their_defaults() {
        let text = GOOD.replace(
            "reboot = true",
            "reboot = true\n\n[[step]]\nwait_for_unit = \"ssh.socket\"\n\n[[step]]\nwait_for_unit = \"x.service\"\nstate = \"failed\"\ntimeout = 5\n\n[[step]]\nwait_until = \"test -e /run/ready\"",
        );
        let scenario = parse(&text).expect("parses");
        let waits: Vec<(&str, &Action, Duration)> = scenario
            .steps
            .iter()
            .filter(|s| s.action.is_wait())
            .map(|s| (s.title.as_str(), &s.action, s.timeout))
            .collect();
        assert_eq!(
            waits,
            [
                (
                    "wait for ssh.socket to be active",
                    &Action::WaitForUnit {
                        unit: "ssh.socket".into(),
                        state: "active".into()
                    },
                    DEFAULT_STEP_TIMEOUT
                ),
                (
                    "wait for x.service to be failed",
                    &Action::WaitForUnit {
                        unit: "x.service".into(),
                        state: "failed".into()
                    },
                    Duration::from_secs(5)
                ),
                (
                    "wait until test -e /run/ready",
                    &Action::WaitUntil {
                        command: "test -e /run/ready".into()
                    },
                    DEFAULT_STEP_TIMEOUT
                ),
            ]
        );
        let (_, message) =
            error_of(&GOOD.replace("reboot = true", "reboot = true\nstate = \"active\""));
        assert!(message.contains("`state` does not apply"), "{message}");
        let (_, message) = error_of(&GOOD.replace("reboot = true", "wait_for_unit = \"a b\""));
        assert!(message.contains("not a unit name"), "{message}");
    }

    #[test]
    fn cell_expectations_override_the_general_ones() {
        let text = format!(
            "{GOOD}\n[[expect.cell]]\nreleases = [\"trixie\"]\nsurvive_reboot = []\nlost_on_reboot = [\"rules\"]\nunits = {{ \"netfilter-persistent.service\" = \"inactive\" }}\ncontains = {{ \"rules\" = [\"DROP\"] }}\n"
        );
        let s = parse(&text).expect("valid");
        let bookworm = s.expectations_for(&Cell {
            release: "bookworm".into(),
            kernel: KernelFlavour::stock(),
        });
        assert_eq!(bookworm.survive_reboot, ["rules"]);
        assert!(bookworm.lost_on_reboot.is_empty());
        let trixie = s.expectations_for(&Cell {
            release: "trixie".into(),
            kernel: KernelFlavour::stock(),
        });
        assert!(trixie.survive_reboot.is_empty());
        assert_eq!(trixie.lost_on_reboot, ["rules"]);
        assert_eq!(trixie.units["netfilter-persistent.service"], "inactive");
        assert_eq!(trixie.contains["rules"], ["DROP"]);
    }

    #[test]
    fn a_step_status_can_differ_per_cell() {
        let text = GOOD.replace(
            "[[step]]\nrun = \"echo loop >> /etc/modules\"\n",
            "[[step]]\nrun = \"netfilter-persistent save\"\n\n[[step.cell]]\nreleases = [\"trixie\"]\nstatus = \"any\"\n\n[[step.cell]]\nreleases = [\"trixie\"]\nkernels = [\"stock\"]\nstatus = 1\n",
        );
        let s = parse(&text).expect("valid");
        let cell = |release: &str, kernel| Cell {
            release: release.into(),
            kernel,
        };
        let step = &s.steps[0];
        assert_eq!(
            step.status_for(&cell("bookworm", KernelFlavour::stock())),
            Some(StepStatus::Exactly(0))
        );
        // Later tables win: trixie × stock expects 1, trixie × linode any.
        assert_eq!(
            step.status_for(&cell("trixie", KernelFlavour::stock())),
            Some(StepStatus::Exactly(1))
        );
        assert_eq!(
            step.status_for(&cell("trixie", KernelFlavour::named("linode"))),
            Some(StepStatus::Any)
        );
        assert!(StepStatus::Any.accepts(1) && StepStatus::Any.accepts(0));
        assert!(!StepStatus::Exactly(1).accepts(0));
        assert_eq!(
            s.steps[2].status_for(&cell("trixie", KernelFlavour::stock())),
            None
        );
    }

    #[test]
    fn out_of_range_statuses_and_timeouts_are_refused_where_written() {
        let (line, message) = error_of(&GOOD.replace(
            "run = \"echo loop >> /etc/modules\"",
            "run = \"echo loop >> /etc/modules\"\nstatus = 300",
        ));
        assert_eq!(line, 11, "{message}");
        assert!(
            message.contains("300") && message.contains("0 to 255"),
            "{message}"
        );
        let (line, message) = error_of(&GOOD.replace(
            "run = \"echo loop >> /etc/modules\"",
            "run = \"echo loop >> /etc/modules\"\ntimeout = 0",
        ));
        assert_eq!(line, 11, "{message}");
        assert!(message.contains("timeout"), "{message}");
        let (_, message) = error_of(&GOOD.replace(
            "run = \"echo loop >> /etc/modules\"",
            "run = \"echo loop >> /etc/modules\"\nstatus = \"some\"",
        ));
        assert!(message.contains("\"some\""), "{message}");
        let (_, message) =
            error_of(&GOOD.replace("reboot = true", "reboot = true\n[[step.cell]]\nstatus = 1"));
        assert!(message.contains("`cell` does not apply"), "{message}");
    }

    #[test]
    fn expectations_must_name_real_captures() {
        let (line, message) = error_of(&GOOD.replace(
            "survive_reboot = [\"rules\"]",
            "survive_reboot = [\"rulez\"]",
        ));
        assert_eq!(line, 26);
        assert!(message.contains("rulez"), "{message}");
    }
}
