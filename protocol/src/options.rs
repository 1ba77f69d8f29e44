//! The decoding options of a request, defined once.
//!
//! [`GenerationOptions`] is the source for every surface: the gRPC message
//! (`proto::GenerationOptions`, through `From`/`TryFrom`), the flags of `gitcap caption`, `gitcap
//! live` and `gitcap-server caption` (clap, feature `clap`; each field's doc comment is its help
//! text), the JSON names (serde: the OpenAI-compatible API's extra fields) and the range checks
//! ([`GenerationOptions::check`]). The server's own limits (most new tokens, most beams) are
//! checked apart, by the server. Names and meanings are those of transformers' `generate`.

use serde::{Deserialize, Serialize};

use crate::proto;

/// Beam search's stopping rule: transformers' `early_stopping` (`true`, `false` or `"never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished.
    #[cfg_attr(feature = "clap", value(name = "true"))]
    Yes,
    /// Stop when the best running beam, at its current length, cannot beat the finished ones.
    #[default]
    #[cfg_attr(feature = "clap", value(name = "false"))]
    No,
    /// The canonical beam search: stop only when no running beam could ever win.
    #[cfg_attr(feature = "clap", value(name = "never"))]
    Never,
}

impl Serialize for EarlyStopping {
    /// As transformers writes it: `true`, `false` or `"never"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Yes => s.serialize_bool(true),
            Self::No => s.serialize_bool(false),
            Self::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> Deserialize<'de> for EarlyStopping {
    /// `true`, `false`, `"never"` (also `"true"` / `"false"`), or `null` (= `false`, as in a
    /// `generation_config.json` that leaves it unset).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EarlyStopping;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"never\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EarlyStopping, E> {
                Ok(if v { EarlyStopping::Yes } else { EarlyStopping::No })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EarlyStopping, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<EarlyStopping, E> {
                Ok(EarlyStopping::No)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "true" => Ok(Self::Yes),
            "false" => Ok(Self::No),
            "never" => Ok(Self::Never),
            _ => Err(format!("early_stopping must be true, false or \"never\", got {text:?}")),
        }
    }
}

impl From<EarlyStopping> for proto::EarlyStopping {
    fn from(value: EarlyStopping) -> Self {
        match value {
            EarlyStopping::Yes => Self::True,
            EarlyStopping::No => Self::False,
            EarlyStopping::Never => Self::Never,
        }
    }
}

/// Decoding options of one request, as transformers' `generate` names them. Every field is
/// optional: an unset one comes from the checkpoint's `generation_config.json`, then from
/// transformers' defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct GenerationOptions {
    /// Most tokens to generate (at least 1; the server sets the most it allows).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// Fewest tokens to generate before the end-of-sequence token may be chosen.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_new_tokens: Option<u32>,
    /// Beam search with this many beams; 1 = greedy (or sampling with --do-sample).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_beams: Option<u32>,
    /// Beam search: a hypothesis scores its log-probability divided by length^length_penalty
    /// (above 0 favours longer captions, below 0 shorter ones).
    #[cfg_attr(feature = "clap", arg(long, allow_hyphen_values = true))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length_penalty: Option<f32>,
    /// Beam search's stopping rule: true, false or never.
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Sample instead of picking the likeliest token (`--do-sample` or `--do-sample=false`).
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    /// Sampling temperature, in (0, 100].
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Sample among the k likeliest tokens (0 = no limit).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Nucleus sampling: among the fewest tokens whose probabilities add up to top_p, in (0, 1].
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Seed of the sampler: the same seed and request on the same model give the same tokens.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Penalty on tokens already generated or in the prompt, in (0, 100]; 1 = none.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Never repeat an n-gram of this size (0 = off).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram_size: Option<u32>,
    /// With each token, the log-probabilities of the this many likeliest tokens at its step
    /// (0 to 20; greedy and sampling, not beam search).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

/// The most `top_logprobs` a request may ask for.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// An option out of range, or contradicting another: `field` is its name (as in
/// [`GenerationOptions`] and the protocol), `message` says what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidOption {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: String) -> InvalidOption {
    InvalidOption { field, message }
}

