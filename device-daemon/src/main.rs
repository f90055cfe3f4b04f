//! `edgefleet-daemon`: thin entry point. `hardware` prints what this device is and why.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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

/// `run --config FILE` (or `EDGEFLEET_CONFIG`): every `key = value` of the TOML file becomes `--key value`
/// unless the flag was given or its `EDGEFLEET_KEY` variable is set. So flags beat the environment, which beats
/// the file, which beats the defaults.
fn with_config_file(mut argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(run_at) = argv.iter().position(|a| a == "run") else { return Ok(argv) };
    let mut path = std::env::var_os("EDGEFLEET_CONFIG").map(PathBuf::from);
    if let Some(i) = argv.iter().position(|a| a == "--config") {
        path = argv.get(i + 1).map(PathBuf::from);
        argv.drain(i..(i + 2).min(argv.len()));
    } else if let Some(i) = argv.iter().position(|a| a.starts_with("--config=")) {
        path = Some(PathBuf::from(&argv[i]["--config=".len()..]));
        argv.remove(i);
    }
    let Some(path) = path else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let env = format!("EDGEFLEET_{}", key.to_ascii_uppercase());
        let given = argv[run_at..].iter().any(|a| a == &flag || a.starts_with(&format!("{flag}=")));
        if given || std::env::var_os(&env).is_some() {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => anyhow::bail!("{}: `{key}` must be a string, number or boolean, not {other}", path.display()),
        };
        argv.push(flag);
        argv.push(value);
    }
    Ok(argv)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file or a journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let argv = match with_config_file(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
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
            let layout = edgefleet_daemon::layout::Layout { root: data_dir };
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
