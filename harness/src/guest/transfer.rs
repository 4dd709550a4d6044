//! Files from the host into a guest, over the control channel: a tar
//! archive (modes kept, owned by root), sent base64-encoded, its SHA-256
//! checked in the guest before anything is unpacked.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::guest::console::{CommandOutput, Console, ConsoleError};
use crate::text::shell_quote;

/// Copies `source` (a file or a folder) into the guest: a file becomes the
/// file `to`, a folder's contents go into the folder `to`; both are
/// created with their parents. `progress` hears (bytes sent, bytes in all)
/// after each chunk.
pub(crate) fn copy_in(
    console: &mut Console,
    what: &str,
    source: &Path,
    to: &str,
    timeout: Duration,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CommandOutput, ConsoleError> {
    let io = |message: String| ConsoleError::Io {
        what: what.to_owned(),
        message,
    };
    let archive = archive(source).map_err(io)?;
    let digest = crate::text::hex(&Sha256::digest(&archive));
    let staging = format!("/tmp/.vmrepro-copy-{}", &digest[..16]);
    let quoted = shell_quote(&staging);
    let sent = console.receive_file(what, &staging, &archive, timeout, progress)?;
    if sent.status != 0 {
        return Ok(sent);
    }
    let target = shell_quote(to);
    let unpack = if source.is_dir() {
        format!("mkdir -p {target}\ntar -C {target} -xpf {quoted}\n")
    } else {
        format!(
            "into=$(mktemp -d)\ntar -C \"$into\" -xpf {quoted}\nmkdir -p \"$(dirname {target})\"\nmv -fT \"$into\"/* {target}\nrm -rf \"$into\"\n"
        )
    };
    console.run(
        what,
        &format!(
            "set -e\nsum=$(sha256sum {quoted} | cut -d' ' -f1)\nif [ \"$sum\" != {digest} ]; then echo \"the archive arrived damaged: $sum\" >&2; exit 1; fi\n{unpack}rm -f {quoted}\necho \"$(du -sb {target} | cut -f1) bytes at \"{target}\n"
        ),
        timeout,
    )
}

/// A tar archive of `source`: a folder's contents, or the file alone;
/// owned by root in the archive, modes kept.
fn archive(source: &Path) -> Result<Vec<u8>, String> {
    let mut tar = Command::new("tar");
    tar.args(["--owner=0", "--group=0", "--numeric-owner", "-cf", "-"]);
    if source.is_dir() {
        tar.arg("-C").arg(source).arg(".");
    } else {
        let (Some(dir), Some(name)) = (source.parent(), source.file_name()) else {
            return Err(format!("{}: not a file name", source.display()));
        };
        tar.arg("-C").arg(dir).arg("--").arg(name);
    }
    let out = tar
        .output()
        .map_err(|e| format!("running tar for {}: {e}", source.display()))?;
    if !out.status.success() {
        return Err(format!(
            "tar of {} failed: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}
