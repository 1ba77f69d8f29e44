//! Server settings: `config/default.toml` (built in), then an optional file, then
//! `GITCAP__SECTION__KEY` environment variables, then command-line flags.
//!
//! Every setting is defined here once, typed: a value that is not set is `None` (never an empty
//! string), and devices, dtypes and formats are parsed when the settings are read, so a bad one
//! stops start-up naming its key. So does a key that is not a setting, in the file or in a
//! `GITCAP__…` variable, with the closest real one suggested: a misspelt setting must not be
//! silently ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::engine::EngineOptions;
use crate::error::{GitcapError, Result};
use crate::media::fetch::UrlPolicy;
use crate::media::video::DenseLimits;
use crate::media::MediaLimits;
pub use crate::metrics::MetricsSettings;
use crate::model::weights::Storage;
use crate::model::Precision;
use crate::openai::responses::StoreLimits;
use crate::optional_setting::optional;
use crate::service::validation::RequestLimits;
pub use crate::telemetry::TelemetrySettings;

const DEFAULTS: &str = include_str!("../../config/default.toml");
const ENV_PREFIX: &str = "GITCAP__";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    pub model: ModelSettings,
    pub engine: EngineSettings,
    pub hub: HubSettings,
    pub limits: LimitSettings,
    pub media: MediaSettings,
    pub responses: ResponsesSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub batch: crate::openai::batch::BatchOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSettings {
    pub listen: String,
    pub max_message_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// Close each connection (GOAWAY) after this long, so long-lived HTTP/2 clients reconnect
    /// and spread onto new replicas; `None` = never.
    #[serde(default, deserialize_with = "optional")]
    pub max_connection_age_secs: Option<f64>,
    /// How long calls on a connection past its age may take before it is closed anyway.
    pub max_connection_age_grace_secs: f64,
    /// Calls open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once (on each listener).
    pub max_connections: usize,
    /// How long an HTTP/1.1 request body may take to arrive, from its headers.
    pub http1_body_timeout_secs: f64,
    #[serde(default, deserialize_with = "optional")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional")]
    pub tls_key: Option<PathBuf>,
}

