//! Where the programs some tests need are found, in one place, and what happens when one is
//! missing.
//!
//! In CI (`CI=true`, which `.ci/run` sets) a missing program fails the test, naming it and how
//! to install it: `.ci/run` installs them, so a green run has run every test. Elsewhere the test
//! is skipped, and the skip is recorded under `<target>/test-skips/`, which `scripts/test.sh`
//! prints at the end of the run, where people see it (libtest hides a passing test's stderr).
//!
//! Shared by the server's tests (`tests/`) and the client's (`client/tests/`, through `#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A program some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Headless Chromium, for the browser tests.
    Chromium,
    /// The ffmpeg and ffprobe programs: test videos, and the server's own video decoding.
    Ffmpeg,
    /// `python3` able to make virtual environments (with pip), for the Python example and the
    /// `openai` SDK tests.
    PythonVenv,
    /// Node.js with npm, for the Vercel AI SDK test (tests/responses_clients.rs).
    Node,
}

impl Tool {
    fn install_hint(self) -> &'static str {
        match self {
            Tool::Chromium => "apt-get install -y chromium (or set GITCAP_CHROMIUM to a Chromium binary)",
            Tool::Ffmpeg => "apt-get install -y ffmpeg",
            Tool::PythonVenv => "apt-get install -y python3-venv",
            Tool::Node => "apt-get install -y nodejs npm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Chromium => "chromium",
            Tool::Ffmpeg => "ffmpeg",
            Tool::PythonVenv => "python3 -m venv",
            Tool::Node => "node and npm",
        }
    }
}

/// Whether this run is CI's, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `program` on PATH, if there.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `tool` is (for `PythonVenv`: the `python3` that can make one; for `Node`: `node`, with
/// `npm` beside it on PATH), or why not.
pub fn locate(tool: Tool) -> Result<PathBuf, String> {
    match tool {
        Tool::Chromium => {
            if let Some(given) = std::env::var_os("GITCAP_CHROMIUM") {
                let given = PathBuf::from(given);
                return if is_executable(&given) {
                    Ok(given)
                } else {
                    Err(format!("GITCAP_CHROMIUM={} is not an executable", given.display()))
                };
            }
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .find_map(|name| on_path(name))
                .ok_or_else(|| "no chromium, chromium-browser or google-chrome on PATH".to_string())
        }
        Tool::Ffmpeg => {
            let ffmpeg = on_path("ffmpeg").ok_or("no ffmpeg on PATH")?;
            on_path("ffprobe").ok_or("ffmpeg is on PATH but ffprobe is not")?;
            Ok(ffmpeg)
        }
        Tool::Node => {
            let node = on_path("node").ok_or("no node on PATH")?;
            on_path("npm").ok_or("node is on PATH but npm is not")?;
            Ok(node)
        }
        Tool::PythonVenv => {
            let python = on_path("python3").ok_or("no python3 on PATH")?;
            // Debian's python3 without python3-venv has the venv module but no ensurepip.
            let ok = Command::new(&python)
                .args(["-c", "import venv, ensurepip"])
                .output()
                .map_err(|e| format!("running python3: {e}"))?;
            if ok.status.success() {
                Ok(python)
            } else {
                Err(format!("python3 cannot make virtual environments: {}", String::from_utf8_lossy(&ok.stderr).trim()))
            }
        }
    }
}

/// `tool` for the test `test`: its path; or, when it is missing, a failure in CI and a recorded
/// skip (`None`) elsewhere.
pub fn require(tool: Tool, test: &str) -> Option<PathBuf> {
    match locate(tool) {
        Ok(path) => Some(path),
        Err(why) => {
            missing(test, &format!("{} ({why})", tool.name()), tool.install_hint());
            None
        }
    }
}

/// The test `test` lacks `what` (a program, or a feature of one), which `hint` says how to get:
/// a failure in CI, a recorded skip elsewhere. The test then returns, or leaves its case out.
pub fn missing(test: &str, what: &str, hint: &str) {
    let message = format!("{test}: needs {what}; install it: {hint}");
    assert!(!in_ci(), "CI must run every test, but {message}");
    record_skip(test, &message);
}

/// Notes a skipped test for `scripts/test.sh`'s summary (and on stderr).
pub fn record_skip(test: &str, message: &str) {
    eprintln!("\n!!! SKIPPED {message} !!!\n");
    let dir = target_dir().join("test-skips");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.txt")), format!("{message}\n"));
}

/// The target directory these tests were built in.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory").to_path_buf()
}
