//! The zone: every name cluster DNS answers for, prebuilt in wire form.
//!
//! Built once per [`DnsData`] change and swapped in whole (an `ArcSwap` in the
//! server), so answering is a hash lookup on the lowercased question name and a
//! copy of prebuilt bytes. Records follow the Kubernetes DNS-Based Service
//! Discovery specification, version 1.1.0 (kubernetes/dns,
//! `docs/specification.md`), §2.3–2.5, plus CoreDNS's `pods verified` pod
//! records:
//!
//! | name | records |
//! |---|---|
//! | `dns-version.<zone>` | TXT `"1.1.0"` |
//! | `tapestry-revision.<zone>` | TXT: the cluster store revision the zone was built at (from the store only) |
//! | `<svc>.<ns>.svc.<zone>` (ClusterIP) | A cluster IP; PTR from the IP |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` (ClusterIP) | SRV `0 100 <port> <svc>.<ns>.svc.<zone>`, A in additional |
//! | `<svc>.<ns>.svc.<zone>` (headless) | A per ready endpoint; no endpoints: the name does not exist |
//! | `<host>.<svc>.<ns>.svc.<zone>` (headless) | A; `<host>` is the endpoint hostname or its IP dashed (`10-244-1-5`); PTR from the IP when a hostname is set |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` (headless) | SRV `0 <100/n> <endpoint port> <host>.<svc>.<ns>.svc.<zone>` per endpoint, A in additional |
//! | `<svc>.<ns>.svc.<zone>` (ExternalName) | CNAME |
//! | `a-b-c-d.<ns>.pod.<zone>` | A, for pods that exist with that IP in that namespace |
//! | `d.c.b.a.in-addr.arpa` | PTR: service names first (cluster IP, headless hostname); for other pod IPs, `a-b-c-d.<ns>.pod.<zone>` |
//!
//! Pod PTR is a choice beyond the spec, which defines PTR only for services and
//! named headless endpoints (CoreDNS answers pod PTR only through endpoint
//! hostnames); here an IP with no service name maps back to its pod A name, so
//! `dig -x` on any pod IP answers.
//!
//! Every ancestor of a name inside the zone exists as an empty non-terminal
//! (`<ns>.svc.<zone>`, `svc.<zone>`, …), so asking for one gets NODATA, not
//! NXDOMAIN (RFC 8020). Reverse names are exact entries only: the zone claims
//! no part of `in-addr.arpa` beyond the addresses it knows, so other reverse
//! lookups go upstream.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::model::{DnsData, ServiceKind};
use crate::wire::{encode_name, is_subdomain, parent, NameError, RecordType, CLASS_IN};

/// The schema version the zone announces at `dns-version.<zone>` (spec §2.2).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The SOA timers (RFC 1912 §2.2 ranges; secondaries never transfer this zone).
const SOA_REFRESH: u32 = 7200;
const SOA_RETRY: u32 = 1800;
const SOA_EXPIRE: u32 = 86400;
/// Bound on following CNAMEs inside the zone.
pub(crate) const MAX_CNAME_HOPS: usize = 8;

/// A piece of cluster data that could not become DNS records; the zone is
/// built without it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{object}: {error}")]
pub struct BuildWarning {
    /// What was skipped, as `service ns/name`, `pod ns/name`, `domain`.
    pub object: String,
    pub error: NameError,
}

/// The domain given to [`Zone::try_build`] is not a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ZoneError {
    #[error("cluster domain: {0}")]
    Domain(NameError),
    #[error("cluster domain must not be the root")]
    RootDomain,
}

/// One RRset, records stored without their owner name: the owner is written
/// at answer time, usually as a 2-byte pointer to the question.
#[derive(Debug, Default)]
pub(crate) struct RrSet {
    pub(crate) rtype: u16,
    /// Per record: TYPE, CLASS, TTL, RDLENGTH, RDATA.
    pub(crate) tails: Vec<Box<[u8]>>,
    /// Complete records (owner included) for the additional section, one
    /// entry per RRset there (SRV targets' A records).
    pub(crate) extra: Vec<Extra>,
    /// For CNAME: the target, lowercase wire form, to follow inside the zone.
    pub(crate) target: Option<Box<[u8]>>,
}

