//! Where an alias sends requests: one version, or a canary split between versions by weight
//! (`{"tiny@v1": 90, "tiny@v2": 10}`).
//!
//! A request with a route key (gRPC metadata `x-gitcap-route-key`) is sticky: the key's hash
//! picks a point in the weights, so the same key reaches the same version on every replica for
//! as long as the weights stay. Versions hold their ranges in id order, so moving weight from
//! one version to another (90/10 → 50/50) moves only the keys in the band that changed hands.
//! A request without a key takes the next point of a low-discrepancy sequence, so any run of
//! requests splits as close to the weights as whole requests can.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{GitcapError, Result};

/// The alias that requests naming no model use.
pub const DEFAULT_ALIAS: &str = "default";

/// An alias's target as written in the desired-state and state files: an id, or id → weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AliasTarget {
    One(String),
    Split(BTreeMap<String, u32>),
}

/// As people write it: `hcap@v1`, or a split `hcap@v1=80,hcap@v2=20`.
impl std::fmt::Display for AliasTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AliasTarget::One(id) => f.write_str(id),
            AliasTarget::Split(weights) => {
                let parts: Vec<String> = weights.iter().map(|(id, weight)| format!("{id}={weight}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// An alias's versions and their weights (one version: weight 1), in id order.
#[derive(Debug, Clone)]
pub struct Route {
    targets: Vec<(String, u32)>,
    /// Position in the low-discrepancy sequence, for requests without a key.
    next: Arc<AtomicU64>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.targets == other.targets
    }
}

/// 2^64 / φ, odd: consecutive multiples spread evenly over the u64 range (a Weyl sequence).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Route {
    pub fn one(id: &str) -> Self {
        Self { targets: vec![(id.to_string(), 1)], next: Arc::default() }
    }

    /// A split; versions with weight 0 are left out (they get no requests). `field` names the
    /// request field in errors.
    pub fn split(weights: &BTreeMap<String, u32>, field: &str) -> Result<Self> {
        let mut targets: Vec<(String, u32)> =
            weights.iter().filter(|(_, w)| **w > 0).map(|(id, w)| (id.clone(), *w)).collect();
        if let [(_, weight)] = targets.as_mut_slice() {
            // A split with one version is that version.
            *weight = 1;
        }
        if targets.is_empty() {
            return Err(GitcapError::invalid(field, "a split needs at least one version with a weight above 0"));
        }
        let total: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
        if total > u64::from(u32::MAX) {
            return Err(GitcapError::invalid(field, "the weights of a split add up to more than 2^32 - 1"));
        }
        Ok(Self { targets, next: Arc::default() })
    }

    pub fn from_target(target: &AliasTarget, field: &str) -> Result<Self> {
        match target {
            AliasTarget::One(id) => Ok(Self::one(id)),
            AliasTarget::Split(weights) => Self::split(weights, field),
        }
    }

    /// As written in files: a plain id unless split.
    pub fn target(&self) -> AliasTarget {
        match self.targets.as_slice() {
            [(id, _)] => AliasTarget::One(id.clone()),
            _ => AliasTarget::Split(self.targets.iter().cloned().collect()),
        }
    }

    /// Versions and weights, in id order.
    pub fn targets(&self) -> &[(String, u32)] {
        &self.targets
    }

    pub fn is_split(&self) -> bool {
        self.targets.len() > 1
    }

    /// The version with the largest weight (the first in id order among equals): what a client
    /// that knows nothing of splits is told the alias points at.
    pub fn primary(&self) -> &str {
        let mut best = &self.targets[0];
        for target in &self.targets[1..] {
            if target.1 > best.1 {
                best = target;
            }
        }
        &best.0
    }

    pub fn contains(&self, id: &str) -> bool {
        self.targets.iter().any(|(target, _)| target == id)
    }

    /// The route without `id`; `None` when nothing is left.
    pub fn without(&self, id: &str) -> Option<Self> {
        let mut targets: Vec<(String, u32)> = self.targets.iter().filter(|(t, _)| t != id).cloned().collect();
        if let [(_, weight)] = targets.as_mut_slice() {
            *weight = 1;
        }
        (!targets.is_empty()).then(|| Self { targets, next: Arc::default() })
    }

    /// The version a request goes to: by its key's hash when it has one, else the next point of
    /// the sequence.
    pub fn pick(&self, key: Option<&str>) -> &str {
        if let [(id, _)] = self.targets.as_slice() {
            return id;
        }
        let point = match key {
            Some(key) => key_point(key),
            None => self.next.fetch_add(1, Ordering::Relaxed).wrapping_mul(GOLDEN),
        };
        self.at(point)
    }

    /// The version whose share of the u64 range holds `point`.
    fn at(&self, point: u64) -> &str {
        let total: u64 = self.targets.iter().map(|(_, w)| u64::from(*w)).sum();
        // point / 2^64 of the total weight, in whole units of weight.
        let mut left = ((u128::from(point) * u128::from(total)) >> 64) as u64;
        for (id, weight) in &self.targets {
            if left < u64::from(*weight) {
                return id;
            }
            left -= u64::from(*weight);
        }
        &self.targets[self.targets.len() - 1].0
    }
}

/// A stable hash of a route key (the same on every replica and every build).
fn key_point(key: &str) -> u64 {
    let hash = blake3::hash(key.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pairs: &[(&str, u32)]) -> Route {
        Route::split(&pairs.iter().map(|(id, w)| (id.to_string(), *w)).collect(), "split").unwrap()
    }

    #[test]
    fn targets_print_as_people_write_them() {
        assert_eq!(Route::one("hcap@v1").target().to_string(), "hcap@v1");
        assert_eq!(split(&[("hcap@v2", 20), ("hcap@v1", 80)]).target().to_string(), "hcap@v1=80,hcap@v2=20");
    }

    #[test]
    fn requests_without_a_key_follow_the_weights_closely() {
        let route = split(&[("m@v1", 90), ("m@v2", 10)]);
        for run in [10, 100, 1000] {
            let v2 = (0..run).filter(|_| route.pick(None) == "m@v2").count();
            assert!(v2.abs_diff(run / 10) <= 1, "{v2} of {run} went to the 10% version");
        }
        let thirds = split(&[("a@1", 1), ("b@1", 1), ("c@1", 1)]);
        let mut counts = BTreeMap::new();
        for _ in 0..300 {
            *counts.entry(thirds.pick(None).to_string()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|n| (99..=101).contains(n)), "{counts:?}");
    }

    #[test]
    fn keys_are_sticky_and_a_weight_change_moves_only_the_band_that_changed_hands() {
        let before = split(&[("m@v1", 90), ("m@v2", 10)]);
        let after = split(&[("m@v1", 50), ("m@v2", 50)]);
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let on_v2 = keys.iter().filter(|k| before.pick(Some(k)) == "m@v2").count();
        assert!((140..=260).contains(&on_v2), "{on_v2} of 2000 keys on the 10% version");
        for key in &keys {
            assert_eq!(before.pick(Some(key)), before.pick(Some(key)), "{key} moved");
            // Raising v2's share only ever moves keys to v2.
            if before.pick(Some(key)) == "m@v2" {
                assert_eq!(after.pick(Some(key)), "m@v2", "{key} left v2 when v2 grew");
            }
        }
        // The same key lands the same way on another replica's copy of the route.
        let replica = split(&[("m@v2", 10), ("m@v1", 90)]);
        assert!(keys.iter().all(|k| replica.pick(Some(k)) == before.pick(Some(k))));
    }

    #[test]
    fn splits_are_checked_and_written_back_as_given() {
        let weights = |pairs: &[(&str, u32)]| pairs.iter().map(|(id, w)| (id.to_string(), *w)).collect();
        assert!(Route::split(&weights(&[("m@v1", 0)]), "split").is_err());
        assert!(Route::split(&BTreeMap::new(), "split").is_err());
        assert!(Route::split(&weights(&[("a@1", u32::MAX), ("b@1", 1)]), "split").is_err());
        let route = split(&[("m@v1", 90), ("m@v2", 10), ("m@v3", 0)]);
        assert_eq!(route.targets().len(), 2, "weight 0 takes no requests");
        assert_eq!(route.primary(), "m@v1");
        assert_eq!(route.target(), AliasTarget::Split(weights(&[("m@v1", 90), ("m@v2", 10)])));
        assert_eq!(Route::one("m@v1").target(), AliasTarget::One("m@v1".into()));
        assert_eq!(route.without("m@v1").unwrap(), Route::one("m@v2"));
        assert!(Route::one("m@v1").without("m@v1").is_none());
        let parsed: AliasTarget = serde_json::from_str(r#"{"m@v1": 90, "m@v2": 10}"#).unwrap();
        assert_eq!(Route::from_target(&parsed, "x").unwrap(), route);
    }
}
