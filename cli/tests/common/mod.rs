//! What the CLI's test files share: the `edgefleet` binary run in a scratch directory, its result.

#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Command, Output};

use edgefleet_e2e::cache;

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn ok(self) -> Self {
        assert!(self.out.status.success(), "command failed: {}{}", self.stdout(), self.stderr());
        self
    }
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout().trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
    /// Fails with exit code `code` and says `says` on stderr.
    pub fn fails(self, code: i32, says: &str) -> Self {
        assert_eq!(self.code(), Some(code), "expected exit {code}: {}{}", self.stdout(), self.stderr());
        assert!(self.stderr().contains(says), "stderr does not say {says:?}: {}", self.stderr());
        self
    }
}

/// A scratch directory with the `edgefleet` binary pointed at it.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefleet"))
            .args(args)
            .current_dir(self.dir.path())
            .env("EDGEFLEET_ORT_LIB", cache("lib/libonnxruntime.so.1.31.1"))
            .output()
            .expect("run edgefleet");
        Run { out }
    }
}