/// A whole RRset for the additional section.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Extra {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u16,
}

/// A name: its RRsets, empty for an empty non-terminal.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) rrsets: Vec<RrSet>,
}

impl Node {
    pub(crate) fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        let t = u16::from(rtype);
        self.rrsets.iter().find(|r| r.rtype == t)
    }
}

/// Where a name stands relative to the zone.
pub(crate) enum Lookup<'z> {
    Found(&'z Node),
    /// Inside the cluster domain and absent.
    NxDomain,
    /// Not ours: forward or refuse.
    Outside,
}

/// The prebuilt answer data for one cluster domain. Immutable; rebuild and swap.
#[derive(Debug)]
pub struct Zone {
    domain: Box<[u8]>,
    ttl: u32,
    serial: u32,
    names: HashMap<Box<[u8]>, Node>,
    /// The complete SOA record (owner = apex) for negative answers (RFC 2308 §3).
    soa: Box<[u8]>,
    /// The RFC 8482 §4.2 answer to ANY: one synthesized HINFO "RFC8482" "".
    any: RrSet,
    warnings: Vec<BuildWarning>,
}

impl Zone {
    /// Builds the zone for `domain` (e.g. `cluster.local`) with record TTL
    /// `ttl` seconds, which is also the SOA minimum, the negative-caching TTL.
    ///
    /// Never fails: data that cannot be named is skipped and listed in
    /// [`Zone::warnings`]; an invalid `domain` falls back to `cluster.local`
    /// with a warning (validate it first with [`Zone::try_build`]).
    pub fn build(data: &DnsData, domain: &str, ttl: u32) -> Zone {
        match Zone::try_build(data, domain, ttl) {
            Ok(zone) => zone,
            Err(error) => {
                let mut zone = Zone::try_build(data, "cluster.local", ttl)
                    .unwrap_or_else(|_| Zone::empty(ttl));
                zone.warnings.push(BuildWarning {
                    object: format!("domain {domain:?} (using cluster.local): {error}"),
                    error: match error {
                        ZoneError::Domain(e) => e,
                        ZoneError::RootDomain => NameError::EmptyLabel {
                            name: domain.to_owned(),
                        },
                    },
                });
                zone
            }
        }
    }

    /// Like [`Zone::build`], but an invalid domain is an error.
    pub fn try_build(data: &DnsData, domain: &str, ttl: u32) -> Result<Zone, ZoneError> {
        let apex = encode_name(domain).map_err(ZoneError::Domain)?;
        if apex == [0] {
            return Err(ZoneError::RootDomain);
        }
        let mut b = Builder::new(apex, ttl);
        b.populate(data);
        Ok(b.finish())
    }

    /// A zone with nothing in it (no apex); every name is outside.
    fn empty(ttl: u32) -> Zone {
        Zone {
            domain: Box::new([0xFF]),
            ttl,
            serial: 0,
            names: HashMap::new(),
            soa: Box::new([]),
            any: any_hinfo(ttl),
            warnings: Vec::new(),
        }
    }

    /// The record TTL in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA serial: a hash of the zone's contents, so it changes when they do.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// How many names (owner names and empty non-terminals) the zone holds.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// What the build skipped, and why.
    pub fn warnings(&self) -> &[BuildWarning] {
        &self.warnings
    }

    /// Looks up a lowercase wire name.
    pub(crate) fn lookup(&self, name: &[u8]) -> Lookup<'_> {
        match self.names.get(name) {
            Some(node) => Lookup::Found(node),
            None if is_subdomain(name, &self.domain) => Lookup::NxDomain,
            None => Lookup::Outside,
        }
    }

    /// The complete SOA record for the authority section.
    pub(crate) fn soa_record(&self) -> &[u8] {
        &self.soa
    }

    /// What an ANY query for a name without a CNAME gets (RFC 8482 §4.2).
    pub(crate) fn any_answer(&self) -> &RrSet {
        &self.any
    }
}

