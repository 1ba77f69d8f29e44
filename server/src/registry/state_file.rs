//! The desired models and aliases, saved after every change (written to a temporary file, then
//! renamed over the old one, so a crash never leaves half a file) and restored at start-up.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::loader::LoadSpec;
use super::route::AliasTarget;
use crate::error::{GitcapError, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub models: Vec<LoadSpec>,
    /// alias → a version id, or a split (id → weight).
    pub aliases: BTreeMap<String, AliasTarget>,
}

/// The saved state, or `None` when there is no file yet. A file that cannot be read or parsed
/// is an error: starting with no models instead would hide it.
pub fn read(path: &Path) -> Result<Option<SavedState>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GitcapError::model_files(format!("cannot read the state file {}: {e}", path.display()))),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        GitcapError::model_files(format!(
            "the state file {} is corrupt ({e}); fix or remove it to start without saved models",
            path.display()
        ))
    })
}

pub fn write(path: &Path, state: &SavedState) -> Result<()> {
    let fail =
        |e: std::io::Error| GitcapError::Internal(format!("cannot write the state file {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let temp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).expect("the state serialises");
    std::fs::write(&temp, text).map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/models.json");
        assert_eq!(read(&path).unwrap(), None);
        let state = SavedState {
            models: vec![LoadSpec {
                name: "vatex".into(),
                source: "microsoft/git-base-vatex".into(),
                revision: Some("abc".into()),
                version: Some("abc".into()),
                device: crate::device::DeviceSpec::CPU,
                dtype: crate::model::Precision::from(tch::Kind::Float),
            }],
            aliases: [
                ("default".to_string(), AliasTarget::One("vatex@abc".to_string())),
                (
                    "canary".to_string(),
                    AliasTarget::Split([("vatex@abc".to_string(), 9), ("vatex@def".to_string(), 1)].into()),
                ),
            ]
            .into(),
        };
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap().as_ref(), Some(&state));
        // A file written before splits existed (every alias a plain id) still reads.
        std::fs::write(&path, r#"{"models": [], "aliases": {"default": "vatex@abc"}}"#).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().aliases["default"], AliasTarget::One("vatex@abc".into()));
        // A file whose versions were written as "" for "unset" reads them as unset.
        let mut legacy = serde_json::to_value(&state).unwrap();
        legacy["models"][0]["version"] = "".into();
        legacy["models"][0]["revision"] = "".into();
        std::fs::write(&path, legacy.to_string()).unwrap();
        let legacy = read(&path).unwrap().unwrap();
        assert_eq!((&legacy.models[0].version, &legacy.models[0].revision), (&None, &None));
        std::fs::write(&path, "{ not json").unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("corrupt") && message.contains("models.json"), "{message}");
    }
}
