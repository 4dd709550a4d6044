//! vmrepro turns "my machine breaks after a reboot" bug reports into VM-based
//! regression tests.
//!
//! The data flows one way through the modules:
//! [`scenario`] (what to do) → [`image`] and [`kernel`] (what to boot) →
//! [`vm`] (QEMU) → [`console`] (the guest's root shell) →
//! [`warm`] (a booted guest saved once, resumed by every trial) →
//! [`capture`] (guest state) →
//! [`snapshot`] and [`report`]. [`run`] drives one scenario on one matrix
//! cell through all of them, and [`trial`] adds the report, the snapshot
//! comparison and the table row; [`cache`], [`host`], [`process`] and
//! [`progress`] serve every layer.

#![warn(missing_docs)]

pub mod cache;
pub mod capture;
pub mod console;
pub mod host;
pub mod image;
pub mod kernel;
pub mod process;
pub mod progress;
pub mod project;
pub mod report;
pub mod run;
pub mod scenario;
pub mod snapshot;
pub mod trial;
pub mod verdict;
pub mod vm;
pub mod warm;
