//! Human or `--json` output. Results go to stdout; errors and progress to stderr.

use std::fmt::Display;
use std::io::Write;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `human` for people, or `json` (one document on one line) with `--json`.
    pub fn emit(&self, human: impl Display, json: serde_json::Value) {
        // A reader that went away (`| head`) is not an error of this command: stop writing quietly.
        let mut out = std::io::stdout().lock();
        let _ = if self.json { writeln!(out, "{json}") } else { writeln!(out, "{human}") };
    }

    pub fn error(&self, e: &anyhow::Error) {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        if self.json {
            let defence = e.downcast_ref::<crate::release::Refused>().map(|r| r.defence.to_string());
            println!("{}", serde_json::json!({"error": chain.join(": "), "defence": defence}));
        } else {
            eprintln!("error: {}", chain.join(": "));
        }
    }

    /// A progress bar over `len` bytes, hidden with `--json` and when stderr is not a terminal.
    pub fn bytes_bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len).with_message(what.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    }

    /// A progress bar over `len` steps of work (variants to make, runs to time), hidden with `--json`.
    pub fn steps_bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len).with_message(what.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }

    /// A spinner for work of unknown length (running a model), hidden with `--json`.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner().with_message(what.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }
}
