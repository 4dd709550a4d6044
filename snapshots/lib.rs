//! The committed snapshots of every scenario × cell live beside this file.
//!
//! This library is empty: it makes the top level a package, so that
//! `cargo insta review`, `cargo insta accept` and `cargo insta
//! pending-snapshots`, run from the project directory, find the pending
//! `*.snap.new` files here.
