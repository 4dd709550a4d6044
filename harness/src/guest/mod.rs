//! One running guest: QEMU and its monitor ([`vm`]), the root shell on the
//! control port (`console`), what the guest is doing as its kernel
//! console tells (`life`), its restricted network seen from the host
//! (`net`), and booted states saved once and resumed by every trial
//! ([`warm`]).

pub(crate) mod console;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod life;
pub(crate) mod net;
pub(crate) mod qmp;
pub(crate) mod transfer;
pub mod vm;
pub mod warm;
