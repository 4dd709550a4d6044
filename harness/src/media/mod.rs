//! What a trial boots, built once and cached: the [`cache`] of build
//! results, release [`image`]s, the Linode-style [`kernel`] and a
//! scenario's extra `disk`s.

pub mod cache;
pub(crate) mod disk;
pub mod image;
pub mod kernel;
pub(crate) mod partition;

use std::path::Path;
use std::time::Duration;

use crate::host::process::{self, ProcessError};
use crate::host::progress::Events;

/// Converts the raw disk `raw` into the qcow2 file `disk` with `qemu-img`
/// (its output in `work/qemu-img.log`, kept only if it fails), as images
/// and a scenario's disks are stored.
fn qcow2_from_raw(
    events: &Events,
    label: &str,
    raw: &Path,
    disk: &Path,
    work: &Path,
) -> Result<(), ProcessError> {
    let mut convert = std::process::Command::new("qemu-img");
    convert
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(raw)
        .arg(disk);
    let log = work.join("qemu-img.log");
    process::run_logged(
        events,
        &format!("{label}: qemu-img convert"),
        convert,
        &log,
        Duration::from_secs(600),
    )?;
    let _ = std::fs::remove_file(log);
    Ok(())
}
