//! The desired-state file (`admin.desired_state`): which model versions a server holds, the
//! aliases that point at them (one version, or a canary split by weight) and the default. Every
//! replica watches the same file and reconciles to it ([`super::reconcile`]), so a fleet (and a
//! replica started later) converges on one state.
//!
//! ```toml
//! default = "captions"                 # the alias (or version id) requests without a model use
//!
//! [versions."vatex@v1"]                # `name@version`: requests may name it exactly
//! source = "microsoft/git-base-vatex"  # a hub repo id, or a directory inside admin.model_roots
//! revision = "0b2e7d8…"                # hub branch, tag or commit (pin a commit)
//!
//! [versions."vatex@v2"]
//! source = "/models/vatex-v2"
//! dtype = "bf16"                       # device and dtype: [model]'s unless given
//!
//! [aliases]
//! vatex = "vatex@v1"
//! captions = { "vatex@v1" = 90, "vatex@v2" = 10 }   # a canary split
//! ```
//!
//! A version id is immutable: it names one source. To serve something else, add a version
//! under a new id and move the aliases.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::loader::LoadSpec;
use super::route::{AliasTarget, Route, DEFAULT_ALIAS};
use crate::device::DeviceSpec;
use crate::model::Precision;

/// Where a server stands against its desired-state file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredStatus {
    pub path: PathBuf,
    /// BLAKE3 of the content last read (hex, 16 digits); empty when the file could not be read.
    pub content_hash: String,
    /// The content whose state this server last reached in full; empty before the first time.
    pub applied_hash: String,
    /// The content last read is applied in full: every version READY, every alias in place.
    pub in_sync: bool,
    /// Why not, one line per problem.
    pub errors: Vec<String>,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    versions: BTreeMap<String, VersionEntry>,
    #[serde(default)]
    aliases: BTreeMap<String, AliasTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionEntry {
    source: String,
    revision: Option<String>,
    device: Option<String>,
    dtype: Option<String>,
}

/// The file, checked: what to load by id, and every alias's route (`default` included).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    pub versions: BTreeMap<String, LoadSpec>,
    pub aliases: BTreeMap<String, Route>,
}

/// Parses and checks a desired-state file's text; devices and dtypes left out are
/// `default_device` and `default_dtype`. The error says what to fix, naming the key.
pub fn parse(text: &str, default_device: DeviceSpec, default_dtype: Precision) -> Result<DesiredState, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let mut versions = BTreeMap::new();
    for (id, entry) in file.versions {
        let key = format!("versions.\"{id}\"");
        let (name, version) = split_id(&id).ok_or_else(|| {
            format!("{key}: a version id is `name@version` (a name and a label, neither with `@`, `(` or `)`)")
        })?;
        if entry.source.trim().is_empty() {
            return Err(format!("{key}.source: a hub repo id or a checkpoint directory is needed"));
        }
        let device = match &entry.device {
            Some(text) => text.parse().map_err(|e: String| format!("{key}.device: {e}"))?,
            None => default_device,
        };
        let dtype = match &entry.dtype {
            Some(text) => text.parse().map_err(|e: String| format!("{key}.dtype: {e}"))?,
            None => default_dtype,
        };
        let spec = LoadSpec {
            name: name.to_string(),
            source: entry.source,
            revision: entry.revision,
            version: Some(version.to_string()),
            device,
            dtype: dtype.for_device(device.0),
        };
        versions.insert(id, spec);
    }

    let mut aliases = BTreeMap::new();
    for (alias, target) in &file.aliases {
        let key = format!("aliases.{alias}");
        if alias == DEFAULT_ALIAS {
            return Err(format!("{key}: say `default = \"…\"` at the top of the file instead"));
        }
        if alias.is_empty() || alias.contains(['@', '(', ')']) {
            return Err(format!("{key}: an alias is a non-empty name without `@`, `(` or `)`"));
        }
        let route = Route::from_target(target, &key).map_err(|e| e.to_string())?;
        if let Some((missing, _)) = route.targets().iter().find(|(id, _)| !versions.contains_key(id)) {
            return Err(format!("{key}: `{missing}` is not under [versions]"));
        }
        aliases.insert(alias.clone(), route);
    }

    let default = file
        .default
        .ok_or("`default` is missing: name the alias or version id that serves requests without a model name")?;
    let route = match aliases.get(&default) {
        Some(route) => route.clone(),
        None if versions.contains_key(&default) => Route::one(&default),
        None => {
            return Err(format!(
                "default: `{default}` is neither an alias under [aliases] nor a version under [versions]"
            ))
        }
    };
    aliases.insert(DEFAULT_ALIAS.to_string(), route);
    Ok(DesiredState { versions, aliases })
}

