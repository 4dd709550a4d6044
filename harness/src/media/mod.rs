//! What a trial boots, built once and cached: the [`cache`] of build
//! results, release [`image`]s, the Linode-style [`kernel`] and a
//! scenario's extra `disk`s.

pub mod cache;
pub(crate) mod disk;
pub mod image;
pub mod kernel;
pub(crate) mod partition;
