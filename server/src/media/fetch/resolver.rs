//! The DNS resolver of the fetch client: it resolves a host name once and hands the connector
//! only the addresses the allowlist admits, so the connection goes to an address that was
//! vetted and no second lookup can answer differently (DNS rebinding).
//!
//! The connector does not call a resolver for IP-literal hosts; those are vetted before each
//! request (see `UrlFetcher::vet`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::allowlist::AllowList;
use super::SETTING_ALLOW_HOSTS;

/// Resolves with the system resolver, keeping only admitted addresses.
pub(super) struct VettingResolver {
    allow: Arc<AllowList>,
}

impl VettingResolver {
    pub fn new(allow: Arc<AllowList>) -> Self {
        Self { allow }
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Refusal(format!("cannot resolve the host {host}: {e}")))?;
            let vetted = vet_addresses(&allow, &host, resolved)?;
            Ok(Box::new(vetted.into_iter()) as Addrs)
        })
    }
}

/// The admitted addresses among `resolved`, or a refusal naming the first refused one when none
/// is admitted. A host with both admitted and refused addresses is reached on the admitted ones
/// only (say `localhost` with `127.0.0.1` listed, which also resolves to `::1`).
pub(super) fn vet_addresses(
    allow: &AllowList,
    host: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Refusal> {
    let mut refused = None;
    let mut vetted = Vec::new();
    for addr in resolved {
        match allow.admits_address(addr.ip(), Some(host)) {
            Ok(()) => vetted.push(addr),
            Err(class) => {
                refused.get_or_insert((addr.ip(), class));
            }
        }
    }
    match (vetted.is_empty(), refused) {
        (false, _) => Ok(vetted),
        (true, Some((ip, class))) => Err(Refusal(format!(
            "the host {host} resolves to {ip}, {}; add it to {SETTING_ALLOW_HOSTS} to allow it",
            class.describe()
        ))),
        (true, None) => Err(Refusal(format!("the host {host} has no addresses"))),
    }
}

/// Why the resolver gave the connector no address; the fetcher finds it in the client's error
/// chain and passes the message on.
#[derive(Debug)]
pub(super) struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 0)).collect()
    }

    #[test]
    fn keeps_admitted_addresses_and_names_the_refused_one() {
        let allow = AllowList::parse(&["*".into(), "127.0.0.1".into()]).unwrap();
        let both = addrs(&["::1", "127.0.0.1"]);
        assert_eq!(vet_addresses(&allow, "localhost", both).unwrap(), addrs(&["127.0.0.1"]));
        let public = addrs(&["93.184.216.34", "2606:2800:220:1::1"]);
        assert_eq!(vet_addresses(&allow, "example.com", public.clone()).unwrap(), public);

        let refusal = vet_addresses(&allow, "intranet", addrs(&["10.0.0.5", "10.0.0.6"])).unwrap_err();
        assert_eq!(
            refusal.0,
            "the host intranet resolves to 10.0.0.5, a private address; add it to media.url.allow_hosts to allow it"
        );
        let refusal = vet_addresses(&allow, "metadata", addrs(&["169.254.169.254"])).unwrap_err();
        assert!(refusal.0.contains("169.254.169.254, a link-local address"), "{}", refusal.0);
        assert!(vet_addresses(&allow, "nothing", []).unwrap_err().0.contains("no addresses"));
    }
}
