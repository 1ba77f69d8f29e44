//! What kind of IP address a URL fetch is about to reach. Only globally routable unicast is
//! [`AddressClass::Public`]; every other kind is named, so a refusal can say what the address is.
//!
//! Addresses that carry an IPv4 address inside an IPv6 one and reach it (IPv4-mapped
//! `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of an IP address, as far as reaching it from a server is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast: fetched without being named in the allowlist.
    Public,
    /// `0.0.0.0` or `::`, which connects to the local machine.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`; also IPv6's local-use NAT64 `64:ff9b:1::/48`.
    Private,
    /// Carrier-grade NAT, `100.64/10`.
    SharedNat,
    /// `127/8`, `::1`.
    Loopback,
    /// `169.254/16` (where cloud metadata services answer), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`, IPv6's private range.
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed inside some sites.
    SiteLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// Everything else that is not globally routable unicast: `240/4`, IETF protocol
    /// assignments (`192.0.0/24`, `2001::/23`), IPv4-compatible IPv6, IPv6 outside `2000::/3`.
    Reserved,
}

impl AddressClass {
    /// Whether a fetch may connect to such an address without the allowlist naming it.
    pub fn is_public(self) -> bool {
        self == Self::Public
    }

    /// The class in words, to follow an address in a message ("10.0.0.5, a private address").
    pub fn describe(self) -> &'static str {
        match self {
            Self::Public => "a public address",
            Self::Unspecified => "the unspecified address (this machine)",
            Self::ThisNetwork => "a 'this network' address (0.0.0.0/8)",
            Self::Private => "a private address",
            Self::SharedNat => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address",
            Self::UniqueLocal => "a unique local (private) IPv6 address",
            Self::SiteLocal => "a site-local IPv6 address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::Reserved => "a reserved address, not publicly routable",
        }
    }
}

/// The class of `ip`.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_broadcast() => Broadcast,
        (0, _, _) => ThisNetwork,
        (10, _, _) | (192, 168, _) => Private,
        (172, _, _) if b & 0xf0 == 16 => Private,
        (100, _, _) if b & 0xc0 == 64 => SharedNat,
        (127, _, _) => Loopback,
        (169, 254, _) => LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (198, _, _) if b & 0xfe == 18 => Benchmarking,
        // IETF protocol assignments, and the deprecated 6to4 relay anycast prefix.
        (192, 0, 0) | (192, 88, 99) => Reserved,
        (224..=239, _, _) => Multicast,
        (240..=255, _, _) => Reserved,
        _ => Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let s = ip.segments();
    if ip.is_unspecified() {
        return Unspecified;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let low_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s[0] {
        // IPv4-compatible (`::a.b.c.d`), deprecated: never routed.
        0 if s[1..6] == [0; 5] => Reserved,
        0x64 if s[1] == 0xff9b && s[2..6] == [0; 4] => classify_v4(low_v4),
        0x64 if s[1] == 0xff9b && s[2] == 1 => Private,
        0x2002 => classify_v4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8)),
        0x2001 if s[1] == 0x0db8 => Documentation,
        0x2001 if s[1] == 0x0002 && s[2] == 0 => Benchmarking,
        0x2001 if s[1] < 0x0200 => Reserved,
        0x3fff if s[1] < 0x1000 => Documentation,
        _ if s[0] & 0xfe00 == 0xfc00 => UniqueLocal,
        _ if s[0] & 0xffc0 == 0xfe80 => LinkLocal,
        _ if s[0] & 0xffc0 == 0xfec0 => SiteLocal,
        _ if s[0] & 0xff00 == 0xff00 => Multicast,
        // Global unicast is 2000::/3; the rest of the space is unassigned or special.
        _ if s[0] & 0xe000 != 0x2000 => Reserved,
        _ => Public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    #[test]
    fn classifies_ipv4_and_ipv6_addresses() {
        let cases = [
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.216.34", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("198.20.0.1", Public),
            ("223.255.255.255", Public),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedNat),
            ("100.127.255.255", SharedNat),
            ("127.0.0.1", Loopback),
            ("127.0.0.2", Loopback),
            ("127.255.255.254", Loopback),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("192.0.0.8", Reserved),
            ("192.88.99.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("2606:4700:4700::1111", Public),
            ("2001:4860:4860::8888", Public),
            ("2a00:1450:4001::1", Public),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Reserved),
            ("2001:1ff::1", Reserved),
            ("100::1", Reserved),
            ("5f00::1", Reserved),
            ("::2", Reserved),
            ("::10.0.0.1", Reserved),
            // IPv4-mapped: judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:100.64.0.1", SharedNat),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:8.8.8.8", Public),
            // NAT64 and 6to4 reach the IPv4 address they embed.
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::808:808", Public),
            ("64:ff9b:1::1", Private),
            ("2002:c0a8:0101::1", Private),
            ("2002:7f00:0001::", Loopback),
            ("2002:0808:0808::1", Public),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|&(text, expected)| {
                let actual = classify(text.parse().unwrap());
                (actual != expected).then(|| format!("{text}: {actual:?}, expected {expected:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn only_public_addresses_are_public() {
        assert!(Public.is_public());
        for class in [Unspecified, Private, Loopback, LinkLocal, UniqueLocal, Multicast, Reserved] {
            assert!(!class.is_public(), "{class:?}");
            assert!(class.describe().starts_with("a ") || class.describe().starts_with("the "));
        }
    }
}
