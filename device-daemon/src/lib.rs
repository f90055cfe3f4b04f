//! `edgefleet-daemon`: the program that lives on every device — hardware detection, enrollment, the reconcile
//! loop (check in, verify, download, stage, load, golden check, swap, health watch, commit or roll back), and
//! local inference over the Open Inference Protocol with atomic hot swap.
//!
//! Invariant: hardware is read from files under a configurable root, never from the build machine.

pub mod agent;
pub mod capped;
pub mod cloud;
pub mod download;
pub mod golden;
pub mod hardware;
pub mod health;
pub mod identity;
pub mod install;
pub mod layout;
pub mod machine;
pub mod measure;
pub mod openai;
pub mod power;
pub mod reconcile;
pub mod roots;
pub mod route;
pub mod run;
pub mod serving;
pub mod telemetry;
pub mod v2;
