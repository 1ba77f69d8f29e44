//! Fan-out: one call run on every replica behind a name, concurrently, with a result per replica.
//!
//! Replicas are named the way a gRPC client names a load-balanced target: `dns:///host:port`
//! resolves every A and AAAA record of `host` (what a Kubernetes headless Service returns: one
//! record per ready pod), or a comma-separated list of endpoints (`http://a:50051,b:50051`).
//!
//! ```no_run
//! # async fn run() -> gitcap_client::Result<()> {
//! use gitcap_client::{replicas, ClientConfig};
//!
//! let base = ClientConfig::new("http://unused").admin_token("s3cret");
//! let targets = replicas::resolve("dns:///gitcap-headless.prod.svc:50051", &base).await?;
//! for replica in replicas::fan_out(targets, |client| async move { client.set_alias("captions", "coco@v2").await }).await {
//!     match replica.result {
//!         Ok(alias) => println!("{}: {} -> {}", replica.url, alias.alias, alias.id),
//!         Err(error) => eprintln!("{}: {error}", replica.url),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use crate::client::{ClientConfig, GitcapClient};
use crate::error::{Error, Result};

/// What one replica answered.
#[derive(Debug)]
pub struct ReplicaResult<T, E = Error> {
    /// The replica's URL (`http://10.1.2.3:50051`).
    pub url: String,
    /// Its answer, or why there is none (including a failure to connect).
    pub result: Result<T, E>,
}

/// The connection settings of each replica named by `spec`: `base` with the URL replaced.
///
/// `spec` is `dns:///host:port` (also `dns://authority/host:port`; the DNS authority is ignored
/// and the system resolver used), or endpoints separated by commas, each a URL or `host:port`.
/// Endpoints without a scheme, and resolved addresses, take `base.url`'s scheme (`https` or
/// `http`). For `https`, the certificate is checked against the DNS name unless
/// `base.tls_domain` says otherwise. Duplicates are dropped; the order is sorted.
pub async fn resolve(spec: &str, base: &ClientConfig) -> Result<Vec<ClientConfig>> {
    let scheme = if base.url.starts_with("https://") { "https" } else { "http" };
    let with_url = |url: String| ClientConfig { url, ..base.clone() };
    let mut configs = match spec.trim().strip_prefix("dns:") {
        Some(target) => {
            let (host, port) = dns_target(target)?;
            let addresses = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| Error::Resolve(format!("{spec}: {e}")))?;
            let mut configs: Vec<ClientConfig> =
                addresses.map(|address| with_url(format!("{scheme}://{address}"))).collect();
            if scheme == "https" && base.tls_domain.is_none() {
                configs.iter_mut().for_each(|config| config.tls_domain = Some(host.clone()));
            }
            configs
        }
        None => spec
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| {
                if endpoint.contains("://") {
                    with_url(endpoint.to_string())
                } else {
                    with_url(format!("{scheme}://{endpoint}"))
                }
            })
            .collect(),
    };
    configs.sort_by(|a, b| a.url.cmp(&b.url));
    configs.dedup_by(|a, b| a.url == b.url);
    if configs.is_empty() {
        return Err(Error::Resolve(format!(
            "{spec:?} names no replica: give dns:///host:port or a comma-separated list of endpoints"
        )));
    }
    Ok(configs)
}

/// `host` and `port` of a `dns:` target (what follows `dns:`).
pub(crate) fn dns_target(target: &str) -> Result<(String, u16)> {
    let name = match target.strip_prefix("//") {
        Some(rest) => rest.split_once('/').map(|(_authority, name)| name).unwrap_or(rest),
        None => target,
    };
    let missing_port = || {
        Error::Resolve(format!(
            "dns:{target} needs a port: dns:///host:port, e.g. dns:///gitcap-headless.default.svc:50051"
        ))
    };
    // `[::1]:50051` or `host:50051`.
    let (host, port) = match name.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once("]:").ok_or_else(missing_port)?,
        None => name.rsplit_once(':').ok_or_else(missing_port)?,
    };
    if host.is_empty() {
        return Err(Error::Resolve(format!("dns:{target} names no host")));
    }
    let port = port.parse().map_err(|_| Error::Resolve(format!("dns:{target}: {port:?} is not a port number")))?;
    Ok((host.to_string(), port))
}