/// The synthesized HINFO of RFC 8482 §4.2: CPU "RFC8482", OS the empty string
/// (to keep the answer small), with the zone's TTL like every other record.
fn any_hinfo(ttl: u32) -> RrSet {
    const CPU: &[u8] = b"RFC8482";
    let mut tail = Vec::with_capacity(10 + 2 + CPU.len());
    tail.extend_from_slice(&u16::from(RecordType::Hinfo).to_be_bytes());
    tail.extend_from_slice(&CLASS_IN.to_be_bytes());
    tail.extend_from_slice(&ttl.to_be_bytes());
    // RDATA: two <character-string>s (RFC 1035 §3.3.2): length-prefixed CPU, empty OS.
    let rdlen = 2 + CPU.len(); // 9
    tail.extend_from_slice(&u16::try_from(rdlen).unwrap_or(0).to_be_bytes());
    tail.push(u8::try_from(CPU.len()).unwrap_or(0));
    tail.extend_from_slice(CPU);
    tail.push(0);
    RrSet {
        rtype: u16::from(RecordType::Hinfo),
        tails: vec![tail.into()],
        ..RrSet::default()
    }
}

/// FNV-1a, 32-bit: a cheap content hash for the SOA serial.
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A name as the last part of a record: `label.rest`.
fn join(label: &str, rest: &[u8]) -> Result<Vec<u8>, NameError> {
    let mut name = encode_name(label)?;
    name.pop(); // the root label; `rest` brings its own
    name.extend_from_slice(rest);
    if name.len() > crate::wire::MAX_NAME_LEN {
        return Err(NameError::NameTooLong {
            name: format!("{label}.{}", crate::wire::name_to_text(rest)),
        });
    }
    Ok(name)
}

fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

fn reverse_name(ip: Ipv4Addr) -> Vec<u8> {
    let [a, b, c, d] = ip.octets();
    // Four decimal labels and two fixed ones are always a valid name.
    encode_name(&format!("{d}.{c}.{b}.{a}.in-addr.arpa")).unwrap_or_default()
}

/// A target to list in a headless SRV RRset.
struct SrvTarget {
    port: u16,
    target: Vec<u8>,
    ip: Ipv4Addr,
}

struct Builder {
    apex: Vec<u8>,
    ttl: u32,
    names: HashMap<Box<[u8]>, Node>,
    hash: u32,
    warnings: Vec<BuildWarning>,
    /// Service-derived PTR targets per IP, then pod-derived fallbacks.
    ptr_primary: BTreeMap<Ipv4Addr, Vec<Vec<u8>>>,
    ptr_pod: BTreeMap<Ipv4Addr, Vec<Vec<u8>>>,
}

impl Builder {
    fn new(apex: Vec<u8>, ttl: u32) -> Builder {
        Builder {
            hash: fnv1a(0x811C_9DC5, &apex),
            apex,
            ttl,
            names: HashMap::new(),
            warnings: Vec::new(),
            ptr_primary: BTreeMap::new(),
            ptr_pod: BTreeMap::new(),
        }
    }

    fn warn(&mut self, object: String, error: NameError) {
        self.warnings.push(BuildWarning { object, error });
    }

    /// Makes `owner` exist, and every ancestor of it inside the zone.
    fn ensure(&mut self, owner: &[u8]) -> &mut Node {
        let mut up = parent(owner);
        while let Some(name) = up {
            if !is_subdomain(name, &self.apex) {
                break;
            }
            if !self.names.contains_key(name) {
                self.names.insert(name.into(), Node::default());
            }
            up = parent(name);
        }
        self.names.entry(owner.into()).or_default()
    }

