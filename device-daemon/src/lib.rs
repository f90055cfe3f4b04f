//! `edgefleet-daemon`: the program that lives on every device. So far it detects the hardware it runs on;
//! the reconcile loop, runtime, hot swap and local inference API follow (issue 4).
//!
//! Invariant: hardware is read from files under a configurable root, never from the build machine.

pub mod hardware;
