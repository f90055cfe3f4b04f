//! `edgefleet`: the command line of ML engineers and operators. Thin: parse, run, map errors to exit codes
//! (0 ok, 1 error, 2 usage, 3 verification refused).

use std::process::ExitCode;

use clap::Parser;

mod args;
mod docs;
mod keys_cmd;
mod output;
mod release;
mod remote;
mod remote_cmd;
mod rollout_cmd;
mod trust_cmd;

use args::{Cli, Command};
use output::Out;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let result = match cli.command {
        Command::Keys(c) => keys_cmd::run(c, &out),
        Command::Trust(c) => trust_cmd::run(c, &out),
        Command::Release(c) => release::run(c, &out),
        other => remote_cmd::run(other, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            if e.downcast_ref::<release::Refused>().is_some() { ExitCode::from(3) } else { ExitCode::FAILURE }
        }
    }
}