    /// Adds one record; duplicates (same owner, type and data) are dropped.
    fn add(&mut self, owner: &[u8], rtype: RecordType, rdata: &[u8]) -> Option<&mut RrSet> {
        let rdlen = u16::try_from(rdata.len()).ok()?;
        let ttl = self.ttl;
        let t = u16::from(rtype);
        let mut tail = Vec::with_capacity(10 + rdata.len());
        tail.extend_from_slice(&t.to_be_bytes());
        tail.extend_from_slice(&CLASS_IN.to_be_bytes());
        tail.extend_from_slice(&ttl.to_be_bytes());
        tail.extend_from_slice(&rdlen.to_be_bytes());
        tail.extend_from_slice(rdata);
        self.hash = fnv1a(fnv1a(self.hash, owner), &tail);
        let node = self.ensure(owner);
        let index = match node.rrsets.iter().position(|r| r.rtype == t) {
            Some(i) => i,
            None => {
                node.rrsets.push(RrSet {
                    rtype: t,
                    ..RrSet::default()
                });
                node.rrsets.len() - 1
            }
        };
        let set = node.rrsets.get_mut(index)?;
        if !set.tails.iter().any(|x| **x == *tail) {
            set.tails.push(tail.into());
        }
        Some(set)
    }

    fn add_a(&mut self, owner: &[u8], ip: Ipv4Addr) {
        self.add(owner, RecordType::A, &ip.octets());
    }

    /// The A RRset of `owner` as complete records, for an additional section.
    fn extra_a(&self, owner: &[u8], ips: &[Ipv4Addr]) -> Extra {
        let mut bytes = Vec::new();
        for ip in ips {
            bytes.extend_from_slice(owner);
            bytes.extend_from_slice(&u16::from(RecordType::A).to_be_bytes());
            bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            bytes.extend_from_slice(&self.ttl.to_be_bytes());
            bytes.extend_from_slice(&4u16.to_be_bytes());
            bytes.extend_from_slice(&ip.octets());
        }
        Extra {
            bytes,
            count: u16::try_from(ips.len()).unwrap_or(u16::MAX),
        }
    }

    fn add_srv(&mut self, owner: &[u8], weight: u16, port: u16, target: &[u8], extra: Extra) {
        let mut rdata = Vec::with_capacity(6 + target.len());
        rdata.extend_from_slice(&0u16.to_be_bytes()); // priority
        rdata.extend_from_slice(&weight.to_be_bytes());
        rdata.extend_from_slice(&port.to_be_bytes());
        rdata.extend_from_slice(target); // never compressed (RFC 2782)
        if let Some(set) = self.add(owner, RecordType::Srv, &rdata) {
            if !set.extra.contains(&extra) {
                set.extra.push(extra);
            }
        }
    }

    fn populate(&mut self, data: &DnsData) {
        let apex = self.apex.clone();
        self.ensure(&apex);
        for fixed in ["svc", "pod"] {
            if let Ok(name) = join(fixed, &apex) {
                self.ensure(&name);
            }
        }
        if let Ok(name) = join("dns-version", &apex) {
            let mut txt = vec![u8::try_from(SCHEMA_VERSION.len()).unwrap_or(0)];
            txt.extend_from_slice(SCHEMA_VERSION.as_bytes());
            self.add(&name, RecordType::Txt, &txt);
        }
        if let (Some(revision), Ok(name)) = (data.revision, join("tapestry-revision", &apex)) {
            // A u64 in decimal is at most 20 bytes: one TXT string.
            let text = revision.to_string();
            let mut txt = vec![u8::try_from(text.len()).unwrap_or(0)];
            txt.extend_from_slice(text.as_bytes());
            self.add(&name, RecordType::Txt, &txt);
        }

        for svc in &data.services {
            let object = format!("service {}/{}", svc.namespace, svc.name);
            if let Err(error) = self.add_service(svc, &apex) {
                self.warn(object, error);
            }
        }
        for pod in &data.pods {
            let result = label(&pod.namespace)
                .and_then(|ns| join(&format!("{ns}.pod"), &apex))
                .and_then(|ns_pod| Ok((join(&dashed(pod.ip), &ns_pod)?, ns_pod)));
            match result {
                Ok((name, ns_pod)) => {
                    self.ensure(&ns_pod);
                    self.add_a(&name, pod.ip);
                    self.ptr_pod.entry(pod.ip).or_default().push(name);
                }
                Err(error) => self.warn(format!("pod {}/{}", pod.namespace, pod.name), error),
            }
        }
    }

