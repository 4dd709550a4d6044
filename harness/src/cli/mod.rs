//! The binary's own modules: the flags, and the commands, one module for
//! each group of them.

pub(crate) mod doctor;
pub(crate) mod flags;
pub(crate) mod guests;
pub(crate) mod images;
pub(crate) mod project;
pub(crate) mod terminal;
pub(crate) mod trials;
