//! Helpers for whole-system tests: find (building if needed) the real binaries, run the CLI, and start
//! `edgefleet-server` as a child process on a free loopback port.

pub mod balancer;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A file fetched by `scripts/setup.sh`; missing is a loud failure.
pub fn cache(rel: &str) -> PathBuf {
    let p = repo().join(".cache").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (the README's test command does)", p.display());
    p
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"))
}

static BUILD: Once = Once::new();

/// The path of a workspace binary of the dev profile, brought up to date once per test process.
///
/// The build asks for every target of the workspace, as the test runner does, so that features unify the same
/// way and an up-to-date tree builds nothing (building only the binaries would pick other features of shared
/// dependencies and rebuild them).
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    BUILD.call_once(|| {
        // The test runner adds variables (CARGO_PKG_*, CARGO_MANIFEST_DIR, NEXTEST_*, ...) that some build
        // scripts watch; the inner build sees the environment the outer one saw, or it rebuilds them.
        let inherited = std::env::vars().filter(|(k, _)| {
            let injected = (k.starts_with("CARGO_") && !matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR"))
                || k.starts_with("NEXTEST")
                || k.starts_with("__NEXTEST")
                || k.starts_with("RUST_TEST")
                || k == "OUT_DIR";
            !injected
        });
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env_clear()
            .envs(inherited)
            .args(["build", "--quiet", "--workspace", "--all-targets"])
            .current_dir(repo())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The result of one command.
#[derive(Debug)]
pub struct Ran {
    pub out: Output,
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn ok(self) -> Self {
        assert!(self.out.status.success(), "failed: {}{}", self.stdout(), self.stderr());
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout().trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
    pub fn fails_with(self, says: &str) -> Self {
        assert!(!self.out.status.success(), "succeeded, but should have failed: {}", self.stdout());
        assert!(self.stderr().contains(says), "stderr does not say {says:?}: {}", self.stderr());
        self
    }
}

/// A scratch directory in which the CLI runs, with its own login file.
#[derive(Debug)]
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

impl Workdir {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Keys `root.key`, `fleet.key` and one per release signer, and a signed `root.json` whose release role needs
    /// `threshold` of them.
    pub fn trust(&self, signers: &[&str], threshold: u32) {
        for k in ["root", "fleet"].iter().chain(signers) {
            self.edgefleet(&["keys", "generate", "-o", &format!("{k}.key")]).ok();
        }
        let mut args: Vec<String> =
            ["trust", "init", "--root-key", "root.pub", "--fleet-key", "fleet.pub"].map(String::from).into();
        for s in signers {
            args.extend(["--release-key".to_owned(), format!("{s}.pub")]);
        }
        args.extend(["--release-threshold".to_owned(), threshold.to_string(), "-o".to_owned(), "root.json".to_owned()]);
        self.edgefleet(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
        self.edgefleet(&["trust", "sign", "root.json", "--key", "root.key"]).ok();
    }

    /// Packs magika release `version` into `magika-<version>/` with one variant (`id=…,file=…,precision=…`, the
    /// file relative to the cache's `models/magika/`), golden vectors from the cached samples (outputs of
    /// `reference` under the same folder, if given), and signs it with `alice.key`.
    pub fn pack_magika(&self, version: &str, id: &str, file: &str, precision: &str, reference: Option<&str>) {
        self.pack_magika_with(version, id, file, precision, reference, &[]);
    }

    /// [`Self::pack_magika`] with more `release pack` arguments (`--description`, ...).
    pub fn pack_magika_with(
        &self,
        version: &str,
        id: &str,
        file: &str,
        precision: &str,
        reference: Option<&str>,
        extra: &[&str],
    ) {
        self.pack_magika_signed(version, id, file, precision, reference, extra, "alice");
    }

    /// [`Self::pack_magika_with`], signed by `signer` (`<signer>.key`) instead of alice.
    #[allow(clippy::too_many_arguments)]
    pub fn pack_magika_signed(
        &self,
        version: &str,
        id: &str,
        file: &str,
        precision: &str,
        reference: Option<&str>,
        extra: &[&str],
        signer: &str,
    ) {
        let variant =
            format!("id={id},file={},precision={precision}", cache(&format!("models/magika/{file}")).display());
        let samples = cache("samples/magika.safetensors").display().to_string();
        let out = format!("magika-{version}");
        let reference = reference.map(|r| cache(&format!("models/magika/{r}")).display().to_string());
        let mut args = vec![
            "release",
            "pack",
            "--model",
            "magika",
            "--version",
            version,
            "--variant",
            &variant,
            "--samples",
            &samples,
        ];
        if let Some(r) = &reference {
            args.extend(["--reference", r.as_str()]);
        }
        args.extend(extra);
        args.extend(["-o", out.as_str()]);
        self.edgefleet(&args).ok();
        self.edgefleet(&["release", "sign", &out, "--key", &format!("{signer}.key")]).ok();
    }

    /// `edgefleet rollout create magika ARGS...`; answers the rollout's id.
    pub fn rollout(&self, args: &[&str]) -> String {
        let mut all = vec!["--json", "rollout", "create", "magika"];
        all.extend(args);
        self.edgefleet(&all).ok().json()["id"].as_str().expect("rollout id").to_owned()
    }

    /// `edgefleet release pack` of a language model: release `version` of `model` from one GGUF (`id`,
    /// `precision`), golden prompts from the fixtures, context 1024, 16 golden tokens, and `extra` arguments,
    /// into `out/` (unsigned).
    pub fn pack_llm(&self, model: &str, version: &str, variant: (&str, &Path, &str), extra: &[&str], out: &str) {
        let (id, file, precision) = variant;
        let variant = format!("id={id},file={},precision={precision}", file.display());
        let prompts = repo().join("fixtures/llm/golden-prompts.json").display().to_string();
        let mut args = vec!["release", "pack", "--model", model, "--version", version, "--variant", &variant];
        args.extend(["--samples", &prompts, "--context-length", "1024", "--golden-tokens", "16", "-o", out]);
        args.extend(extra);
        self.edgefleet(&args).ok();
    }

    /// A one-time enrollment token for devices labelled `labels` (`k=v` each).
    pub fn enroll_token(&self, labels: &[&str]) -> String {
        let mut args = vec!["--json", "enroll-token", "create"];
        for l in labels {
            args.extend(["--label", l]);
        }
        self.edgefleet(&args).ok().json()["token"].as_str().expect("token").to_owned()
    }

    pub fn edgefleet(&self, args: &[&str]) -> Ran {
        let out = Command::new(bin("edgefleet"))
            .args(args)
            .current_dir(self.dir.path())
            .env("EDGEFLEET_CLI_CONFIG", self.path("login.json"))
            .env("EDGEFLEET_ORT_LIB", cache("lib/libonnxruntime.so.1.31.1"))
            .output()
            .expect("run edgefleet");
        Ran { out }
    }
}

/// magika's input for `content` (config.min.json of standard_v3_3): the first 1024 bytes of the
/// whitespace-stripped start padded with 256 at the end, then the last 1024 of the stripped end padded at the
/// start.
pub fn magika_features(content: &[u8]) -> Vec<i32> {
    let (beg, end, pad, block) = (1024, 1024, 256, 4096);
    let head_block = &content[..content.len().min(block)];
    let head: Vec<u8> = head_block.iter().skip_while(|b| b.is_ascii_whitespace()).take(beg).copied().collect();
    let tail_block = &content[content.len().saturating_sub(block)..];
    let trimmed =
        tail_block.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(&tail_block[..0], |i| &tail_block[..=i]);
    let tail = &trimmed[trimmed.len().saturating_sub(end)..];
    let mut f: Vec<i32> = head.iter().map(|b| i32::from(*b)).collect();
    f.resize(beg, pad);
    f.extend(std::iter::repeat_n(pad, end - tail.len()));
    f.extend(tail.iter().map(|b| i32::from(*b)));
    f
}

/// magika's label names, in output order.
pub fn magika_labels() -> Vec<String> {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache("models/magika/config.min.json")).expect("config")).expect("json");
    cfg["target_labels_space"].as_array().expect("labels").iter().map(|l| l.as_str().unwrap_or("").to_owned()).collect()
}

/// A small Python program, which magika must call `python`.
pub const PYTHON_SOURCE: &[u8] = br#"import json
import sys


def main(path):
    """Print the keys of a JSON document."""
    with open(path) as f:
        doc = json.load(f)
    for key in sorted(doc):
        print(key, type(doc[key]).__name__)


if __name__ == "__main__":
    main(sys.argv[1])
"#;

/// Waits, bounded, for `f` to answer `Some`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `cmd` with its stdout read line by line on a thread: the lines arrive on the receiver. Stderr is
/// whatever `cmd` says (inherited unless set).
pub fn spawn_with_stdout(mut cmd: Command) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start the process");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// A running `edgefleet-server`, stopped (SIGTERM, then kill) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub fingerprint: String,
    pub data_dir: PathBuf,
    /// The configuration file it was started with, if any (its database, say).
    pub config: Option<PathBuf>,
    /// Its name among replicas (the `source` of the rollout engine's audit entries).
    pub replica: String,
}

impl ServerProcess {
    /// Starts the server on 127.0.0.1:0 with `env` (EDGEFLEET_* settings) and waits for its address.
    pub fn start(data_dir: &Path, env: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(bin("edgefleet-server"));
        cmd.env("EDGEFLEET_DATA_DIR", data_dir).env("EDGEFLEET_LISTEN", "127.0.0.1:0").env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, lines) = spawn_with_stdout(cmd);
        let (mut url, mut fingerprint, mut replica) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while url.is_none() || fingerprint.is_none() || replica.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("edgefleet-server did not print its address within 60 s");
            if let Some(u) = line.strip_prefix("edgefleet-server listening on ") {
                url = Some(u.trim().to_owned());
            }
            if let Some(i) = line.find("fingerprint ") {
                fingerprint = Some(line[i + "fingerprint ".len()..].trim().to_owned());
            }
            if let Some(r) = line.strip_prefix("replica ") {
                replica = Some(r.trim().to_owned());
            }
        }
        Self {
            child,
            url: url.unwrap_or_default(),
            fingerprint: fingerprint.unwrap_or_default(),
            data_dir: data_dir.to_owned(),
            config: env.iter().find(|(k, _)| *k == "EDGEFLEET_CONFIG").map(|(_, v)| v.to_path_buf()),
            replica: replica.unwrap_or_default(),
        }
    }

    /// An HTTP client that trusts this server's certificate.
    pub fn client(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(self.data_dir.join("tls/server.crt")).expect("server certificate");
        let cert = reqwest::Certificate::from_pem(&pem).expect("PEM");
        reqwest::blocking::Client::builder().add_root_certificate(cert).build().expect("client")
    }

    /// A new API token with `role`, made by `edgefleet-server token create` on this server's data directory and
    /// configuration (so in its database, whichever it is).
    pub fn token(&self, name: &str, role: &str) -> String {
        let mut cmd = Command::new(bin("edgefleet-server"));
        cmd.args(["token", "create", "--name", name, "--role", role])
            .env("EDGEFLEET_DATA_DIR", &self.data_dir)
            .env("RUST_LOG", "warn");
        if let Some(c) = &self.config {
            cmd.env("EDGEFLEET_CONFIG", c);
        }
        Ran { out: cmd.output().expect("run edgefleet-server") }.ok().stdout().trim().to_owned()
    }

    /// Stops with SIGTERM and answers the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "edgefleet-server did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `edgefleet-daemon`, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    /// Its v2 API, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The daemon's stdout after its address line.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    /// SIGKILL: no clean-up of any kind runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Waits for the daemon to say it paused at `point` (see `EDGEFLEET_PAUSE_AT`).
    pub fn paused_at(&self, point: &str) {
        let want = format!("edgefleet-daemon paused at {point}");
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!("the daemon did not pause at {point}: {e}"),
            }
        }
        panic!("the daemon did not pause at {point} within 90 s");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that runs device `id` of `w` against `server`: its data in `w/<id>/`, its hardware files in
/// `w/hw/`, v2 on a free port, short long-polls and a one-second bake window.
pub fn daemon_command(w: &Workdir, server: &ServerProcess, id: &str, token: Option<&str>) -> Command {
    daemon_command_via(w, server, &server.url, id, token)
}

/// [`daemon_command`] reaching the server at `url` (through a proxy, say).
pub fn daemon_command_via(w: &Workdir, server: &ServerProcess, url: &str, id: &str, token: Option<&str>) -> Command {
    daemon_command_on(w, server, url, id, token, "hw")
}

/// [`daemon_command_via`] with its hardware files in `w/<hw>/` (see [`Fixture`]).
pub fn daemon_command_on(
    w: &Workdir,
    server: &ServerProcess,
    url: &str,
    id: &str,
    token: Option<&str>,
    hw: &str,
) -> Command {
    let mut cmd = Command::new(bin("edgefleet-daemon"));
    cmd.arg("--hardware-root")
        .arg(w.path(hw))
        .arg("run")
        .arg("--server")
        .arg(url)
        .arg("--server-ca")
        .arg(server.data_dir.join("tls/server.crt"))
        .arg("--data-dir")
        .arg(w.path(id))
        .arg("--trust-root")
        .arg(w.path("root.json"))
        .arg("--device-id")
        .arg(id)
        .arg("--ort-lib")
        .arg(cache("lib/libonnxruntime.so.1.31.1"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--wait")
        .arg("2")
        .arg("--bake-secs")
        .arg("1")
        .env("RUST_LOG", "warn");
    if let Some(t) = token {
        cmd.arg("--enroll-token").arg(t);
    }
    cmd
}

pub fn start_daemon(w: &Workdir, server: &ServerProcess, id: &str, token: Option<&str>) -> Daemon {
    spawn_daemon(daemon_command(w, server, id, token))
}

/// Starts a daemon and waits for the address of its v2 API.
pub fn spawn_daemon(cmd: Command) -> Daemon {
    let (child, lines) = spawn_with_stdout(cmd);
    let line = lines.recv_timeout(Duration::from_secs(60)).expect("edgefleet-daemon did not print its address");
    let url = line.strip_prefix("edgefleet-daemon serving v2 on ").expect("address line").trim().to_owned();
    Daemon { child, url, lines }
}

pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::new()
}

/// The release version serving magika and its answer for a Python file, once the model answers.
pub fn classify(client: &reqwest::blocking::Client, daemon: &Daemon) -> Option<(String, String)> {
    let body = serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": magika_features(PYTHON_SOURCE)}]});
    let r = client.post(format!("{}/v2/models/magika/infer", daemon.url)).json(&body).send().ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().ok()?;
    let scores: Vec<f64> = v["outputs"][0]["data"].as_array()?.iter().filter_map(|x| x.as_f64()).collect();
    let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?.0;
    Some((v["model_version"].as_str()?.to_owned(), magika_labels()[best].clone()))
}

/// A device's hardware, as the files it shows under `/` (`fixtures/hardware/`).
/// `device-daemon/tests/hardware.rs` checks detection on these and more; here they make
/// real daemons believe they are these devices. ONNX Runtime here is the CPU-only build, so an accelerator's
/// execution provider is tried, found missing and fallen back from, as on a device whose driver is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// Snapdragon 8 Gen 2 (SM8550) phone: Hexagon v73 behind /dev/fastrpc-cdsp; battery `power_now`.
    HexagonPhone,
    /// Jetson AGX Orin (JetPack 6): TensorRT and CUDA; INA3221 rails.
    JetsonOrin,
    /// Core Ultra (Meteor Lake) laptop: NPU at /dev/accel/accel0; RAPL package energy.
    IntelNpuLaptop,
    /// Raspberry Pi 5: XNNPACK; no power sensor at all.
    RaspberryPi5,
    /// An x86 server (a VM: AVX-512, no RAPL exposed).
    X86Server,
}

impl Fixture {
    pub const ALL: [Fixture; 5] = [
        Fixture::HexagonPhone,
        Fixture::JetsonOrin,
        Fixture::IntelNpuLaptop,
        Fixture::RaspberryPi5,
        Fixture::X86Server,
    ];

    /// The device class the daemon detects.
    pub fn class(self) -> &'static str {
        match self {
            Fixture::HexagonPhone => "qualcomm-hexagon",
            Fixture::JetsonOrin => "nvidia-jetson",
            Fixture::IntelNpuLaptop => "intel-npu",
            Fixture::RaspberryPi5 => "raspberry-pi",
            Fixture::X86Server => "x86-server",
        }
    }

    /// Its directory under `fixtures/hardware/`.
    pub fn name(self) -> &'static str {
        match self {
            Fixture::HexagonPhone => "hexagon-phone",
            Fixture::JetsonOrin => "jetson-agx-orin",
            Fixture::IntelNpuLaptop => "intel-npu-laptop",
            Fixture::RaspberryPi5 => "raspberry-pi-5",
            Fixture::X86Server => "x86-server",
        }
    }

    /// Copies the fixture's files (`fixtures/hardware/<name>/`) to `w/<dir>/`, where a test may change them.
    pub fn write(self, w: &Workdir, dir: &str) {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).expect("hardware fixture");
            for e in std::fs::read_dir(from).expect("hardware fixture").flatten() {
                let (src, dst) = (e.path(), to.join(e.file_name()));
                if src.is_dir() {
                    copy(&src, &dst);
                } else {
                    std::fs::copy(&src, &dst).expect("hardware fixture");
                }
            }
        }
        copy(&repo().join("fixtures/hardware").join(self.name()), &w.path(dir));
    }
}

