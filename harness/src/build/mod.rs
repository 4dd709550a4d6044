//! What a trial boots, built once and cached: the [`cache`] of build
//! results, release [`image`]s and the Linode-style [`kernel`].

pub mod cache;
pub mod image;
pub mod kernel;
pub(crate) mod partition;
