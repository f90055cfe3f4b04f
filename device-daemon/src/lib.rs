//! `edgefleet-daemon`: the program that lives on every device. So far: hardware detection, serving
//! loaded releases with atomic hot swap, and the local Open Inference Protocol API; the reconcile loop
//! (download, verify, stage, golden check, bake, rollback) follows (issue 4).
//!
//! Invariant: hardware is read from files under a configurable root, never from the build machine.

pub mod agent;
pub mod hardware;
pub mod health;
pub mod machine;
pub mod run;
pub mod serving;
pub mod v2;
