//! `edgefleet-server`: parse configuration, build, serve until Ctrl-C or SIGTERM; or create an API token on the
//! server host (`token create`), for the first admin.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgefleet_protocol::api::TokenRole;
use edgefleet_server::config::Config;

#[derive(Debug, Parser)]
#[command(name = "edgefleet-server", version, about = "The edgefleet control plane")]
struct Cli {
    /// A TOML config file; EDGEFLEET_* variables and flags override it.
    #[arg(long, short, env = "EDGEFLEET_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_LISTEN", global = true)]
    listen: Option<String>,
    #[arg(long, env = "EDGEFLEET_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_DATABASE_URL", global = true)]
    database_url: Option<String>,
    #[arg(long, env = "EDGEFLEET_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_TRUST_ROOT", global = true)]
    trust_root: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_FLEET_KEY", global = true)]
    fleet_key: Option<PathBuf>,
    /// `s3://bucket[/prefix]` or a directory (default: `<data-dir>/blobs`).
    #[arg(long, env = "EDGEFLEET_BLOBS", global = true)]
    blobs: Option<String>,
    #[arg(long, env = "EDGEFLEET_BLOB_ENDPOINT", global = true)]
    blob_endpoint: Option<String>,
    #[arg(long, env = "EDGEFLEET_BLOB_REGION", global = true)]
    blob_region: Option<String>,
    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long, env = "EDGEFLEET_BLOB_ALLOW_HTTP", global = true)]
    blob_allow_http: bool,
    #[arg(long, env = "EDGEFLEET_BLOB_DOWNLOADS", global = true)]
    blob_downloads: Option<edgefleet_server::blobs::Downloads>,
    #[arg(long, env = "EDGEFLEET_DEVICE_CA_CERT", global = true)]
    device_ca_cert: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_DEVICE_CA_KEY", global = true)]
    device_ca_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Manage API tokens directly in the database, on the server host.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token and print it once (only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: TokenRole,
    },
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = &cli.listen {
        c.listen = v.clone();
    }
    if let Some(v) = &cli.data_dir {
        c.data_dir = v.clone();
    }
    macro_rules! opt {
        ($($f:ident),*) => {$( if cli.$f.is_some() { c.$f = cli.$f.clone(); } )*};
    }
    opt!(
        database_url,
        tls_cert,
        tls_key,
        trust_root,
        fleet_key,
        blobs,
        blob_endpoint,
        blob_region,
        device_ca_cert,
        device_ca_key
    );
    if cli.blob_allow_http {
        c.blob_allow_http = true;
    }
    if let Some(d) = cli.blob_downloads {
        c.blob_downloads = d;
    }
    Ok(c)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = config(&cli)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listen = cfg.listen.clone();
            let built = edgefleet_server::app::build(cfg).await?;
            let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            println!("edgefleet-server listening on https://{addr}");
            println!("certificate {} sha256 fingerprint {}", built.cert_path.display(), built.fingerprint);
            println!("replica {}", built.state.replica);
            let router = edgefleet_server::api::router(built.state.clone());
            let limits = edgefleet_server::server::ConnLimits::from_config(&built.state.config);
            edgefleet_server::server::serve(listener, router, built.tls, limits, shutdown_signal()).await?;
            // Stop the background work, write the telemetry still pending, then let the last_seen writer drain.
            for task in built.background {
                task.abort();
                let _ = task.await;
            }
            edgefleet_server::telemetry::flush(&built.state).await;
            drop(built.state);
            let _ = built.flusher.await;
            Ok(())
        }
        Command::Token(TokenCmd::Create { name, role }) => {
            std::fs::create_dir_all(&cfg.data_dir)?;
            let store = edgefleet_server::store::Store::connect(&cfg.database_url()).await?;
            let token = edgefleet_server::api::new_token("eft").map_err(|e| anyhow::anyhow!(e.message))?;
            let hash = edgefleet_server::api::token_hash(&token);
            let now = edgefleet_server::state::now_ms();
            store.create_token(&name, role, &hash, "server-host", now, None).await?;
            store
                .audit(
                    edgefleet_server::store::Audit {
                        actor: "server-host",
                        action: "token.create",
                        target: &name,
                        source: "local",
                        detail: serde_json::json!({"role": role}),
                    },
                    now,
                )
                .await?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("stopping");
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file or a journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
