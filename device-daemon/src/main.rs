//! `edgefleet-daemon`: thin entry point. `hardware` prints what this device is and why.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgefleet-daemon", version, about = "The edgefleet device daemon")]
struct Cli {
    /// Where to read hardware facts from (`/` on a device; a fixture tree in tests).
    #[arg(long, env = "EDGEFLEET_HARDWARE_ROOT", default_value = "/", global = true)]
    hardware_root: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect the hardware: device class, execution providers in order, memory, SoC, power sensor.
    Hardware,
    /// Enroll (first start), then check in, install and serve until stopped.
    Run(Box<edgefleet_daemon::run::RunArgs>),
    /// What is committed in each slot, and what failed last (read from the data directory).
    Status {
        #[arg(long, env = "EDGEFLEET_DATA_DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(edgefleet_daemon::run::run(*args, cli.hardware_root)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { data_dir } => {
            let layout = edgefleet_daemon::agent::Layout { root: data_dir };
            match layout.load_state() {
                Ok(s) => {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    } else {
                        for (m, i) in &s.committed {
                            println!("{m}: release {} variant {} in slot {}", i.release, i.variant, i.slot.as_str());
                        }
                        if s.committed.is_empty() {
                            println!("no model committed");
                        }
                        println!("last error: {}", s.last_error.as_deref().unwrap_or("none"));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Hardware => {
            let d = edgefleet_daemon::hardware::detect(&cli.hardware_root);
            if cli.json {
                match serde_json::to_string_pretty(&d) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!("device class  {}", d.profile.device_class);
                println!("arch          {}", d.profile.arch);
                println!("providers     {}", d.profile.execution_providers.join(" -> "));
                println!("memory        {} MiB", d.profile.memory_bytes >> 20);
                println!(
                    "soc           {}",
                    if d.profile.soc.is_empty() { "-".into() } else { d.profile.soc.join(", ") }
                );
                println!("power         {}", d.profile.power);
                for e in &d.evidence {
                    println!("  because {e}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}