impl GenerationOptions {
    /// Checks each set option's range and that they agree with each other (the server's own
    /// limits come on top).
    pub fn check(&self) -> Result<(), InvalidOption> {
        if self.max_new_tokens == Some(0) {
            return Err(invalid("max_new_tokens", "must be at least 1, got 0".into()));
        }
        if self.num_beams == Some(0) {
            return Err(invalid("num_beams", "must be at least 1, got 0".into()));
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return Err(invalid("min_new_tokens", format!("{min} is more than max_new_tokens {max}")));
            }
        }
        if let Some(t) = self.temperature {
            if !(t > 0.0 && t <= 100.0) {
                return Err(invalid("temperature", format!("must be in (0, 100], got {t}")));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(invalid("top_p", format!("must be in (0, 1], got {p}")));
            }
        }
        if let Some(p) = self.repetition_penalty {
            if !(p > 0.0 && p <= 100.0) {
                return Err(invalid("repetition_penalty", format!("must be in (0, 100], got {p}")));
            }
        }
        if let Some(n) = self.top_logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(invalid("top_logprobs", format!("must be 0 to {MAX_TOP_LOGPROBS}, got {n}")));
            }
        }
        if let Some(p) = self.length_penalty {
            if !(p.is_finite() && p.abs() <= 100.0) {
                return Err(invalid("length_penalty", format!("must be in [-100, 100], got {p}")));
            }
        }
        Ok(())
    }

    /// Whether beam search was asked for.
    pub fn is_beam_search(&self) -> bool {
        self.num_beams.is_some_and(|n| n > 1)
    }
}

impl From<GenerationOptions> for proto::GenerationOptions {
    /// Sets `early_stopping_mode`, and for `true`/`false` also the older boolean
    /// `early_stopping`, so that servers from before `early_stopping_mode` read it too.
    fn from(o: GenerationOptions) -> Self {
        #[allow(deprecated)]
        proto::GenerationOptions {
            max_new_tokens: o.max_new_tokens,
            min_new_tokens: o.min_new_tokens,
            num_beams: o.num_beams,
            length_penalty: o.length_penalty,
            early_stopping: o.early_stopping.and_then(|e| match e {
                EarlyStopping::Yes => Some(true),
                EarlyStopping::No => Some(false),
                EarlyStopping::Never => None,
            }),
            early_stopping_mode: o.early_stopping.map_or(proto::EarlyStopping::Unspecified, Into::into) as i32,
            do_sample: o.do_sample,
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            seed: o.seed,
            repetition_penalty: o.repetition_penalty,
            no_repeat_ngram_size: o.no_repeat_ngram_size,
            top_logprobs: o.top_logprobs,
        }
    }
}

impl TryFrom<&proto::GenerationOptions> for GenerationOptions {
    type Error = InvalidOption;