/// Connects to every replica and runs `call` on each, all at once; one result per replica, in
/// the order of `replicas`. A replica that cannot be reached gets its connection error. The
/// call's error type is the caller's (this crate's [`Error`], or e.g. `anyhow::Error`).
pub async fn fan_out<T, E, F, Fut>(replicas: Vec<ClientConfig>, call: F) -> Vec<ReplicaResult<T, E>>
where
    E: From<Error>,
    F: Fn(GitcapClient) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let call = &call;
    futures::future::join_all(replicas.into_iter().map(|config| async move {
        let url = config.url.clone();
        let result = match GitcapClient::connect(config).await {
            Ok(client) => call(client).await,
            Err(error) => Err(error.into()),
        };
        ReplicaResult { url, result }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(configs: &[ClientConfig]) -> Vec<&str> {
        configs.iter().map(|c| c.url.as_str()).collect()
    }

    #[tokio::test]
    async fn a_list_takes_the_base_scheme_sorted_without_duplicates() {
        let base = ClientConfig::new("http://ignored:1").admin_token("t");
        let configs = resolve(" b:2, http://a:1 ,,b:2, https://c:3", &base).await.unwrap();
        assert_eq!(urls(&configs), ["http://a:1", "http://b:2", "https://c:3"]);
        assert!(configs.iter().all(|c| c.admin_token.as_deref() == Some("t")));
        let tls = resolve("b:2", &ClientConfig::new("https://x:1")).await.unwrap();
        assert_eq!(urls(&tls), ["https://b:2"]);
    }

    #[tokio::test]
    async fn dns_targets_resolve_every_address() {
        let base = ClientConfig::new("http://x:1");
        for spec in ["dns:///127.0.0.1:50051", "dns://8.8.8.8/127.0.0.1:50051", "dns:127.0.0.1:50051"] {
            assert_eq!(urls(&resolve(spec, &base).await.unwrap()), ["http://127.0.0.1:50051"], "{spec}");
        }
        assert_eq!(urls(&resolve("dns:///[::1]:7", &base).await.unwrap()), ["http://[::1]:7"]);
        // https: the certificate is checked against the name, not the address.
        let tls = resolve("dns:///127.0.0.1:9", &ClientConfig::new("https://x:1")).await.unwrap();
        assert_eq!(tls[0].tls_domain.as_deref(), Some("127.0.0.1"));
        let named = resolve("dns:///127.0.0.1:9", &ClientConfig::new("https://x:1").tls_domain("svc")).await.unwrap();
        assert_eq!(named[0].tls_domain.as_deref(), Some("svc"));
    }

    #[tokio::test]
    async fn bad_specs_say_what_is_wrong() {
        let base = ClientConfig::new("http://x:1");
        let message = |spec: &'static str| {
            let base = base.clone();
            async move { resolve(spec, &base).await.unwrap_err().to_string() }
        };
        assert!(message("dns:///gitcap-headless").await.contains("needs a port"));
        assert!(message("dns:///:50051").await.contains("no host"));
        assert!(message("dns:///host:http").await.contains("not a port number"));
        assert!(message(" , ").await.contains("names no replica"));
        assert!(message("dns:///no-such-host.invalid:1").await.starts_with("resolving replicas: dns:///no-such-host"));
    }

    #[tokio::test]
    async fn each_replica_gets_its_own_result() {
        // A port nothing listens on: bound, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let configs = resolve(&format!("{closed},http://[not a url"), &ClientConfig::new("http://x:1")).await.unwrap();
        let results = fan_out(configs, |_client| async { Ok::<_, Error>(()) }).await;
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].url, format!("http://{closed}"));
        assert!(matches!(results[0].result, Err(Error::Transport(_))), "{:?}", results[0]);
        assert!(matches!(results[1].result, Err(Error::Config(_))), "{:?}", results[1]);
    }
}