/// An x86 server's hardware files under `w/<dir>/`.
pub fn x86_server(w: &Workdir, dir: &str) {
    Fixture::X86Server.write(w, dir);
}

/// A RAPL counter that counts, as a real one does while the package draws power: adds `watts` × the time
/// since its last step to `energy_uj` under `w/<dir>/` every 100 ms until `stop`. (The fixture's file is
/// otherwise constant, and a constant counter reads as 0 W.)
pub fn rapl_ticking(
    w: &Workdir,
    dir: &str,
    watts: f64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let file = w.path(dir).join("sys/class/powercap/intel-rapl:0/energy_uj");
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(text) = std::fs::read_to_string(&file) else { return };
            let now = Instant::now();
            let uj = text.trim().parse::<u64>().unwrap_or(0) + (watts * 1e6 * (now - last).as_secs_f64()) as u64;
            last = now;
            // Written whole through a rename, as the kernel never shows a half-written number.
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, format!("{uj}\n")).and_then(|()| std::fs::rename(&tmp, &file)).is_err() {
                return;
            }
        }
    })
}

/// The server of [`server_and_token`] started again on its data directory and at `listen` (`127.0.0.1:PORT`,
/// the address it had, so devices find it again).
pub fn server_again(w: &Workdir, data: &Path, listen: &str) -> ServerProcess {
    let (root, fleet, toml) = (w.path("root.json"), w.path("fleet.key"), w.path("server.toml"));
    let mut env: Vec<(&str, &Path)> =
        vec![("EDGEFLEET_TRUST_ROOT", &root), ("EDGEFLEET_FLEET_KEY", &fleet), ("EDGEFLEET_LISTEN", Path::new(listen))];
    if toml.exists() {
        env.push(("EDGEFLEET_CONFIG", &toml));
    }
    ServerProcess::start(data, &env)
}

