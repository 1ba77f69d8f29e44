//! The Python example client (`examples/python/`) against a real server: its unary caption must
//! equal the Rust client's, and its streamed text the unary text.
//!
//! A virtual environment with `examples/python/requirements.txt` is created under the target
//! directory (`python-client-venv`) on the first run (pip reaches PyPI) and reused while the
//! requirements stay the same. The test is skipped, loudly, only when `python3 -m venv` is not
//! available; a failing pip install fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixtures::fixtures;
use common::server::TestServer;
use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory").to_path_buf()
}

fn describe(what: &str, output: &Output) -> String {
    format!(
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The venv's python with the requirements installed, or `None` (after a loud message) when this
/// machine's python3 cannot make virtual environments.
fn venv_python() -> Option<PathBuf> {
    let venv = target_dir().join("python-client-venv");
    let python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(example_dir().join("requirements.txt")).unwrap();
    let stamp = venv.join("gitcap-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        return Some(python);
    }
    let skip = |why: &str| {
        eprintln!(
            "\n!!! SKIPPING the Python example client test: `python3 -m venv` is not available ({why}). \
             Install python3 with venv (e.g. apt-get install python3-venv) to run it. !!!\n"
        );
    };
    match Command::new("python3").args(["-m", "venv", "--help"]).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            skip(String::from_utf8_lossy(&output.stderr).trim());
            return None;
        }
        Err(error) => {
            skip(&format!("running python3: {error}"));
            return None;
        }
    }
    if !python.exists() {
        let output = Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv).output().unwrap();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // Debian's python3 without python3-venv has the module but cannot bootstrap pip.
            if stderr.contains("ensurepip") {
                skip(stderr.trim());
                return None;
            }
            panic!("{}", describe("python3 -m venv", &output));
        }
    }
    let output = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"])
        .arg(example_dir().join("requirements.txt"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("pip install -r examples/python/requirements.txt", &output));
    std::fs::write(&stamp, requirements).unwrap();
    Some(python)
}

#[tokio::test]
async fn the_python_example_captions_like_the_rust_client() {
    let Some(python) = venv_python() else { return };
    let stubs = target_dir().join("python-client-stubs");
    let output = Command::new("bash")
        .arg(example_dir().join("generate.sh"))
        .arg(&stubs)
        .env("PYTHON", &python)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/generate.sh", &output));

    let server = TestServer::start("tiny-git-image", &[]);
    let image = fixtures().join("media/shapes.png");
    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    let options = CaptionOptions::default().max_new_tokens(12);
    let expected = client.caption(Media::image(std::fs::read(&image).unwrap()), &options).await.unwrap();
    assert!(!expected.text.is_empty());

    let output = Command::new(&python)
        .arg(example_dir().join("caption.py"))
        .args(["--server", &server.addr, "--image"])
        .arg(&image)
        .args(["--max-new-tokens", "12", "--stubs"])
        .arg(&stubs)
        .env_remove("GITCAP_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/caption.py", &output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout:?}"))
            .to_string()
    };
    assert_eq!(line("caption: "), expected.text, "the unary caption");
    assert_eq!(line("stream: "), expected.text, "the streamed text");
}
