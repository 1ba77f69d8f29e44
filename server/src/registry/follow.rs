//! Following the desired-state file: read it every poll interval, and reconcile when its content
//! changed and has stayed the same for one more read; retry a reconcile that failed, with
//! backoff, until it succeeds or the file changes again.
//!
//! The file is read through its path each time and compared by content hash, not by
//! modification time or inotify, so both ways it changes in practice are seen: a file replaced
//! or rewritten in place, and a Kubernetes ConfigMap volume's update, which swaps the `..data`
//! symlink to a new timestamped directory and leaves the path (a symlink through `..data`) as it
//! was. Waiting for one unchanged read means a file caught half-written is not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::desired::DesiredStatus;
use super::desired::{self, DesiredState};
use super::models::Registry;
use crate::device::DeviceSpec;
use crate::error::{GitcapError, Result};
use crate::model::Precision;

/// The first retry of a failed reconcile comes after this long, then twice as long each time.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);

/// What to follow and how.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub path: PathBuf,
    /// How often the file is read.
    pub poll: Duration,
    /// Device and dtype of versions that do not say.
    pub default_device: DeviceSpec,
    pub default_dtype: Precision,
}

/// Reads the file and reconciles to it once (start-up): an unreadable or invalid file is an
/// error, so a replica never starts without knowing what it should serve. Versions that fail
/// to load are not: they are reported and retried. Then follows the file on a task of its own.
pub async fn start(registry: Arc<Registry>, options: FollowOptions) -> Result<()> {
    let (text, hash) = read(&options.path).map_err(|e| GitcapError::invalid("admin.desired_state", e))?;
    let desired = parse(&text, &options).map_err(|e| GitcapError::invalid("admin.desired_state", e))?;
    let mut follower = Follower::new(registry, options);
    follower.apply(hash, desired).await;
    tokio::spawn(async move { follower.run().await });
    Ok(())
}

struct Follower {
    registry: Arc<Registry>,
    options: FollowOptions,
    /// The content last read, once: applied when the next read finds it again.
    seen: Option<String>,
    /// The content last applied (parsed, then reconciled or refused).
    attempted: Option<(String, Option<DesiredState>)>,
    applied: String,
    /// When to retry a reconcile that failed, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

impl Follower {
    fn new(registry: Arc<Registry>, options: FollowOptions) -> Self {
        Self { registry, options, seen: None, attempted: None, applied: String::new(), retry: None }
    }

    async fn run(&mut self) {
        let mut ticks = tokio::time::interval(self.options.poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.tick().await;
        }
    }

    async fn tick(&mut self) {
        let (text, hash) = match read(&self.options.path) {
            Ok(read) => read,
            Err(error) => {
                // Keep serving what was applied; say why the file is not followed.
                let first = self.registry.desired_status().is_none_or(|s| !s.content_hash.is_empty());
                self.seen = None;
                self.report(String::new(), vec![error], first);
                return;
            }
        };
        let attempted = self.attempted.as_ref().filter(|(applied, _)| *applied == hash);
        match attempted {
            Some((_, Some(desired))) if self.retry.is_some_and(|(at, _)| Instant::now() >= at) => {
                let desired = desired.clone();
                self.apply(hash, desired).await;
            }
            Some(_) => {
                // Unchanged: after an unreadable spell, say again where things stand.
                if self.registry.desired_status().is_some_and(|s| s.content_hash.is_empty()) {
                    self.attempted = None;
                    self.seen = Some(hash);
                }
            }
            None if self.seen.as_ref() != Some(&hash) => self.seen = Some(hash),
            // Off the async threads: resolving a first `dtype = "auto"` runs the CPU probe.
            None => match parse_off_runtime(text, self.options.clone()).await {
                Ok(desired) => self.apply(hash, desired).await,
                Err(error) => {
                    tracing::warn!(path = %self.options.path.display(), %error, "desired-state file refused");
                    self.attempted = Some((hash.clone(), None));
                    self.retry = None;
                    self.report(hash, vec![error], true);
                }
            },
        }
    }

    /// Reconciles to `desired` (read with content hash `hash`) and reports the outcome.
    async fn apply(&mut self, hash: String, desired: DesiredState) {
        tracing::info!(path = %self.options.path.display(), hash, "reconciling to the desired-state file");
        let errors = self.registry.reconcile(&desired).await;
        if errors.is_empty() {
            self.applied = hash.clone();
            self.retry = None;
            tracing::info!(hash, "in sync with the desired-state file");
        } else {
            let wait = self.retry.map(|(_, wait)| (wait * 2).min(LAST_RETRY)).unwrap_or(FIRST_RETRY);
            self.retry = Some((Instant::now() + wait, wait));
            for error in &errors {
                tracing::warn!(hash, %error, retry_in = ?wait, "desired state not reached");
            }
        }
        self.seen = Some(hash.clone());
        self.attempted = Some((hash.clone(), Some(desired)));
        self.report(hash, errors, true);
    }

    /// Publishes where things stand; `attempt`: this was an attempt to apply the file (a read, a
    /// parse or a reconcile), counted when it failed.
    fn report(&self, content_hash: String, errors: Vec<String>, attempt: bool) {
        if attempt && !errors.is_empty() {
            crate::metrics::desired_state_error();
        }
        self.registry.set_desired_status(DesiredStatus {
            path: self.options.path.clone(),
            in_sync: errors.is_empty(),
            content_hash,
            applied_hash: self.applied.clone(),
            errors,
        });
    }
}

/// The file's text and content hash; an error names the file.
fn read(path: &Path) -> std::result::Result<(String, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the desired-state file {}: {e}", path.display()))?;
    let hash = blake3::hash(text.as_bytes()).to_hex()[..16].to_string();
    Ok((text, hash))
}

async fn parse_off_runtime(text: String, options: FollowOptions) -> std::result::Result<DesiredState, String> {
    let parsed = tokio::task::spawn_blocking(move || parse(&text, &options)).await;
    parsed.unwrap_or_else(|e| Err(format!("reading the desired-state file: {e}")))
}

fn parse(text: &str, options: &FollowOptions) -> std::result::Result<DesiredState, String> {
    desired::parse(text, options.default_device, options.default_dtype)
        .map_err(|e| format!("desired-state file {}: {e}", options.path.display()))
}
