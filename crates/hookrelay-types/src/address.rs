//! Which addresses a webhook may be sent to. Pure: the deliverer checks every address a
//! name resolves to, query checks IP-literal endpoint URLs when they are written. Unless
//! private targets are allowed, only globally reachable unicast addresses pass.
//!
//! IPv6 is judged as an allow-list (global unicast 2000::/3 only, minus the special blocks
//! inside it), so a range nobody thought of is refused rather than reached. Forms that
//! carry an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by
//! that address.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Why an address is not public; its text reads "a <kind> address".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPublic {
    /// 0.0.0.0/8, `::`.
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16, IPv6 unique local fc00::/7.
    Private,
    /// 127/8, `::1`.
    Loopback,
    /// 169.254/16 (cloud metadata lives at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// Carrier-grade NAT 100.64/10.
    SharedCgnat,
    /// 224/4, ff00::/8.
    Multicast,
    /// Documentation, benchmarking, protocol assignments, 240/4 and broadcast; IPv6
    /// outside global unicast, deprecated site-local, Teredo and the like.
    Reserved,
}

impl NonPublic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Private => "private",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (carrier-grade NAT)",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for NonPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} address", self.as_str())
    }
}

/// Whether `ip` is a globally reachable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    non_public(ip).is_none()
}

/// `None` for a globally reachable unicast address; otherwise what kind of address it is.
pub fn non_public(ip: IpAddr) -> Option<NonPublic> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<NonPublic> {
    let [a, b, c, _] = ip.octets();
    let kind = if a == 0 {
        NonPublic::Unspecified // "this network", 0.0.0.0/8
    } else if ip.is_private() {
        NonPublic::Private
    } else if ip.is_loopback() {
        NonPublic::Loopback
    } else if ip.is_link_local() {
        NonPublic::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        NonPublic::SharedCgnat
    } else if ip.is_multicast() {
        NonPublic::Multicast
    } else if (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0.0/24
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast 192.88.99.0/24
        || a >= 240
    // reserved 240.0.0.0/4 and broadcast
    {
        NonPublic::Reserved
    } else {
        return None;
    };
    Some(kind)
}

fn v4_in(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<NonPublic> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(NonPublic::Unspecified);
    }
    if ip.is_loopback() {
        return Some(NonPublic::Loopback);
    }
    // ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    // NAT64's well-known prefix translates to the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return non_public_v4(v4_in(s[6], s[7]));
    }
    if ip.is_multicast() {
        return Some(NonPublic::Multicast);
    }
    if ip.is_unique_local() {
        return Some(NonPublic::Private);
    }
    if ip.is_unicast_link_local() {
        return Some(NonPublic::LinkLocal);
    }
    // Everything else outside 2000::/3: ::/8 (IPv4-compatible ::a.b.c.d, IPv4-translated
    // ::ffff:0:a.b.c.d), 64:ff9b:1::/48 local NAT64, 100::/64 discard, site-local fec0::/10.
    if s[0] & 0xe000 != 0x2000 {
        return Some(NonPublic::Reserved);
    }
    // 6to4 routes to the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return non_public_v4(v4_in(s[1], s[2]));
    }
    let special_2001 = s[0] == 0x2001
        && (s[1] == 0 // Teredo 2001::/32: tunnels to an address it hides
            || s[1] == 0x0db8 // documentation 2001:db8::/32
            || (s[1] == 2 && s[2] == 0) // benchmarking 2001:2::/48
            || (0x10..=0x2f).contains(&s[1])); // ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28
    if special_2001 || (s[0] == 0x3fff && s[1] < 0x1000) {
        // documentation 3fff::/20 as well
        return Some(NonPublic::Reserved);
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_special_range_is_refused_with_its_kind() {
        use NonPublic::*;
        for (s, kind) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("127.0.0.1", Loopback),
            ("127.8.9.10", Loopback),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.254", SharedCgnat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("192.88.99.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Reserved),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            // ::/8, with the IPv4 forms inside it
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Reserved),
            ("::8.8.8.8", Reserved),
            ("::ffff:0:8.8.8.8", Reserved),
            ("::1:2:3:4", Reserved),
            ("100::1", Reserved),
            // NAT64 and 6to4 are judged by the IPv4 address they carry
            ("64:ff9b::a00:1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b:1::808:808", Reserved),
            ("2002:a00:1::1", Private),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::1", LinkLocal),
            ("2002:6440:1::", SharedCgnat),
            // Teredo, documentation, benchmarking, ORCHID
            ("2001::1", Reserved),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reserved),
            ("2001:db8::1", Reserved),
            ("2001:2::1", Reserved),
            ("2001:10::1", Reserved),
            ("2001:20::1", Reserved),
            ("3fff::1", Reserved),
        ] {
            assert_eq!(non_public(ip(s)), Some(kind), "{s}");
            assert!(!is_public(ip(s)), "{s} counted as public");
        }
    }

    #[test]
    fn a_refusal_reads_as_the_kind_of_address() {
        assert_eq!(non_public(ip("10.0.0.1")).unwrap().to_string(), "a private address");
        assert_eq!(
            non_public(ip("169.254.169.254")).unwrap().to_string(),
            "a link-local address"
        );
    }

    #[test]
    fn ordinary_internet_addresses_are_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2600::1",
        ] {
            assert!(is_public(ip(s)), "{s} counted as private");
        }
    }

    proptest! {
        #[test]
        fn mapped_ipv4_is_judged_like_the_ipv4_address(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), is_public(IpAddr::V4(v4)));
        }

        #[test]
        fn six_to_four_is_judged_like_the_ipv4_address(a: u8, b: u8, c: u8, d: u8, rest: u16) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            let v6 = Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), rest, 0, 0, 0, 1);
            prop_assert_eq!(is_public(IpAddr::V6(v6)), is_public(IpAddr::V4(v4)));
        }

        #[test]
        fn rfc1918_is_never_public(b: u8, c: u8, d: u8) {
            prop_assert!(!is_public(IpAddr::V4(Ipv4Addr::new(10, b, c, d))));
            prop_assert!(!is_public(IpAddr::V4(Ipv4Addr::new(192, 168, c, d))));
            prop_assert!(!is_public(IpAddr::V4(Ipv4Addr::new(172, 16 + (b % 16), c, d))));
        }
    }
}
