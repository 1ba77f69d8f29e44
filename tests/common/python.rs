//! Python virtual environments for the tests that run Python clients (the example client, the
//! `openai` SDK): made under the target directory on first use (pip reaches PyPI) and reused while
//! their requirements file stays the same. Without `python3 -m venv` a test fails in CI and is
//! skipped elsewhere (`tools`); a failing `pip install` fails it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::tools::{self, target_dir, Tool};

/// A command's failure, with its output.
pub fn describe(what: &str, output: &Output) -> String {
    format!(
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The python of the venv `name` with `requirements` installed, for the test `test`.
pub fn venv(name: &str, requirements: &Path, test: &str) -> Option<PathBuf> {
    // Tests of one binary share an environment: one makes it while the others wait.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let system_python = tools::require(Tool::PythonVenv, test)?;
    let venv = target_dir().join(name);
    let python = venv.join("bin/python");
    let wanted = std::fs::read_to_string(requirements).unwrap();
    let stamp = venv.join("gitcap-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Some(python);
    }
    if !python.exists() {
        let output = Command::new(&system_python).args(["-m", "venv", "--clear"]).arg(&venv).output().unwrap();
        assert!(output.status.success(), "{}", describe("python3 -m venv", &output));
    }
    let output = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"])
        .arg(requirements)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&format!("pip install -r {}", requirements.display()), &output));
    std::fs::write(&stamp, wanted).unwrap();
    Some(python)
}
