//! `media.url.allow_hosts`: which hosts a URL may name, and which non-public addresses a fetch
//! may reach.
//!
//! Entries: `*` (any host, as long as it resolves to public addresses), `example.com` (that host
//! exactly), `*.example.com` (its subdomains, not `example.com` itself), an IP address
//! (`10.0.0.5`, `::1` or `[::1]`) or a CIDR range (`10.1.0.0/16`, `fd00::/8`).
//!
//! Two checks use the list:
//! - the host of a URL: a name must match `*`, a name entry or a wildcard; an IP literal must
//!   match `*` or an address/range entry;
//! - each address the host resolves to (or the IP literal): a public address always passes; a
//!   private, loopback, link-local or other non-public one passes only when an address/range entry
//!   contains it, or when the URL's host name is listed exactly. Wildcards and `*` never admit a
//!   non-public address. So with `["*", "10.0.0.0/8"]`, `http://intranet/` is fetched when
//!   `intranet` resolves into 10/8, while `["10.0.0.0/8"]` alone admits only URLs that name an
//!   address in 10/8.

use std::net::IpAddr;

use url::Host;

use super::address::{classify, AddressClass};

/// A parsed `media.url.allow_hosts`.
#[derive(Debug, Clone, Default)]
pub(super) struct AllowList {
    any_host: bool,
    names: Vec<String>,
    /// Wildcard entries as the suffix a name must end with: `*.example.com` → `.example.com`.
    suffixes: Vec<String>,
    networks: Vec<Network>,
}

impl AllowList {
    /// Parses the entries; the error names the first bad entry and says what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut list = Self::default();
        for raw in entries {
            list.add(raw).map_err(|why| format!("entry `{raw}`: {why}"))?;
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        !self.any_host && self.names.is_empty() && self.suffixes.is_empty() && self.networks.is_empty()
    }

    fn add(&mut self, raw: &str) -> Result<(), String> {
        let entry = raw.trim().to_ascii_lowercase();
        if entry.is_empty() {
            return Err("an empty entry; remove it".into());
        }
        if entry == "*" {
            self.any_host = true;
        } else if looks_like_cidr(&entry) {
            self.networks.push(Network::parse_cidr(&entry)?);
        } else if let Some(ip) = parse_ip(&entry) {
            self.networks.push(Network::single(ip));
        } else if let Some(parent) = entry.strip_prefix("*.") {
            let parent = normalize_name(parent)?;
            self.suffixes.push(format!(".{parent}"));
        } else if entry.contains('*') {
            return Err("a wildcard may only stand alone (`*`) or lead a domain (`*.example.com`)".into());
        } else {
            self.names.push(normalize_name(&entry)?);
        }
        Ok(())
    }

    /// Whether a URL may name this host at all (before anything is resolved).
    pub fn admits_host(&self, host: &Host<&str>) -> bool {
        if self.any_host {
            return true;
        }
        match host {
            Host::Domain(name) => {
                let name = trim_root_dot(name);
                self.names.iter().any(|n| n == name)
                    || self.suffixes.iter().any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
            }
            Host::Ipv4(ip) => self.contains_address(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.contains_address(IpAddr::V6(*ip)),
        }
    }

    /// Whether a fetch may connect to `ip`, reached through the host name `name` (or an IP
    /// literal when `None`). The error is the class of the refused address.
    pub fn admits_address(&self, ip: IpAddr, name: Option<&str>) -> Result<(), AddressClass> {
        let class = classify(ip);
        let named_exactly = name.is_some_and(|name| self.names.iter().any(|n| n == trim_root_dot(name)));
        if class.is_public() || named_exactly || self.contains_address(ip) {
            Ok(())
        } else {
            Err(class)
        }
    }

    fn contains_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(ip))
    }
}

/// An address range from the list; single addresses are full-length prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    base: IpAddr,
    prefix: u8,
}

impl Network {
    fn single(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        Self { base: ip, prefix: max_prefix(ip) }
    }

