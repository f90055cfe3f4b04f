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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