    fn add_service(
        &mut self,
        svc: &crate::model::ServiceRecord,
        apex: &[u8],
    ) -> Result<(), NameError> {
        let ns = label(&svc.namespace)?;
        let ns_svc = join(&format!("{ns}.svc"), apex)?;
        let ns_pod = join(&format!("{ns}.pod"), apex)?;
        let name = join(label(&svc.name)?, &ns_svc)?;
        self.ensure(&ns_svc);
        self.ensure(&ns_pod);
        match &svc.kind {
            ServiceKind::ClusterIp(ip) => {
                self.add_a(&name, *ip);
                let extra = self.extra_a(&name, &[*ip]);
                for port in &svc.ports {
                    let Some(port_name) = &port.name else {
                        continue;
                    };
                    let owner = srv_owner(port_name, &port.protocol, &name)?;
                    let extra = Extra {
                        bytes: extra.bytes.clone(),
                        count: extra.count,
                    };
                    self.add_srv(&owner, 100, port.port, &name, extra);
                }
                self.ptr_primary.entry(*ip).or_default().push(name);
            }
            ServiceKind::Headless => {
                let mut srv: BTreeMap<Vec<u8>, Vec<SrvTarget>> = BTreeMap::new();
                let mut hosts: BTreeMap<Vec<u8>, Vec<Ipv4Addr>> = BTreeMap::new();
                for ep in &svc.endpoints {
                    let host = match &ep.hostname {
                        Some(h) if !h.is_empty() => label(h)?.to_owned(),
                        _ => dashed(ep.ip),
                    };
                    let target = join(&host, &name)?;
                    self.add_a(&name, ep.ip);
                    self.add_a(&target, ep.ip);
                    let host_ips = hosts.entry(target.clone()).or_default();
                    if !host_ips.contains(&ep.ip) {
                        host_ips.push(ep.ip);
                    }
                    if ep.hostname.as_deref().is_some_and(|h| !h.is_empty()) {
                        self.ptr_primary
                            .entry(ep.ip)
                            .or_default()
                            .push(target.clone());
                    }
                    for port in &ep.ports {
                        let Some(port_name) = &port.name else {
                            continue;
                        };
                        let owner = srv_owner(port_name, &port.protocol, &name)?;
                        srv.entry(owner).or_default().push(SrvTarget {
                            port: port.port,
                            target: target.clone(),
                            ip: ep.ip,
                        });
                    }
                }
                for (owner, targets) in srv {
                    let n = u16::try_from(targets.len()).unwrap_or(u16::MAX).max(1);
                    let weight = (100 / n).max(1);
                    for t in targets {
                        let ips = hosts.get(&t.target).cloned().unwrap_or_else(|| vec![t.ip]);
                        let extra = self.extra_a(&t.target, &ips);
                        self.add_srv(&owner, weight, t.port, &t.target, extra);
                    }
                }
            }
            ServiceKind::ExternalName(target) => {
                let wire = encode_name(target)?;
                if let Some(set) = self.add(&name, RecordType::Cname, &wire) {
                    set.target = Some(wire.into());
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Zone {
        let primary = std::mem::take(&mut self.ptr_primary);
        let mut pods = std::mem::take(&mut self.ptr_pod);
        for (ip, targets) in primary {
            pods.remove(&ip);
            let owner = reverse_name(ip);
            for t in targets {
                self.add(&owner, RecordType::Ptr, &t);
            }
        }
        for (ip, targets) in pods {
            let owner = reverse_name(ip);
            for t in targets {
                self.add(&owner, RecordType::Ptr, &t);
            }
        }

        let serial = self.hash;
        let apex = self.apex.clone();
        let mut rdata = Vec::new();
        rdata.extend(join("ns.dns", &apex).unwrap_or_default());
        rdata.extend(join("hostmaster", &apex).unwrap_or_default());
        for v in [serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        let mut soa = apex.clone();
        if let Some(set) = self.add(&apex, RecordType::Soa, &rdata) {
            if let Some(tail) = set.tails.first() {
                soa.extend_from_slice(tail);
            }
        }
        Zone {
            domain: apex.into(),
            ttl: self.ttl,
            serial,
            names: self.names,
            soa: soa.into(),
            any: any_hinfo(self.ttl),
            warnings: self.warnings,
        }
    }
}

/// A Kubernetes name that must be exactly one DNS label.
fn label(text: &str) -> Result<&str, NameError> {
    if text.is_empty() || text.contains('.') {
        return Err(NameError::NotALabel {
            text: text.to_owned(),
        });
    }
    Ok(text)
}

/// `_<port>._<proto>.<service name>`, the protocol lowercased.
fn srv_owner(port: &str, protocol: &str, service: &[u8]) -> Result<Vec<u8>, NameError> {
    let proto = label(protocol)?.to_ascii_lowercase();
    join(&format!("_{}._{proto}", label(port)?), service)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::model::{EndpointRecord, PodRecord, PortRecord, ServiceRecord};

    fn n(text: &str) -> Vec<u8> {
        encode_name(text).unwrap()
    }

    #[test]
    fn empty_non_terminals_and_skips() {
        let data = DnsData {
            services: vec![
                ServiceRecord {
                    name: "web".into(),
                    namespace: "Default".into(),
                    kind: ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 20)),
                    ports: vec![],
                    endpoints: vec![],
                },
                ServiceRecord {
                    name: "bad..name".into(),
                    namespace: "default".into(),
                    kind: ServiceKind::Headless,
                    ports: vec![],
                    endpoints: vec![EndpointRecord {
                        ip: Ipv4Addr::new(10, 244, 0, 9),
                        hostname: None,
                        ports: vec![PortRecord {
                            name: None,
                            protocol: "TCP".into(),
                            port: 1,
                        }],
                    }],
                },
            ],
            pods: vec![PodRecord {
                name: "p".into(),
                namespace: "other".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
            }],
            revision: None,
        };
        let zone = Zone::build(&data, "Cluster.Local.", 5);
        for name in [
            "cluster.local",
            "svc.cluster.local",
            "pod.cluster.local",
            "default.svc.cluster.local",
            "default.pod.cluster.local",
            "other.pod.cluster.local",
            "web.default.svc.cluster.local",
            "10-244-1-2.other.pod.cluster.local",
            "20.0.96.10.in-addr.arpa",
            "2.1.244.10.in-addr.arpa",
        ] {
            assert!(matches!(zone.lookup(&n(name)), Lookup::Found(_)), "{name}");
        }
        assert!(matches!(
            zone.lookup(&n("nope.svc.cluster.local")),
            Lookup::NxDomain
        ));
        assert!(matches!(
            zone.lookup(&n("0.96.10.in-addr.arpa")),
            Lookup::Outside
        ));
        assert!(matches!(zone.lookup(&n("example.com")), Lookup::Outside));
        assert_eq!(zone.warnings().len(), 1);
        assert!(zone.warnings()[0].object.contains("bad..name"));
    }

    #[test]
    fn serial_follows_content() {
        let mut data = DnsData::default();
        let a = Zone::build(&data, "cluster.local", 5).serial();
        assert_eq!(a, Zone::build(&data, "cluster.local", 5).serial());
        data.pods.push(PodRecord {
            name: "p".into(),
            namespace: "default".into(),
            ip: Ipv4Addr::new(10, 244, 0, 5),
        });
        assert_ne!(a, Zone::build(&data, "cluster.local", 5).serial());
        assert!(Zone::try_build(&data, ".", 5).is_err());
        assert!(Zone::try_build(&data, "a..b", 5).is_err());
        assert_eq!(Zone::build(&data, "a..b", 5).warnings().len(), 1);
    }
}
