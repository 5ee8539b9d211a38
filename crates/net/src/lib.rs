//! Tapestry's address types, defined once for every crate: IPv4 CIDR blocks and MAC
//! addresses. A leaf crate with no dependency of ours (`serde` support behind the
//! `serde` feature), so that the data plane and the cluster model share one
//! definition.
//!
//! Why our own instead of `ipnet`: the control plane needs only a handful of
//! operations (parse, contains, n-th host, split into node subnets), and every
//! parse failure must say *what* is wrong with the text (host bits set, prefix
//! out of range) so a manifest error names the fix. Both types serialize as the
//! strings Kubernetes and `ip` print (`10.244.1.0/24`, `02:42:ac:11:00:02`), so
//! they round-trip through YAML and JSON unchanged.
//!
//! Invariant: an [`Ipv4Cidr`] is always canonical — its address has no host
//! bits set and its prefix length is at most 32. All arithmetic is checked.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[cfg(feature = "serde")]
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a CIDR or MAC string did not parse. Cheap and `Copy`-free only because
/// it carries the offending text back for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    /// No `/` separating address and prefix length.
    #[error("`{text}` is not a CIDR block: expected ADDRESS/PREFIX, e.g. 10.244.1.0/24")]
    MissingPrefix { text: String },
    /// The address part is not a dotted-quad IPv4 address.
    #[error("`{text}` is not a CIDR block: `{addr}` is not an IPv4 address")]
    BadAddress { text: String, addr: String },
    /// The prefix length is not a number in 0..=32.
    #[error("`{text}` is not a CIDR block: prefix length `{prefix}` is not a number from 0 to 32")]
    BadPrefix { text: String, prefix: String },
    /// Bits below the prefix are set (`10.244.1.7/24`).
    #[error("`{text}` has host bits set; the network is {canonical}")]
    HostBitsSet { text: String, canonical: String },
    /// A MAC address that is not six colon-separated hex bytes.
    #[error("`{text}` is not a MAC address: expected six hex bytes like 02:42:ac:11:00:02")]
    BadMac { text: String },
}

/// A canonical IPv4 network: `addr` has no bits set below `prefix_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// Builds a network, masking off host bits. `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let masked = u32::from(addr) & mask(prefix_len);
        Some(Self {
            addr: Ipv4Addr::from(masked),
            prefix_len,
        })
    }

    /// `const` constructor for defaults; `None` if `prefix_len > 32` or host
    /// bits are set.
    pub const fn new_const(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len as u32)
        };
        if addr.to_bits() & !mask != 0 {
            return None;
        }
        Some(Self { addr, prefix_len })
    }

    /// Parses `a.b.c.d/n`, rejecting host bits (`10.244.1.7/24` is an error
    /// naming `10.244.1.0/24`).
    pub fn parse(text: &str) -> Result<Self, AddrParseError> {
        let (a, p) = text
            .split_once('/')
            .ok_or_else(|| AddrParseError::MissingPrefix { text: text.into() })?;
        let addr = Ipv4Addr::from_str(a).map_err(|_| AddrParseError::BadAddress {
            text: text.into(),
            addr: a.into(),
        })?;
        let prefix_len =
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= 32)
                .ok_or_else(|| AddrParseError::BadPrefix {
                    text: text.into(),
                    prefix: p.into(),
                })?;
        let cidr = Self::new(addr, prefix_len).ok_or_else(|| AddrParseError::BadPrefix {
            text: text.into(),
            prefix: p.into(),
        })?;
        if cidr.addr != addr {
            return Err(AddrParseError::HostBitsSet {
                text: text.into(),
                canonical: cidr.to_string(),
            });
        }
        Ok(cidr)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 0..=32.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask, e.g. 255.255.255.0 for a /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// The broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix_len))
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.addr)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains_net(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// Total number of addresses, 2^(32 - prefix_len).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// Number of usable host addresses: all but network and broadcast for
    /// prefixes up to /30; every address for /31 (RFC 3021) and /32.
    pub fn hosts_count(&self) -> u64 {
        if self.prefix_len >= 31 {
            self.size()
        } else {
            self.size() - 2
        }
    }

    /// The `n`-th address of the block counting the network address as 0
    /// (`10.244.1.0/24`.nth(1) = 10.244.1.1). `None` past the end.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        if n >= self.size() {
            return None;
        }
        let n = u32::try_from(n).ok()?;
        u32::from(self.addr).checked_add(n).map(Ipv4Addr::from)
    }

    /// The offset of `ip` from the network address, if `ip` is inside.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains(ip)
            .then(|| u64::from(u32::from(ip) - u32::from(self.addr)))
    }

    /// Number of subnets of length `prefix_len` this block splits into, or
    /// `None` if `prefix_len` is shorter than ours or longer than 32.
    pub fn subnet_count(&self, prefix_len: u8) -> Option<u64> {
        if prefix_len < self.prefix_len || prefix_len > 32 {
            return None;
        }
        Some(1u64 << (u32::from(prefix_len) - u32::from(self.prefix_len)))
    }

    /// The `index`-th subnet of length `prefix_len`
    /// (10.244.0.0/16 split into /24s: index 3 is 10.244.3.0/24).
    pub fn subnet(&self, prefix_len: u8, index: u64) -> Option<Ipv4Cidr> {
        if index >= self.subnet_count(prefix_len)? {
            return None;
        }
        let step = 1u64 << (32 - u32::from(prefix_len));
        let offset = u32::try_from(index.checked_mul(step)?).ok()?;
        let addr = u32::from(self.addr).checked_add(offset)?;
        Ipv4Cidr::new(Ipv4Addr::from(addr), prefix_len)
    }
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "serde")]
impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
/// Deserializes from a string through a visitor, so the decoder reports the
/// parse error at the field's own path (`spec.podCIDR`), not its parent's.
struct FromStrVisitor<T>(std::marker::PhantomData<T>, &'static str);

#[cfg(feature = "serde")]
impl<T> serde::de::Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr<Err = AddrParseError>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor(
            std::marker::PhantomData,
            "a CIDR block like 10.244.1.0/24",
        ))
    }
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00 (used as the unknown target in ARP requests).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Parses `aa:bb:cc:dd:ee:ff` (also accepts `-` separators, any case).
    pub fn parse(text: &str) -> Result<Self, AddrParseError> {
        let bad = || AddrParseError::BadMac { text: text.into() };
        let mut out = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }

    /// Builds an address from its six octets.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> Self {
        MacAddr([a, b, c, d, e, f])
    }

    /// Reads the first six bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes
            .get(..6)
            .and_then(|s| <[u8; 6]>::try_from(s).ok())
            .map(MacAddr)
    }

    /// The octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The I/G bit (least significant bit of the first octet): group address. Broadcast
    /// is a group address too.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Neither multicast nor broadcast.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The U/L bit: a locally administered address (what Tapestry assigns to pods).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address as the low 48 bits of a `u64` (big-endian order), e.g. a hash key.
    pub fn to_u64(&self) -> u64 {
        let [a, b, c, d, e, f] = self.0;
        u64::from_be_bytes([0, 0, a, b, c, d, e, f])
    }

    /// The inverse of [`MacAddr::to_u64`]; bits above 48 are ignored.
    pub fn from_u64(v: u64) -> Self {
        let [_, _, a, b, c, d, e, f] = v.to_be_bytes();
        MacAddr([a, b, c, d, e, f])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "serde")]
impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor(
            std::marker::PhantomData,
            "a MAC address like 02:42:ac:11:00:02",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["10.244.0.0/16", "0.0.0.0/0", "10.0.0.1/32", "198.18.0.0/24"] {
            assert_eq!(c(s).to_string(), s);
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(matches!(
            Ipv4Cidr::parse("10.244.1.0"),
            Err(AddrParseError::MissingPrefix { .. })
        ));
        assert!(matches!(
            Ipv4Cidr::parse("10.244.1/24"),
            Err(AddrParseError::BadAddress { .. })
        ));
        assert!(matches!(
            Ipv4Cidr::parse("10.244.1.0/33"),
            Err(AddrParseError::BadPrefix { .. })
        ));
        let err = Ipv4Cidr::parse("10.244.1.7/24").unwrap_err();
        assert!(err.to_string().contains("10.244.1.0/24"), "{err}");
    }

    #[test]
    fn arithmetic() {
        let n = c("10.244.1.0/24");
        assert_eq!(n.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.size(), 256);
        assert_eq!(n.hosts_count(), 254);
        assert_eq!(n.nth(1), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(n.nth(255), Some(Ipv4Addr::new(10, 244, 1, 255)));
        assert_eq!(n.nth(256), None);
        assert!(n.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(n.offset_of(Ipv4Addr::new(10, 244, 1, 9)), Some(9));
        assert_eq!(c("10.0.0.0/31").hosts_count(), 2);
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert!(c("0.0.0.0/0").contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(c("10.244.0.0/16").contains_net(&n));
        assert!(!n.contains_net(&c("10.244.0.0/16")));
    }

    #[test]
    fn subnets() {
        let cluster = c("10.244.0.0/16");
        assert_eq!(cluster.subnet_count(24), Some(256));
        assert_eq!(cluster.subnet(24, 3), Some(c("10.244.3.0/24")));
        assert_eq!(cluster.subnet(24, 255), Some(c("10.244.255.0/24")));
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(cluster.subnet(8, 0), None);
        assert_eq!(
            c("0.0.0.0/0").subnet(32, u64::from(u32::MAX)),
            Some(c("255.255.255.255/32"))
        );
    }

    #[test]
    fn mac_parse_display() {
        let m = MacAddr::parse("02:42:AC:11:00:02").unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!(!m.is_multicast());
        assert!(MacAddr::parse("ff-ff-ff-ff-ff-ff").unwrap().is_multicast());
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "0:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert!(MacAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_as_strings() {
        let n = c("10.244.1.0/24");
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"10.244.1.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&j).unwrap(), n);
        assert!(serde_json::from_str::<Ipv4Cidr>("\"10.244.1.1/24\"").is_err());
    }

    #[test]
    fn mac_classes_and_text() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::new(0x01, 0x00, 0x5e, 0, 0, 1).is_multicast());
        assert!(MacAddr::new(0x02, 0, 0, 0, 0, 1).is_unicast());
        assert!(MacAddr::new(0x02, 0, 0, 0, 0, 1).is_local());
        let m: MacAddr = "0a:58:0A:f4:01:02".parse().unwrap();
        assert_eq!(m, MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02));
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:02");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(m.to_u64(), 0x0a58_0af4_0102);
        assert!("0a:58:0a:f4:01".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:02:03".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:zz".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3]), None);
    }
}