    /// Reads the message; `early_stopping_mode` wins over the older boolean `early_stopping`,
    /// and the two must agree when both are set. Ranges are not checked here ([`Self::check`]).
    fn try_from(o: &proto::GenerationOptions) -> Result<Self, InvalidOption> {
        let mode = match proto::EarlyStopping::try_from(o.early_stopping_mode) {
            Ok(proto::EarlyStopping::Unspecified) => None,
            Ok(proto::EarlyStopping::True) => Some(EarlyStopping::Yes),
            Ok(proto::EarlyStopping::False) => Some(EarlyStopping::No),
            Ok(proto::EarlyStopping::Never) => Some(EarlyStopping::Never),
            Err(_) => {
                return Err(invalid(
                    "early_stopping_mode",
                    format!("{} is not an EarlyStopping value (1 TRUE, 2 FALSE, 3 NEVER)", o.early_stopping_mode),
                ))
            }
        };
        #[allow(deprecated)]
        let legacy = o.early_stopping.map(|b| if b { EarlyStopping::Yes } else { EarlyStopping::No });
        let early_stopping = match (mode, legacy) {
            (Some(mode), Some(legacy)) if mode != legacy => {
                return Err(invalid(
                    "early_stopping",
                    format!("says {legacy:?} but early_stopping_mode says {mode:?}; set only early_stopping_mode"),
                ))
            }
            (mode, legacy) => mode.or(legacy),
        };
        Ok(GenerationOptions {
            max_new_tokens: o.max_new_tokens,
            min_new_tokens: o.min_new_tokens,
            num_beams: o.num_beams,
            length_penalty: o.length_penalty,
            early_stopping,
            do_sample: o.do_sample,
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            seed: o.seed,
            repetition_penalty: o.repetition_penalty,
            no_repeat_ngram_size: o.no_repeat_ngram_size,
            top_logprobs: o.top_logprobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_option_set() -> GenerationOptions {
        GenerationOptions {
            max_new_tokens: Some(30),
            min_new_tokens: Some(2),
            num_beams: Some(3),
            length_penalty: Some(-0.5),
            early_stopping: Some(EarlyStopping::Never),
            do_sample: Some(true),
            temperature: Some(0.7),
            top_k: Some(40),
            top_p: Some(0.9),
            seed: Some(7),
            repetition_penalty: Some(1.3),
            no_repeat_ngram_size: Some(3),
            top_logprobs: Some(5),
        }
    }

    #[test]
    fn round_trips_through_the_protocol() {
        for early_stopping in [None, Some(EarlyStopping::Yes), Some(EarlyStopping::No), Some(EarlyStopping::Never)] {
            let options = GenerationOptions { early_stopping, ..every_option_set() };
            let message = proto::GenerationOptions::from(options);
            assert_eq!(GenerationOptions::try_from(&message).unwrap(), options);
        }
        assert_eq!(GenerationOptions::try_from(&proto::GenerationOptions::default()).unwrap(), Default::default());
    }

    #[test]
    #[allow(deprecated)]
    fn the_older_boolean_early_stopping_is_read_and_checked_against_the_mode() {
        let legacy = proto::GenerationOptions { early_stopping: Some(true), ..Default::default() };
        assert_eq!(GenerationOptions::try_from(&legacy).unwrap().early_stopping, Some(EarlyStopping::Yes));
        let both = proto::GenerationOptions {
            early_stopping: Some(false),
            early_stopping_mode: proto::EarlyStopping::Never as i32,
            ..Default::default()
        };
        assert_eq!(GenerationOptions::try_from(&both).unwrap_err().field, "early_stopping");
        let unknown = proto::GenerationOptions { early_stopping_mode: 9, ..Default::default() };
        assert_eq!(GenerationOptions::try_from(&unknown).unwrap_err().field, "early_stopping_mode");
    }

    #[test]
    fn checks_ranges() {
        assert!(every_option_set().check().is_ok());
        assert!(GenerationOptions::default().check().is_ok());
        let bad = [
            (GenerationOptions { max_new_tokens: Some(0), ..Default::default() }, "max_new_tokens"),
            (GenerationOptions { num_beams: Some(0), ..Default::default() }, "num_beams"),
            (
                GenerationOptions { min_new_tokens: Some(5), max_new_tokens: Some(4), ..Default::default() },
                "min_new_tokens",
            ),
            (GenerationOptions { temperature: Some(0.0), ..Default::default() }, "temperature"),
            (GenerationOptions { temperature: Some(f32::NAN), ..Default::default() }, "temperature"),
            (GenerationOptions { top_p: Some(1.5), ..Default::default() }, "top_p"),
            (GenerationOptions { repetition_penalty: Some(-1.0), ..Default::default() }, "repetition_penalty"),
            (GenerationOptions { length_penalty: Some(f32::INFINITY), ..Default::default() }, "length_penalty"),
            (GenerationOptions { top_logprobs: Some(21), ..Default::default() }, "top_logprobs"),
        ];
        for (options, field) in bad {
            assert_eq!(options.check().unwrap_err().field, field, "{options:?}");
        }
    }

    #[test]
    fn json_names_are_the_field_names() {
        let json = serde_json::to_value(every_option_set()).unwrap();
        assert_eq!(json["early_stopping"], "never");
        assert_eq!(json["max_new_tokens"], 30);
        let back: GenerationOptions = serde_json::from_value(json).unwrap();
        assert_eq!(back, every_option_set());
        let parsed: GenerationOptions = serde_json::from_str(r#"{"early_stopping": true, "num_beams": 2}"#).unwrap();
        assert_eq!(parsed.early_stopping, Some(EarlyStopping::Yes));
        assert_eq!(serde_json::to_string(&GenerationOptions::default()).unwrap(), "{}");
    }
}
