//! Server settings: `config/default.toml` (built in), then an optional file, then
//! `GITCAP__SECTION__KEY` environment variables, then command-line flags.

use std::path::Path;

use serde::Deserialize;

use crate::error::{GitcapError, Result};

const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    pub model: ModelSettings,
    pub engine: EngineSettings,
    pub hub: HubSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub listen: String,
    pub max_message_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub tls_cert: String,
    pub tls_key: String,
}

impl ServerSettings {
    /// The PEM certificate chain and key, when TLS is configured.
    pub fn tls_identity(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match (self.tls_cert.is_empty(), self.tls_key.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => {
                let read = |field: &str, path: &str| {
                    std::fs::read(path).map_err(|e| GitcapError::invalid(field, format!("cannot read {path}: {e}")))
                };
                Ok(Some((read("server.tls_cert", &self.tls_cert)?, read("server.tls_key", &self.tls_key)?)))
            }
            _ => Err(GitcapError::invalid("server.tls_cert", "TLS needs both server.tls_cert and server.tls_key")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub inference_token: String,
    pub admin_token: String,
    pub admin_token_file: String,
}

impl AuthSettings {
    pub fn inference_token(&self) -> Option<String> {
        Some(self.inference_token.clone()).filter(|t| !t.is_empty())
    }

    /// The admin token, from `admin_token` or the file `admin_token_file`.
    pub fn admin_token(&self) -> Result<Option<String>> {
        if !self.admin_token.is_empty() {
            return Ok(Some(self.admin_token.clone()));
        }
        if self.admin_token_file.is_empty() {
            return Ok(None);
        }
        let token = std::fs::read_to_string(&self.admin_token_file).map_err(|e| {
            GitcapError::invalid("auth.admin_token_file", format!("cannot read {}: {e}", self.admin_token_file))
        })?;
        Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub listen: String,
    pub model_roots: Vec<String>,
    pub state_file: String,
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSettings {
    pub name: String,
    pub source: String,
    pub revision: String,
    pub device: String,
    pub dtype: String,
    pub queue_capacity: usize,
    pub threads: i32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EngineSettings {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_vision_batch: usize,
    pub feature_cache_mb: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HubSettings {
    pub offline: bool,
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_new_tokens: usize,
    pub max_beams: usize,
    pub max_frames: usize,
    pub max_pixels: u64,
    pub max_question_chars: usize,
    pub max_labels: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: String,
}

/// Prometheus metrics (crate::metrics), served at `GET /metrics` without a token.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Bucket bounds in seconds of the queue-time, time-to-first-token and inter-token histograms.
    pub latency_buckets: Vec<f64>,
    pub tokens_per_second_buckets: Vec<f64>,
    /// Bucket bounds of the decode batch-size and vision batch-frames histograms.
    pub batch_size_buckets: Vec<f64>,
}

impl Settings {
    /// Layers the defaults, `file`, the environment and `overrides` ("section.key" → value).
    pub fn load(file: Option<&Path>, overrides: &[(&str, Option<String>)]) -> Result<Self> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        // Lists come from the environment comma-separated (GITCAP__ADMIN__MODEL_ROOTS=/a,/b).
        let environment = config::Environment::with_prefix("GITCAP")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("admin.model_roots")
            .with_list_parse_key("metrics.latency_buckets")
            .with_list_parse_key("metrics.tokens_per_second_buckets")
            .with_list_parse_key("metrics.batch_size_buckets");
        builder = builder.add_source(environment);
        for (key, value) in overrides {
            if let Some(value) = value {
                builder =
                    builder.set_override(*key, value.clone()).map_err(|e| GitcapError::invalid(*key, e.to_string()))?;
            }
        }
        let config = builder.build().map_err(|e| GitcapError::invalid("config", e.to_string()))?;
        config.try_deserialize().map_err(|e| GitcapError::invalid("config", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_defaults_file_environment_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gitcap.toml");
        std::fs::write(&file, "[model]\ndtype = \"bf16\"\nname = \"from-file\"\n[limits]\nmax_beams = 3\n").unwrap();
        // SAFETY: this is the only test that touches GITCAP__* variables.
        unsafe {
            std::env::set_var("GITCAP__MODEL__NAME", "from-env");
            std::env::set_var("GITCAP__LIMITS__MAX_BEAMS", "5");
            std::env::set_var("GITCAP__METRICS__LATENCY_BUCKETS", "0.01,0.1,1");
        }
        let settings =
            Settings::load(Some(&file), &[("model.name", Some("from-flag".into())), ("model.device", None)]).unwrap();
        unsafe {
            std::env::remove_var("GITCAP__MODEL__NAME");
            std::env::remove_var("GITCAP__LIMITS__MAX_BEAMS");
            std::env::remove_var("GITCAP__METRICS__LATENCY_BUCKETS");
        }
        assert_eq!(settings.model.dtype, "bf16", "file over defaults");
        assert_eq!(settings.limits.max_beams, 5, "environment over file");
        assert_eq!(settings.model.name, "from-flag", "flags over everything");
        assert_eq!(settings.model.device, "cpu", "defaults fill the rest");
        assert_eq!(settings.server.listen, "127.0.0.1:50051");
        assert_eq!(settings.metrics.latency_buckets, [0.01, 0.1, 1.0], "lists from the environment");
        assert!(settings.metrics.enabled);

        let missing = Settings::load(Some(&dir.path().join("absent.toml")), &[]).unwrap_err();
        assert!(missing.to_string().contains("absent.toml"), "{missing}");
    }
}