/// A server on `w`'s root and fleet key (with `config`, a TOML text, if given), the CLI logged in as admin;
/// answers it and an enrollment token for devices labelled site=lab.
pub fn server_and_token(w: &Workdir, config: Option<&str>) -> (ServerProcess, String) {
    let data = w.path("server-data");
    let (root, fleet, toml) = (w.path("root.json"), w.path("fleet.key"), w.path("server.toml"));
    let mut env: Vec<(&str, &Path)> = vec![("EDGEFLEET_TRUST_ROOT", &root), ("EDGEFLEET_FLEET_KEY", &fleet)];
    if let Some(c) = config {
        std::fs::write(&toml, c).expect("server config");
        env.push(("EDGEFLEET_CONFIG", &toml));
    }
    let server = ServerProcess::start(&data, &env);
    let admin = server.token("ci", "admin");
    w.edgefleet(&["login", "--server", &server.url, "--token", &admin, "--fingerprint", &server.fingerprint]).ok();
    let token = w.edgefleet(&["--json", "enroll-token", "create", "--label", "site=lab"]).ok().json();
    (server, token["token"].as_str().expect("token").to_owned())
}

/// A steady magika load on daemons' v2 APIs from a thread: one request at a time, round robin, `pause` between
/// requests, bounded by `max` requests and `within`. [`Load::finish`] stops it and answers (answered, failed).
#[derive(Debug)]
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Load {
    pub fn start(urls: Vec<String>, pause: Duration, max: usize, within: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let client = http();
            let body = serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32",
                "data": magika_features(PYTHON_SOURCE)}]});
            let deadline = Instant::now() + within;
            let (mut answered, mut failed) = (0, 0);
            for i in 0..max {
                if halt.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let url = format!("{}/v2/models/magika/infer", urls[i % urls.len()]);
                match client.post(url).json(&body).send() {
                    Ok(r) if r.status() == 200 => answered += 1,
                    _ => failed += 1,
                }
                std::thread::sleep(pause);
            }
            (answered, failed)
        });
        Self { stop, thread }
    }

    /// Stops the load; answers (answered, failed).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}