    fn parse_cidr(entry: &str) -> Result<Self, String> {
        let (addr, prefix) = entry.split_once('/').expect("the caller saw a slash");
        let base = parse_ip(addr).ok_or_else(|| format!("`{addr}` is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|&p| p <= max_prefix(base))
            .ok_or_else(|| format!("the prefix length must be a number from 0 to {}", max_prefix(base)))?;
        let network = Self { base, prefix };
        let masked = network.masked(base);
        if masked != base {
            return Err(format!("the address has bits set past the /{prefix} prefix; write {masked}/{prefix}"));
        }
        // An IPv4-mapped range (`::ffff:10.0.0.0/104`) is the IPv4 range it maps.
        Ok(match (base.to_canonical(), prefix) {
            (v4 @ IpAddr::V4(_), p) if base.is_ipv6() && p >= 96 => Self { base: v4, prefix: p - 96 },
            _ => network,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.base.is_ipv4() && self.masked(ip) == self.base
    }

    /// `ip` with the bits past this network's prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        let keep = |width: u32| if self.prefix == 0 { 0 } else { u128::MAX << (width - u32::from(self.prefix)) };
        match ip {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & keep(32) as u32).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & keep(128)).into()),
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// `10.1.0.0/16` or `fd00::/8`, as opposed to a name with a path (`example.com/images`).
fn looks_like_cidr(entry: &str) -> bool {
    entry.split_once('/').is_some_and(|(addr, _)| {
        !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
    })
}

/// An IP address as written in the list: `10.0.0.5`, `::1` or `[::1]`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let unbracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    unbracketed.parse().ok()
}

/// A host name as URLs carry it (lower case, international names in punycode, no root dot).
fn normalize_name(name: &str) -> Result<String, String> {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if name.contains(['/', ':', '@', '?', '#']) || (!plain && name.is_ascii()) {
        return Err("write the host name alone (like `images.example.com`), without scheme, port or path".into());
    }
    match Host::parse(name) {
        Ok(Host::Domain(parsed)) if !trim_root_dot(&parsed).is_empty() => Ok(trim_root_dot(&parsed).to_string()),
        Ok(Host::Domain(_)) => Err("an empty host name".into()),
        // Numeric forms such as `127.1` are addresses to the URL parser; asking for them as such is clearer.
        Ok(other) => Err(format!("this is the address {other}; write it that way")),
        Err(e) => Err(format!("not a valid host name ({e})")),
    }
}

fn trim_root_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn parse_error(entry: &str) -> String {
        AllowList::parse(&[entry.to_string()]).unwrap_err()
    }

    fn host(text: &str) -> Host<String> {
        Host::parse(text).unwrap()
    }

    fn admits_host(list: &AllowList, text: &str) -> bool {
        let host = host(text);
        let borrowed = match &host {
            Host::Domain(d) => Host::Domain(d.as_str()),
            Host::Ipv4(ip) => Host::Ipv4(*ip),
            Host::Ipv6(ip) => Host::Ipv6(*ip),
        };
        list.admits_host(&borrowed)
    }

    #[test]
    fn hosts_match_names_wildcards_and_addresses() {
        let list = list(&["images.example.com", "*.cdn.example", "10.1.0.0/16", "[::1]", "Upper.Example.ORG."]);
        assert!(admits_host(&list, "images.example.com"));
        assert!(admits_host(&list, "IMAGES.example.com."));
        assert!(!admits_host(&list, "example.com"));
        assert!(!admits_host(&list, "evil-images.example.com"));
        assert!(admits_host(&list, "a.cdn.example"));
        assert!(admits_host(&list, "a.b.cdn.example"));
        assert!(!admits_host(&list, "cdn.example"), "a wildcard does not admit its parent");
        assert!(!admits_host(&list, "xcdn.example"));
        assert!(admits_host(&list, "upper.example.org"));
        assert!(admits_host(&list, "10.1.200.3"));
        assert!(!admits_host(&list, "10.2.0.1"));
        assert!(admits_host(&list, "[::1]"));
        assert!(!admits_host(&list, "[::2]"));
        assert!(!admits_host(&list, "localhost"), "an address entry admits addresses, not names");
        assert!(admits_host(&self::list(&["*"]), "anything.example"));
        assert!(admits_host(&self::list(&["*"]), "10.0.0.1"), "`*` admits literals; the address check follows");
        assert!(!admits_host(&AllowList::default(), "example.com"));
    }

    #[test]
    fn non_public_addresses_need_an_address_entry_or_the_exact_name() {
        let list = list(&["*", "*.corp.example", "intranet.corp.example", "10.1.0.0/16", "127.0.0.1"]);
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert_eq!(list.admits_address(ip("93.184.216.34"), Some("example.com")), Ok(()));
        assert_eq!(list.admits_address(ip("10.0.0.5"), Some("wiki.corp.example")), Err(AddressClass::Private));
        assert_eq!(list.admits_address(ip("10.0.0.5"), Some("intranet.corp.example")), Ok(()));
        assert_eq!(list.admits_address(ip("10.0.0.5"), Some("intranet.corp.example.")), Ok(()));
        assert_eq!(list.admits_address(ip("10.1.2.3"), Some("wiki.corp.example")), Ok(()));
        assert_eq!(list.admits_address(ip("10.1.2.3"), None), Ok(()));
        assert_eq!(list.admits_address(ip("127.0.0.1"), Some("localhost")), Ok(()));
        assert_eq!(list.admits_address(ip("::ffff:127.0.0.1"), None), Ok(()), "mapped addresses match IPv4 entries");
        assert_eq!(list.admits_address(ip("127.0.0.2"), None), Err(AddressClass::Loopback));
        assert_eq!(list.admits_address(ip("::1"), Some("localhost")), Err(AddressClass::Loopback));
        assert_eq!(list.admits_address(ip("169.254.169.254"), None), Err(AddressClass::LinkLocal));
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let list = list(&["192.168.0.0/24", "fd00::/8", "0.0.0.0/0", "::ffff:172.16.0.0/108"]);
        let nets = &list.networks;
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(nets[0].contains(ip("192.168.0.255")));
        assert!(!nets[0].contains(ip("192.168.1.0")));
        assert!(nets[1].contains(ip("fd12::1")));
        assert!(!nets[1].contains(ip("fc00::1")));
        assert!(nets[2].contains(ip("8.8.8.8")), "/0 holds every IPv4 address");
        assert!(!nets[2].contains(ip("::1")), "but no IPv6 one");
        assert_eq!(nets[3], Network { base: ip("172.16.0.0"), prefix: 12 });
    }

    #[test]
    fn bad_entries_are_named_with_the_reason() {
        assert!(parse_error("").contains("empty"));
        assert!(parse_error("10.0.0.0/33").contains("from 0 to 32"));
        assert!(parse_error("10.0.0.0/x").contains("from 0 to 32"));
        assert!(parse_error("10.1.2.3/16").contains("write 10.1.0.0/16"));
        assert!(parse_error("10.0.0/8").contains("not an IP address"));
        assert!(parse_error("*example.com").contains("wildcard"));
        assert!(parse_error("images.*.com").contains("wildcard"));
        assert!(parse_error("http://example.com").contains("without scheme"));
        assert!(parse_error("example.com:8080").contains("without scheme"));
        assert!(parse_error("example.com/images").contains("without scheme"));
        assert!(parse_error("exa mple.com").contains("without scheme"));
        assert!(parse_error("127.1").contains("127.0.0.1"));
        let message = parse_error("*.");
        assert!(message.starts_with("entry `*.`:"), "{message}");
    }

    #[test]
    fn international_names_are_compared_in_punycode() {
        let list = list(&["bücher.example"]);
        assert!(admits_host(&list, "xn--bcher-kva.example"));
        assert!(admits_host(&list, "BÜCHER.example"));
    }
}
