//! gRPC health: the server, the Captioner service, video decoding, the desired state, and each
//! model by every name it answers to.

use std::sync::Arc;

use tonic_health::ServingStatus;

use super::{DESIRED_STATE_SERVICE_NAME, SERVICE_NAME};
use crate::registry::Registry;

/// Keeps `gitcap.v1.Captioner/<alias or name@version>` health in step with the registry:
/// SERVING while that model can answer.
pub async fn track_model_health(
    registry: &Arc<Registry>,
    health: tonic_health::server::HealthReporter,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    /// Sets every model, version and alias name's status; a name that went away (an unloaded
    /// version, or an alias whose target was unloaded) becomes NOT_SERVING.
    async fn refresh(
        registry: &Registry,
        health: &tonic_health::server::HealthReporter,
        known: &mut std::collections::HashSet<String>,
    ) {
        let current = registry.serving_names();
        for (name, ready) in &current {
            let status = if *ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status(format!("{SERVICE_NAME}/{name}"), status).await;
        }
        let now: std::collections::HashSet<String> = current.into_iter().map(|(name, _)| name).collect();
        for gone in known.difference(&now) {
            health.set_service_status(format!("{SERVICE_NAME}/{gone}"), ServingStatus::NotServing).await;
        }
        *known = now;
    }
    let mut known = std::collections::HashSet::new();
    refresh(registry, &health, &mut known).await;
    if let Some(desired) = registry.desired_status() {
        health.set_service_status(DESIRED_STATE_SERVICE_NAME, desired_health(&desired)).await;
    }
    let mut events = registry.subscribe();
    let registry = registry.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(crate::registry::RegistryEvent::DesiredState(desired)) => {
                    health.set_service_status(DESIRED_STATE_SERVICE_NAME, desired_health(&desired)).await;
                }
                Ok(event) => {
                    if let crate::registry::RegistryEvent::Model(status) = &event {
                        if !matches!(status.state, crate::registry::ModelState::Ready) {
                            let name = format!("{SERVICE_NAME}/{}", status.id);
                            health.set_service_status(name, ServingStatus::NotServing).await;
                        }
                    }
                    if !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        refresh(&registry, &health, &mut known).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    refresh(&registry, &health, &mut known).await;
                    if let Some(desired) = registry.desired_status() {
                        health.set_service_status(DESIRED_STATE_SERVICE_NAME, desired_health(&desired)).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn desired_health(status: &crate::registry::DesiredStatus) -> ServingStatus {
    if status.in_sync {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
