//! A request's priority, defined once for every surface: the gRPC field (`priority` on
//! `CaptionRequest`, `UploadStart`, `VideoUploadStart`, `DenseCaptionRequest`), the
//! `--priority` flag (feature `clap`), the JSON name (serde), and the engine's admission.

use serde::{Deserialize, Serialize};

use crate::proto;

/// Who waits for a request. The server admits interactive requests first and keeps rows of its
/// batch free for them; batch requests fill the rest and are admitted like interactive ones
/// once they have waited the server's `batch_max_wait`, so they are never starved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// A person or a service waits for the answer (the default).
    #[default]
    Interactive,
    /// Offline work (indexing, backfills): throughput, not latency.
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Priority> for proto::Priority {
    fn from(value: Priority) -> Self {
        match value {
            Priority::Interactive => Self::Interactive,
            Priority::Batch => Self::Batch,
        }
    }
}

impl From<proto::Priority> for Priority {
    /// Unspecified is interactive.
    fn from(value: proto::Priority) -> Self {
        match value {
            proto::Priority::Unspecified | proto::Priority::Interactive => Self::Interactive,
            proto::Priority::Batch => Self::Batch,
        }
    }
}

impl Priority {
    /// The priority of a message's raw `priority` field; values this version does not know are
    /// refused rather than guessed.
    pub fn from_wire(value: i32) -> Result<Self, String> {
        proto::Priority::try_from(value)
            .map(Self::from)
            .map_err(|_| format!("unknown priority {value}; use PRIORITY_INTERACTIVE (1) or PRIORITY_BATCH (2)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_round_trips_through_the_protocol() {
        for priority in [Priority::Interactive, Priority::Batch] {
            assert_eq!(Priority::from_wire(proto::Priority::from(priority) as i32), Ok(priority));
        }
        assert_eq!(Priority::from_wire(0), Ok(Priority::Interactive));
        assert!(Priority::from_wire(7).unwrap_err().contains("unknown priority 7"));
    }

    #[test]
    fn json_names_are_lowercase() {
        assert_eq!(serde_json::to_string(&Priority::Batch).unwrap(), "\"batch\"");
        assert_eq!(serde_json::from_str::<Priority>("\"interactive\"").unwrap(), Priority::Interactive);
    }
}