impl ServerSettings {
    /// `max_connection_age_secs` and its grace, checked.
    pub fn max_connection_age(&self) -> Result<Option<(std::time::Duration, std::time::Duration)>> {
        let Some(age) = self.max_connection_age_secs else { return Ok(None) };
        let seconds = |field: &str, value: f64| {
            std::time::Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| GitcapError::invalid(field, format!("{value} is not a positive number of seconds")))
        };
        Ok(Some((
            seconds("server.max_connection_age_secs", age)?,
            seconds("server.max_connection_age_grace_secs", self.max_connection_age_grace_secs)?,
        )))
    }

    /// `http1_body_timeout_secs`, checked.
    pub fn http1_body_timeout(&self) -> Result<std::time::Duration> {
        std::time::Duration::try_from_secs_f64(self.http1_body_timeout_secs).ok().filter(|d| !d.is_zero()).ok_or_else(
            || {
                GitcapError::invalid(
                    "server.http1_body_timeout_secs",
                    format!("{} is not a positive number of seconds", self.http1_body_timeout_secs),
                )
            },
        )
    }

    /// The PEM certificate chain and key, when TLS is configured.
    pub fn tls_identity(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let read = |field: &str, path: &Path| {
                    std::fs::read(path)
                        .map_err(|e| GitcapError::invalid(field, format!("cannot read {}: {e}", path.display())))
                };
                Ok(Some((read("server.tls_cert", cert)?, read("server.tls_key", key)?)))
            }
            _ => Err(GitcapError::invalid("server.tls_cert", "TLS needs both server.tls_cert and server.tls_key")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSettings {
    #[serde(default, deserialize_with = "optional")]
    pub inference_token: Option<String>,
    #[serde(default, deserialize_with = "optional")]
    pub admin_token: Option<String>,
    #[serde(default, deserialize_with = "optional")]
    pub admin_token_file: Option<PathBuf>,
}

impl AuthSettings {
    /// The admin token, from `admin_token` or the file `admin_token_file`.
    pub fn admin_token(&self) -> Result<Option<String>> {
        if let Some(token) = &self.admin_token {
            return Ok(Some(token.clone()));
        }
        let Some(file) = &self.admin_token_file else { return Ok(None) };
        let token = std::fs::read_to_string(file).map_err(|e| {
            GitcapError::invalid("auth.admin_token_file", format!("cannot read {}: {e}", file.display()))
        })?;
        Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSettings {
    #[serde(default, deserialize_with = "optional")]
    pub listen: Option<String>,
    pub model_roots: Vec<PathBuf>,
    #[serde(default, deserialize_with = "optional")]
    pub state_file: Option<PathBuf>,
    pub drain_timeout_secs: u64,
    /// Declarative mode: the file of models, versions and aliases this server follows
    /// (crate::registry::desired); `None` = the admin API decides.
    #[serde(default, deserialize_with = "optional")]
    pub desired_state: Option<PathBuf>,
    /// How often the desired-state file is read.
    pub desired_state_poll_secs: f64,
}

impl AdminSettings {
    /// Declarative mode's file and poll interval, when it is on; it excludes the state file.
    pub fn desired_state(&self) -> Result<Option<(PathBuf, std::time::Duration)>> {
        let Some(path) = &self.desired_state else { return Ok(None) };
        if let Some(state_file) = &self.state_file {
            return Err(GitcapError::invalid(
                "admin.desired_state",
                format!(
                    "cannot be set together with admin.state_file ({}): with a desired-state file the admin API \
                     makes no changes to save; unset one of them",
                    state_file.display()
                ),
            ));
        }
        let poll = std::time::Duration::try_from_secs_f64(self.desired_state_poll_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
            GitcapError::invalid("admin.desired_state_poll_secs", "must be a positive number of seconds")
        })?;
        Ok(Some((path.clone(), poll)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSettings {
    pub name: String,
    pub source: String,
    pub revision: String,
    pub device: DeviceSpec,
    pub dtype: Precision,
    pub queue_capacity: usize,
    pub batch_queue_capacity: usize,
    pub threads: i32,
    pub map_weights: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineSettings {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_vision_batch: usize,
    pub interactive_rows: usize,
    pub batch_max_wait_ms: u64,
    pub batch_admit_every_steps: usize,
    pub batch_starts_per_step: usize,
    pub batch_rows_while_interactive: usize,
    pub feature_cache_mb: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubSettings {
    pub offline: bool,
    #[serde(default, deserialize_with = "optional")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitSettings {
    pub max_new_tokens: usize,
    pub max_beams: usize,
    pub max_frames: usize,
    pub max_pixels: u64,
    pub max_question_chars: usize,
    pub max_labels: usize,
    pub max_timeout_secs: u64,
}

/// Decoding media: the memory budget, video files, URLs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MediaSettings {
    pub decode_budget_mb: u64,
    pub image_cache_mb: usize,
    #[serde(default, deserialize_with = "optional")]
    pub spool_dir: Option<PathBuf>,
    pub video: VideoSettings,
    pub dense: DenseLimits,
    pub url: UrlPolicy,
}

/// Video files, decoded by ffmpeg children under limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoSettings {
    #[serde(default, deserialize_with = "optional")]
    pub ffmpeg: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional")]
    pub ffprobe: Option<PathBuf>,
    pub max_bytes: u64,
    pub max_duration_secs: f64,
    pub cpu_secs: u64,
    pub wall_secs: f64,
    pub memory_mb: u64,
    pub max_processes: usize,
}

/// Responses stored for `GET /v1/responses/{id}` and `previous_response_id` follow-ups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponsesSettings {
    pub max_stored: usize,
    pub max_stored_mb: usize,
    pub ttl_secs: u64,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// Settings whose values are lists; from the environment they are comma-separated
/// (`GITCAP__ADMIN__MODEL_ROOTS=/a,/b`).
const LIST_KEYS: [&str; 5] = [
    "admin.model_roots",
    "media.url.allow_hosts",
    "metrics.latency_buckets",
    "metrics.tokens_per_second_buckets",
    "metrics.batch_size_buckets",
];

impl Settings {
    /// How each model's thread queues, batches and caches (`model.*` queues, `engine.*`).
    pub fn engine_options(&self) -> EngineOptions {
        let (m, e) = (&self.model, &self.engine);
        EngineOptions {
            queue_capacity: m.queue_capacity,
            batch_queue_capacity: m.batch_queue_capacity,
            max_batch_size: e.max_batch_size,
            max_batch_tokens: e.max_batch_tokens,
            max_vision_batch: e.max_vision_batch,
            interactive_rows: e.interactive_rows,
            batch_max_wait: std::time::Duration::from_millis(e.batch_max_wait_ms),
            batch_admit_every_steps: e.batch_admit_every_steps,
            batch_starts_per_step: e.batch_starts_per_step.max(1),
            batch_rows_while_interactive: e.batch_rows_while_interactive,
            feature_cache_bytes: e.feature_cache_mb << 20,
            weights: if m.map_weights { Storage::Mapped } else { Storage::Copied },
        }
    }

    /// What a request may ask for (`limits.*`; a frame's bytes from `server.max_message_bytes`).
    pub fn request_limits(&self) -> RequestLimits {
        let l = &self.limits;
        RequestLimits {
            media: MediaLimits { max_pixels: l.max_pixels, max_frames: l.max_frames },
            max_new_tokens: l.max_new_tokens,
            max_beams: l.max_beams,
            max_question_chars: l.max_question_chars,
            max_labels: l.max_labels,
            max_frame_bytes: self.server.max_message_bytes,
            max_timeout: std::time::Duration::from_secs(l.max_timeout_secs),
        }
    }

    /// The bounds on stored responses (`responses.*`).
    pub fn response_store_limits(&self) -> StoreLimits {
        let r = &self.responses;
        StoreLimits {
            max_stored: r.max_stored,
            max_bytes: r.max_stored_mb.saturating_mul(1 << 20),
            ttl: std::time::Duration::from_secs(r.ttl_secs),
        }
    }

    /// Layers the defaults, `file`, the environment and `overrides` ("section.key" → value).
    pub fn load(file: Option<&Path>, overrides: &[(&str, Option<String>)]) -> Result<Self> {
        Self::load_from(file, overrides, std::env::vars())
    }

    /// [`Self::load`] with the environment given.
    pub fn load_from(
        file: Option<&Path>,
        overrides: &[(&str, Option<String>)],
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let environment: Vec<(String, String)> =
            environment.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        let known = known_keys();
        if let Some(file) = file {
            check_file_keys(file, &known)?;
        }
        for (name, _) in &environment {
            check_env_key(name, &known)?;
        }
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let mut env_source = config::Environment::with_prefix("GITCAP")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(environment.into_iter().collect()));
        for key in LIST_KEYS {
            env_source = env_source.with_list_parse_key(key);
        }
        builder = builder.add_source(env_source);
        for (key, value) in overrides {
            if !known.contains(*key) {
                return Err(unknown(key, "a command-line override", &known));
            }
            if let Some(value) = value {
                builder =
                    builder.set_override(*key, value.clone()).map_err(|e| GitcapError::invalid(*key, e.to_string()))?;
            }
        }
        let config = builder.build().map_err(|e| GitcapError::invalid("config", e.to_string()))?;
        config.try_deserialize().map_err(|e| GitcapError::invalid("config", e.to_string()))
    }
}

/// Every setting's key (`section.key`), read off the built-in defaults.
fn known_keys() -> BTreeSet<String> {
    let defaults: Settings = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("config/default.toml is valid");
    let value = serde_json::to_value(defaults).expect("settings serialise");
    let mut keys = BTreeSet::new();
    leaf_keys(&value, "", &mut keys);
    keys
}

/// The dotted paths of the non-table values under `value`.
fn leaf_keys(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                leaf_keys(value, &path, keys);
            }
        }
        None => {
            keys.insert(prefix.to_string());
        }
    }
}

/// The known key closest to `key`, if one is close enough to be a likely typo.
fn closest<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

fn unknown(key: &str, source: &str, known: &BTreeSet<String>) -> GitcapError {
    let hint = match closest(key, known) {
        Some(close) => format!(" (did you mean `{close}`?)"),
        None => " (config/default.toml lists every setting)".to_string(),
    };
    GitcapError::invalid(key, format!("not a setting, in {source}{hint}"))
}

fn check_file_keys(file: &Path, known: &BTreeSet<String>) -> Result<()> {
    let config = config::Config::builder()
        .add_source(config::File::from(file).required(true))
        .build()
        .map_err(|e| GitcapError::invalid("config", e.to_string()))?;
    let table: serde_json::Value =
        config.try_deserialize().map_err(|e| GitcapError::invalid("config", e.to_string()))?;
    let source = file.display().to_string();
    let mut given = BTreeSet::new();
    leaf_keys(&table, "", &mut given);
    for key in given {
        if known.contains(&key) {
            continue;
        }
        // Name the first part that is wrong: a whole unknown section, or the key in it.
        let parts: Vec<&str> = key.split('.').collect();
        let wrong = (1..=parts.len())
            .map(|n| parts[..n].join("."))
            .find(|prefix| !known.iter().any(|k| k == prefix || k.starts_with(&format!("{prefix}."))))
            .unwrap_or(key);
        return Err(unknown(&wrong, &source, known));
    }
    Ok(())
}

fn check_env_key(name: &str, known: &BTreeSet<String>) -> Result<()> {
    let key = name[ENV_PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
    if known.contains(&key) {
        return Ok(());
    }
    let hint = match closest(&key, known) {
        Some(close) => format!(" (did you mean {ENV_PREFIX}{}?)", close.replace('.', "__").to_ascii_uppercase()),
        None => " (config/default.toml lists every setting)".to_string(),
    };
    Err(GitcapError::invalid(name, format!("this environment variable is not a setting{hint}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_defaults_file_environment_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gitcap.toml");
        std::fs::write(&file, "[model]\ndtype = \"bf16\"\nname = \"from-file\"\n[limits]\nmax_beams = 3\n").unwrap();
        let environment = env(&[
            ("GITCAP__MODEL__NAME", "from-env"),
            ("GITCAP__LIMITS__MAX_BEAMS", "5"),
            ("GITCAP__METRICS__LATENCY_BUCKETS", "0.01,0.1,1"),
            ("GITCAP_SERVER", "a client's variable, not a setting"),
        ]);
        let flags = [("model.name", Some("from-flag".to_string())), ("model.device", None)];
        let settings = Settings::load_from(Some(&file), &flags, environment).unwrap();
        assert_eq!(settings.model.dtype, Precision::parse("bf16").unwrap(), "file over defaults");
        assert_eq!(settings.limits.max_beams, 5, "environment over file");
        assert_eq!(settings.model.name, "from-flag", "flags over everything");
        assert_eq!(settings.model.device, DeviceSpec::CPU, "defaults fill the rest");
        assert_eq!(settings.server.listen, "127.0.0.1:50051");
        assert_eq!(settings.metrics.latency_buckets, [0.01, 0.1, 1.0], "lists from the environment");
        assert!(settings.metrics.enabled);
        assert_eq!(settings.log.format, LogFormat::Text);
        assert_eq!(settings.telemetry.otlp_endpoint, None, "traces are off by default");

        let missing = Settings::load_from(Some(&dir.path().join("absent.toml")), &[], vec![]).unwrap_err();
        assert!(missing.to_string().contains("absent.toml"), "{missing}");
    }

    #[test]
    fn the_structs_defaults_are_config_default_toml() {
        // config/default.toml is where defaults are written; the Default impls that tests and
        // the command line use must say the same.
        let settings = Settings::load_from(None, &[], vec![]).unwrap();
        assert_eq!(settings.engine_options(), EngineOptions::default());
        let (limits, default) = (settings.request_limits(), RequestLimits::default());
        assert_eq!(format!("{limits:?}"), format!("{default:?}"));
        assert_eq!(format!("{:?}", limits.media), format!("{:?}", MediaLimits::default()));
        assert_eq!(settings.media.dense, DenseLimits::default());
        assert_eq!(settings.batch, crate::openai::batch::BatchOptions::default());
        assert_eq!(settings.media.url, UrlPolicy::default());
    }

    #[test]
    fn a_misspelt_command_line_override_is_refused_like_an_environment_key() {
        let flags = [("limits.max_beam", Some("3".to_string()))];
        let error = Settings::load_from(None, &flags, vec![]).unwrap_err().to_string();
        assert!(error.contains("limits.max_beam") && error.contains("did you mean `limits.max_beams`"), "{error}");
    }

    #[test]
    fn unset_values_are_none_and_empty_ones_unset() {
        let settings = Settings::load_from(None, &[], vec![]).unwrap();
        assert_eq!((settings.server.tls_cert.as_ref(), settings.admin.listen.as_ref()), (None, None));
        assert_eq!((settings.auth.inference_token.as_ref(), settings.admin.state_file.as_ref()), (None, None));
        let environment = env(&[("GITCAP__SERVER__TLS_CERT", ""), ("GITCAP__ADMIN__STATE_FILE", "/var/gitcap/state")]);
        let settings = Settings::load_from(None, &[], environment).unwrap();
        assert_eq!(settings.server.tls_cert, None);
        assert_eq!(settings.admin.state_file, Some(PathBuf::from("/var/gitcap/state")));
    }

    #[test]
    fn misspelt_keys_stop_start_up_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gitcap.toml");
        std::fs::write(&file, "[server]\nlistn = \"0.0.0.0:1\"\n").unwrap();
        let err = Settings::load_from(Some(&file), &[], vec![]).unwrap_err().to_string();
        assert!(
            err.starts_with("server.listn: not a setting") && err.contains("did you mean `server.listen`"),
            "{err}"
        );

        std::fs::write(&file, "[limitz]\nmax_beams = 2\n").unwrap();
        let err = Settings::load_from(Some(&file), &[], vec![]).unwrap_err().to_string();
        assert!(err.starts_with("limitz: not a setting"), "{err}");

        let err = Settings::load_from(None, &[], env(&[("GITCAP__LIMITS__MAX_BEAM", "2")])).unwrap_err().to_string();
        assert!(err.starts_with("GITCAP__LIMITS__MAX_BEAM: ") && err.contains("GITCAP__LIMITS__MAX_BEAMS?"), "{err}");
    }

    #[test]
    fn declarative_mode_and_connection_age_are_checked_when_read() {
        let settings = Settings::load_from(None, &[], vec![]).unwrap();
        assert_eq!(settings.admin.desired_state().unwrap(), None);
        assert_eq!(settings.server.max_connection_age().unwrap(), None);

        let environment = env(&[
            ("GITCAP__ADMIN__DESIRED_STATE", "/etc/gitcap/models/models.toml"),
            ("GITCAP__ADMIN__DESIRED_STATE_POLL_SECS", "0.25"),
            ("GITCAP__SERVER__MAX_CONNECTION_AGE_SECS", "300"),
        ]);
        let settings = Settings::load_from(None, &[], environment).unwrap();
        let (path, poll) = settings.admin.desired_state().unwrap().unwrap();
        assert_eq!((path.to_str().unwrap(), poll), ("/etc/gitcap/models/models.toml", Duration::from_millis(250)));
        let (age, grace) = settings.server.max_connection_age().unwrap().unwrap();
        assert_eq!((age, grace), (Duration::from_secs(300), Duration::from_secs(30)));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gitcap.toml");
        std::fs::write(&file, "[server]\nmax_connection_age_secs = 120\nmax_connection_age_grace_secs = 0\n").unwrap();
        let settings = Settings::load_from(Some(&file), &[], vec![]).unwrap();
        assert_eq!(settings.server.max_connection_age_secs, Some(120.0), "a number in the file");
        let err = settings.server.max_connection_age().unwrap_err().to_string();
        assert!(err.starts_with("server.max_connection_age_grace_secs"), "{err}");

        let both = env(&[("GITCAP__ADMIN__DESIRED_STATE", "/m.toml"), ("GITCAP__ADMIN__STATE_FILE", "/s.json")]);
        let err = Settings::load_from(None, &[], both).unwrap().admin.desired_state().unwrap_err().to_string();
        assert!(err.starts_with("admin.desired_state: cannot be set together with admin.state_file"), "{err}");
    }

    #[test]
    fn connection_bounds_have_defaults_and_are_checked() {
        let settings = Settings::load_from(None, &[], vec![]).unwrap();
        assert_eq!((settings.server.max_concurrent_streams, settings.server.max_connections), (256, 4096));
        assert_eq!(settings.server.http1_body_timeout().unwrap(), Duration::from_secs(120));
        let environment = env(&[("GITCAP__SERVER__HTTP1_BODY_TIMEOUT_SECS", "0")]);
        let err = Settings::load_from(None, &[], environment).unwrap().server.http1_body_timeout().unwrap_err();
        assert!(err.to_string().starts_with("server.http1_body_timeout_secs"), "{err}");
    }

    #[test]
    fn devices_dtypes_and_formats_are_parsed_when_read() {
        for (name, value) in
            [("GITCAP__MODEL__DTYPE", "int4"), ("GITCAP__MODEL__DEVICE", "gpu"), ("GITCAP__LOG__FORMAT", "xml")]
        {
            let err = Settings::load_from(None, &[], env(&[(name, value)])).unwrap_err().to_string();
            assert!(err.contains(value), "{name}: {err}");
        }
        let settings = Settings::load_from(None, &[], env(&[("GITCAP__MODEL__DTYPE", "fast")])).unwrap();
        assert_eq!(settings.model.dtype, Precision::Fast);
    }
}