/// `name@version`, both non-empty and free of the characters the registry's own entries use.
fn split_id(id: &str) -> Option<(&str, &str)> {
    let (name, version) = id.split_once('@')?;
    let plain = |part: &str| !part.is_empty() && !part.contains(['@', '(', ')']);
    (plain(name) && plain(version)).then_some((name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<DesiredState, String> {
        parse(text, DeviceSpec::CPU, Precision::parse("f32").unwrap())
    }

    #[test]
    fn reads_versions_aliases_splits_and_the_default() {
        let state = read(
            r#"
            default = "captions"
            [versions."vatex@v1"]
            source = "microsoft/git-base-vatex"
            revision = "abc123"
            [versions."vatex@v2.1"]
            source = "/models/vatex-v2"
            dtype = "bf16"
            [aliases]
            vatex = "vatex@v1"
            captions = { "vatex@v1" = 90, "vatex@v2.1" = 10 }
            "#,
        )
        .unwrap();
        let v2 = &state.versions["vatex@v2.1"];
        assert_eq!(
            (v2.name.as_str(), v2.version.as_deref(), v2.source.as_str()),
            ("vatex", Some("v2.1"), "/models/vatex-v2")
        );
        assert_eq!(v2.dtype, Precision::parse("bf16").unwrap());
        assert_eq!(state.versions["vatex@v1"].revision.as_deref(), Some("abc123"));
        assert_eq!(state.versions["vatex@v1"].device, DeviceSpec::CPU);
        assert_eq!(state.aliases["vatex"], Route::one("vatex@v1"));
        assert!(state.aliases["captions"].is_split());
        assert_eq!(state.aliases["default"], state.aliases["captions"]);

        let by_id = read("default = \"m@1\"\n[versions.\"m@1\"]\nsource = \"/m\"\n").unwrap();
        assert_eq!(by_id.aliases["default"], Route::one("m@1"));
    }

    #[test]
    fn mistakes_are_named_by_key() {
        let cases = [
            ("[versions.\"m@1\"]\nsource = \"/m\"\n", "`default` is missing"),
            ("default = \"m@1\"\n[versions.\"m@1\"]\nsource = \"/m\"\nrevison = \"x\"\n", "unknown field `revison`"),
            ("default = \"m\"\n[versions.m]\nsource = \"/m\"\n", "versions.\"m\": a version id is `name@version`"),
            ("default = \"m@\"\n[versions.\"m@\"]\nsource = \"/m\"\n", "versions.\"m@\""),
            ("default = \"m@1\"\n[versions.\"m@1\"]\nsource = \" \"\n", "versions.\"m@1\".source"),
            ("default = \"m@1\"\n[versions.\"m@1\"]\nsource = \"/m\"\ndtype = \"int3\"\n", "versions.\"m@1\".dtype"),
            (
                "default = \"a\"\n[versions.\"m@1\"]\nsource = \"/m\"\n[aliases]\na = \"m@2\"\n",
                "aliases.a: `m@2` is not",
            ),
            (
                "default = \"m@1\"\n[versions.\"m@1\"]\nsource = \"/m\"\n[aliases]\ndefault = \"m@1\"\n",
                "aliases.default",
            ),
            ("default = \"x\"\n[versions.\"m@1\"]\nsource = \"/m\"\n", "default: `x` is neither"),
            (
                "default = \"a\"\n[versions.\"m@1\"]\nsource = \"/m\"\n[aliases]\na = { \"m@1\" = 0 }\n",
                "aliases.a: a split",
            ),
            ("default = [", "default"),
        ];
        for (text, expected) in cases {
            let error = read(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
