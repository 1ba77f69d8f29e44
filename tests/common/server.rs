//! Starts `gitcap-server serve` on 127.0.0.1 with an ephemeral port for a test, and stops it
//! when dropped. The one harness for every package's tests: the client's include it with
//! `#[path]` (beside `tools.rs`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The repository root.
pub fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests/fixtures").exists() {
        manifest.to_path_buf()
    } else {
        manifest.parent().expect("a package inside the workspace").to_path_buf()
    }
}

/// A fixture checkpoint directory (`tests/fixtures/models/<name>`).
pub fn fixture_model(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/models").join(name)
}

/// The `gitcap-server` binary: this package's own, or, from another package's tests, the one
/// in the same target directory (built first if it is missing).
pub fn server_binary() -> PathBuf {
    if let Some(own) = option_env!("CARGO_BIN_EXE_gitcap-server") {
        return PathBuf::from(own);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let binary = super::tools::target_dir().join("debug/gitcap-server");
            if !binary.exists() {
                assert!(
                    std::env::var_os("LIBTORCH").is_some(),
                    "{} is missing and LIBTORCH is unset, so it cannot be built: run scripts/test.sh \
                     (or export LIBTORCH=$(scripts/setup-libtorch.sh))",
                    binary.display()
                );
                let status = Command::new(env!("CARGO"))
                    .args(["build", "--bin", "gitcap-server"])
                    .current_dir(workspace())
                    .status()
                    .expect("running cargo build --bin gitcap-server");
                assert!(status.success() && binary.exists(), "building gitcap-server failed");
            }
            binary
        })
        .clone()
}

pub struct TestServer {
    child: Child,
    pub addr: String,
    /// The admin service's own address, when it has one.
    pub admin_addr: Option<String>,
}

impl TestServer {
    /// Serves the fixture model `model` under the name `tiny`, with extra flags.
    pub fn start(model: &str, extra: &[&str]) -> Self {
        Self::start_with_env(model, extra, &[])
    }

    /// Like [`Self::start`], with `GITCAP__*` (or other) environment variables.
    pub fn start_with_env(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_dir(&fixture_model(model), extra, env)
    }

    /// Serves the checkpoint directory `dir` under the name `tiny`.
    pub fn start_dir(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["--name", "tiny", "--model", dir.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Self::serve("127.0.0.1:0", &args, env)
    }

    /// `gitcap-server serve --listen LISTEN ARGS…` (no model flags: the settings, e.g. a
    /// desired-state file, say what to serve).
    pub fn serve(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(server_binary())
            .args(["serve", "--listen", listen])
            .args(args)
            .env("RUST_LOG", "warn")
            // Settings layering: the environment raises a limit the tests need, and pins f32
            // (the goldens are f32's; the default `auto` picks by CPU) unless a test says otherwise.
            .env("GITCAP__LIMITS__MAX_BEAMS", "32")
            .env("GITCAP__MODEL__DTYPE", "f32")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting gitcap-server");
        let stdout = child.stdout.take().unwrap();
        // Owned (killed when dropped) before anything here can panic.
        let mut server = Self { child, addr: String::new(), admin_addr: None };
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("reading the server's output");
            if let Some(admin) = line.trim().strip_prefix("gitcap-server admin listening on ") {
                server.admin_addr = Some(admin.to_string());
            } else if let Some(addr) = line.trim().strip_prefix("gitcap-server listening on ") {
                server.addr = addr.to_string();
                return server;
            } else {
                panic!("unexpected line from the server: {line:?}");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `gitcap-client` connected to this server (`admin_token` for the admin calls).
    pub async fn client(&self, admin_token: Option<&str>) -> gitcap_client::GitcapClient {
        let mut config = gitcap_client::ClientConfig::new(self.url());
        if let Some(token) = admin_token {
            config = config.admin_token(token);
        }
        gitcap_client::GitcapClient::connect(config).await.expect("connecting to the test server")
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connecting to the test server")
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("running kill");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (VmRSS from /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid()).expect("reading the server's VmRSS")
    }

    /// Waits up to `limit` for the process to exit; its exit status, or `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the server") {
                return Some(status);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns whether it exited cleanly.
    pub fn wait(mut self) -> bool {
        let status = self.child.wait().expect("waiting for the server");
        status.success()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("polling the server").is_none()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The highest RSS of a process, sampled every `every` until [`PeakRss::stop`].
pub struct PeakRss {
    stop: tokio::sync::watch::Sender<bool>,
    sampler: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    pub fn start(pid: u32, every: std::time::Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_bytes(pid).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return peak,
                }
            }
        });
        Self { stop, sampler }
    }

    /// The peak seen, in bytes.
    pub async fn stop(self) -> u64 {
        self.stop.send(true).unwrap();
        self.sampler.await.unwrap()
    }
}

/// Resident memory of process `pid` (VmRSS from /proc/PID/status), in bytes; `None` once the
/// process is gone (or off Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}
