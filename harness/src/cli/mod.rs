//! The binary's own modules: the flags, and the commands that are more
//! than a call into the library.

pub(crate) mod doctor;
pub(crate) mod flags;
pub(crate) mod guests;
pub(crate) mod images;
pub(crate) mod project;
pub(crate) mod terminal;
pub(crate) mod trials;
