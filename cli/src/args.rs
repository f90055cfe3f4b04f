//! The command-line grammar. Every command has `--help`; every command accepts `--json`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgefleet", version, about = "Ship signed, verified ML models to fleets of edge devices")]
pub struct Cli {
    /// Print results as JSON on stdout (errors too), for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate and inspect ed25519 signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Create, sign, rotate and inspect the trust root (root.json).
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Pack, sign, verify and push releases.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Save the control plane's address, an API token, and how to trust its certificate.
    Login {
        /// `https://host:port`
        #[arg(long)]
        server: String,
        #[arg(long, env = "EDGEFLEET_TOKEN")]
        token: String,
        /// Trust the server through this CA (or its own certificate) file, PEM.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Or pin the server certificate's SHA-256 fingerprint (printed by edgefleet-server at start).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Models in the registry, with their latest release.
    Models,
    /// Releases of a model, newest first.
    Releases { model: String },
    /// Assign a release of a model to the devices a label selector matches (`region=eu,hw.npu=hexagon`).
    Assign {
        model: String,
        version: u64,
        /// Empty: every device.
        #[arg(long, default_value = "")]
        selector: String,
    },
    /// Rollouts in waves, gated on what the fleet reports (operator to change, viewer to look).
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The device inventory.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// API tokens (admin).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// One-time device enrollment tokens (operator).
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(EnrollTokenCmd),
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only the entries about this target (a rollout id, a device id, `magika/2`, ...).
        #[arg(long)]
        target: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Start rolling a release out to the devices a selector matches, in waves with bake times and gates.
    Create {
        model: String,
        release: u64,
        /// The release the others keep and a rollback returns to (default: the model's assigned release).
        #[arg(long)]
        baseline: Option<u64>,
        /// Label selector (`region=eu,hw.npu=hexagon`); empty: every device.
        #[arg(long, default_value = "")]
        selector: String,
        /// A wave, `PERCENT[:BAKE]` with BAKE like `90s`, `30m`, `2h` (default 0): the share of the selected
        /// devices on the release once it starts, cumulative; or `SELECTOR[:BAKE]`, an explicit cohort
        /// (`canary=true:30m`). Repeat, rising: `--wave canary=true:30m --wave 10:1h --wave 100`.
        #[arg(long = "wave", required = true)]
        waves: Vec<String>,
        /// A gate against the baseline on the same device class: `error-rate=0.01` (largest increase),
        /// `p95-ratio=1.2`, `energy-ratio=1.1`, `install-failures=0.05`. Repeat.
        #[arg(long = "gate")]
        gates: Vec<String>,
        /// Samples each gate needs on each side before it judges.
        #[arg(long, default_value_t = 100)]
        min_samples: u64,
        /// What a failed gate does: `pause` or `rollback`.
        #[arg(long, default_value = "pause")]
        on_failure: String,
        /// How each device's variant of the release is picked: `first-fit` (the manifest's first variant that
        /// fits the device), or `by-measurement`: devices on the release run every variant they can on its
        /// golden inputs, and each device class gets the fastest (or least energy, `--objective energy`) that
        /// stays within its golden tolerances; a wave ends only once every class it reached has its choice.
        #[arg(long, default_value = "first-fit")]
        choose_variant: String,
        /// With `--choose-variant by-measurement`: `latency` or `energy`.
        #[arg(long, default_value = "latency")]
        objective: String,
        /// With `--choose-variant by-measurement`: devices of a class that must report before it is decided.
        #[arg(long, default_value_t = 1)]
        measure_devices: u64,
    },
    /// Every rollout, or one with each wave and gate.
    Status { id: Option<String> },
    /// Hold a running rollout where it is.
    Pause { id: String },
    /// Let a paused rollout go on.
    Resume { id: String },
    /// Stop a rollout and send its devices back to the baseline.
    Abort { id: String },
    /// Skip the remaining waves: every selected device gets the release.
    Promote { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Devices matching a selector.
    List {
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this device id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One device: hardware, last report, events.
    Show { id: String },
    /// Replace a device's labels: `--label k=v` for each.
    Label {
        id: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Revoke a device: its certificate is refused from now on.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create an API token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, publisher, operator or admin.
        #[arg(long)]
        role: String,
        /// Lifetime in seconds (default: until revoked).
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    List,
    Revoke {
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokenCmd {
    /// Create a one-time enrollment token; devices enrolled with it get these labels.
    Create {
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Lifetime in seconds (default one day).
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Generate a key pair: a private key file (mode 0600) and a public key file beside it.
    Generate {
        /// The private key file to create (refuses to overwrite one).
        #[arg(long, short)]
        out: PathBuf,
        /// The public key file; defaults to the private key's path with extension `.pub`.
        #[arg(long)]
        public: Option<PathBuf>,
    },
    /// Show the key id of a public or private key file.
    Show { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Create an unsigned root.json, version 1, from public key files and thresholds.
    Init(TrustInit),
    /// Add a root key's signature to a root.json (in place).
    Sign {
        root: PathBuf,
        /// Private key file of a root key (of this root, or of the previous one when rotating).
        #[arg(long, short)]
        key: Vec<PathBuf>,
    },
    /// Make the next version of a root: add or revoke keys, change thresholds. Sign it with a threshold of the
    /// old root keys and of the new ones.
    Rotate(TrustRotate),
    /// Show a root's roles, keys, expiry and signatures.
    Show { root: PathBuf },
    /// Hand the next root version to the control plane (admin): it checks the root against its current one,
    /// keeps it, and every device walks to it at its next check-in.
    Push { root: PathBuf },
    /// Walk a chain of roots from a trusted one: each must be signed by a threshold of the previous root's keys
    /// and of its own.
    Verify {
        /// The root you already trust (as provisioned on devices).
        #[arg(long)]
        trusted: PathBuf,
        /// The newer roots, in order.
        chain: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RoleKeysArgs {
    /// Public key files of the root role (offline keys that sign root.json).
    #[arg(long = "root-key", required = true)]
    pub root_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u32,
    /// Public key files of the release role (ML engineers' keys that sign releases).
    #[arg(long = "release-key", required = true)]
    pub release_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub release_threshold: u32,
    /// Public key files of the fleet role (the control plane's online key).
    #[arg(long = "fleet-key", required = true)]
    pub fleet_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub fleet_threshold: u32,
}

#[derive(Debug, Args)]
pub struct TrustInit {
    #[command(flatten)]
    pub keys: RoleKeysArgs,
    /// Days until the root expires.
    #[arg(long, default_value_t = 365)]
    pub expires_days: i64,
    /// Where to write root.json (refuses to overwrite).
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TrustRotate {
    /// The current root.json.
    #[arg(long)]
    pub from: PathBuf,
    /// Where to write the next version.
    #[arg(long, short)]
    pub out: PathBuf,
    #[arg(long = "add-root-key")]
    pub add_root: Vec<PathBuf>,
    #[arg(long = "add-release-key")]
    pub add_release: Vec<PathBuf>,
    #[arg(long = "add-fleet-key")]
    pub add_fleet: Vec<PathBuf>,
    /// Key ids (or public key files) to revoke: removed from every role.
    #[arg(long)]
    pub revoke: Vec<String>,
    #[arg(long)]
    pub root_threshold: Option<u32>,
    #[arg(long)]
    pub release_threshold: Option<u32>,
    #[arg(long)]
    pub fleet_threshold: Option<u32>,
    #[arg(long, default_value_t = 365)]
    pub expires_days: i64,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Pack ONNX files into a release: compress, digest, compute golden vectors, write an unsigned manifest.
    Pack(ReleasePack),
    /// Make variants of a model (ONNX: int8, int4, dynamic-int8, qdq-int8, fp16, pruneNN; GGUF: llama.cpp
    /// types), check each against the reference on sample inputs, and report size, accuracy and latency here.
    Optimize(ReleaseOptimize),
    /// Add a release key's signature to a packed release's manifest.
    Sign {
        /// The release directory (or its manifest.json).
        release: PathBuf,
        #[arg(long, short)]
        key: Vec<PathBuf>,
    },
    /// Verify a release against a root: signatures, threshold, names, and every blob's digests.
    Verify {
        release: PathBuf,
        /// The trusted root.json.
        #[arg(long)]
        root: PathBuf,
        /// Newer roots to walk to from --root, in order.
        #[arg(long)]
        chain: Vec<PathBuf>,
        /// Refuse a release below this security floor (as a device that saw it would).
        #[arg(long)]
        floor: Option<u64>,
    },
    /// Upload a signed release's blobs (skipping those the server has) and publish its manifest.
    Push { release: PathBuf },
    /// Run a variant's golden vectors on this machine with ONNX Runtime and report how close it comes.
    Golden {
        release: PathBuf,
        #[arg(long)]
        variant: String,
        #[command(flatten)]
        ort: OrtArgs,
    },
}

#[derive(Debug, Args)]
pub struct OrtArgs {
    /// The ONNX Runtime shared library (libonnxruntime.so.1.31.1).
    #[arg(long = "ort-lib", env = "EDGEFLEET_ORT_LIB")]
    pub lib: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReleaseOptimize {
    /// The reference model: an fp32 ONNX file, or a GGUF.
    pub model: PathBuf,
    /// The variants to make, comma separated. ONNX: int8 and int4 (weight-only, per-channel), dynamic-int8,
    /// qdq-int8 (static, calibrated on --samples), fp16, pruneNN (NN % of each weight tensor zeroed). GGUF:
    /// llama.cpp types (q8_0, q6_k, q5_k_m, q5_0, q4_k_m, q4_1, q4_0, iq4_nl, f16, …).
    #[arg(long, value_delimiter = ',', required = true)]
    pub to: Vec<String>,
    /// ONNX: sample inputs (safetensors, tensors named `<case>/<input>`): the accuracy check, the calibration set
    /// of qdq-int8 and the latency workload. GGUF: golden prompts (JSON), as `release pack` takes them.
    #[arg(long)]
    pub samples: PathBuf,
    /// ONNX: the calibration set of qdq-int8, when it should not be --samples (safetensors, as --samples).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Override a tolerance, as `release pack` takes it: `[PRECISION:]OUTPUT=max_abs:X,top1:Y` or `OUTPUT=skip`.
    #[arg(long = "tolerance")]
    pub tolerances: Vec<String>,
    /// ONNX: another tool's variant to check and time beside these, as `NAME=FILE.onnx` (ONNX Runtime's quantizer
    /// output, say); reported, never written. Repeatable.
    #[arg(long = "compare")]
    pub compare: Vec<String>,
    /// Timed passes over the samples per variant, for the latency column (ONNX).
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// GGUF: tokens of the reference's answer to each golden prompt that the variants are scored on.
    #[arg(long, default_value_t = 24)]
    pub golden_tokens: u32,
    /// GGUF: the chat template to answer the golden prompts with, for a model whose GGUF carries none (a
    /// llama.cpp template name: `gemma`, `chatml`, …), as `chat-template=` of `release pack`.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// zstd level of the compressed size reported (as `release pack` uses).
    #[arg(long, default_value_t = 9)]
    pub level: i32,
    /// The directory to create: a model file per variant that passed its check, and `report.json` (refuses to
    /// overwrite).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub ort: OrtArgs,
}

#[derive(Debug, Args)]
pub struct ReleasePack {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: u64,
    /// Devices that install this release refuse older ones from then on; defaults to 1 (no floor).
    #[arg(long, default_value_t = 1)]
    pub security_floor: u64,
    #[arg(long, default_value = "")]
    pub description: String,
    /// A variant: `id=ID,file=MODEL.onnx,precision=fp32|fp16|int8|int4|mixed[,providers=EP+EP][,arch=A+B]
    /// [,soc=S+T][,min-memory=BYTES]`, or `file=MODEL.gguf,precision=q4_k_m|q4_1|q8_0|…` for a language model
    /// (`providers=` then names llama.cpp backends: CUDA, Vulkan, OpenCL, Metal, CPU). Repeat for each variant.
    #[arg(long = "variant", required = true)]
    pub variants: Vec<String>,
    /// Sample inputs (safetensors; tensors named `<case>/<input>`), run through the reference model to make the
    /// golden vectors. For GGUF releases, golden prompts: a JSON array of strings (a user message each) or of
    /// `{"name": …, "messages": [{"role": …, "content": …}]}`.
    #[arg(long)]
    pub samples: PathBuf,
    /// The unquantized reference model; defaults to the fp32 variant (GGUF: the first variant).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Override a tolerance: `OUTPUT=max_abs:0.05,top1:0.9`, optionally for one precision: `int8:OUTPUT=...`;
    /// `OUTPUT=skip` leaves an output unchecked (say so in the release description).
    #[arg(long = "tolerance")]
    pub tolerances: Vec<String>,
    /// zstd level (3 to 9 is the useful range).
    #[arg(long, default_value_t = 9)]
    pub level: i32,
    /// GGUF releases: the tokens one sequence may hold on a device (prompt and answer); at most what the model
    /// was trained with.
    #[arg(long, default_value_t = 2048)]
    pub context_length: u32,
    /// GGUF releases: tokens of the reference's answer to each golden prompt that devices must reproduce.
    #[arg(long, default_value_t = 24)]
    pub golden_tokens: u32,
    /// GGUF releases: the routing policy (JSON: `{"mode": "local_only"|"cloud_only"|"auto", "private": …,
    /// "tiers": […], "rules": {…}, "cloud_timeout_ms": …}`), signed into the manifest. Without one, every
    /// request is answered on the device.
    #[arg(long)]
    pub routing: Option<PathBuf>,
    /// The release directory to create (refuses to overwrite).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub ort: OrtArgs,
}
