//! The service table: Kubernetes fact 4, pods reach a Service by one stable virtual IP.
//!
//! kube-proxy's job, done in the router stage. The control thread turns Services and
//! their ready EndpointSlice addresses into [`ServiceEntry`]s, builds one immutable
//! [`ServiceTable`] and stores it in [`crate::Pipeline::services`]; the pipeline
//! `load()`s it per packet (no lock). Per `(ClusterIP, port, protocol)` the table holds
//! a [`Maglev`] lookup table over that service's ready backends, sized by
//! [`table_size_for`] (see `tables/maglev.rs` for the sizes and what they cost).
//!
//! A new flow picks its backend by hashing its 5-tuple (client IP and port, ClusterIP
//! and port, protocol) into the Maglev table — or only the client IP for
//! [`Affinity::ClientIp`] (`sessionAffinity: ClientIP`): every connection of one
//! client lands on one backend for as long as the backend set is unchanged. Unlike
//! kube-proxy's `recent`-module affinity this is stateless, so there is no
//! `timeoutSeconds`, and it survives an agent restart. Connection tracking
//! (`tables/conntrack.rs`) then keeps each flow on its backend when the set changes.
//!
//! Backends are sorted and deduplicated when a table is built, so the Maglev table
//! (whose population order breaks ties) does not depend on the order the endpoints
//! came in, and every node computes the same table.
//!
//! Each table carries a [`ServiceTable::generation`] from a process-wide counter: the
//! pipeline compares it per packet to notice a new table and re-validate the flows it
//! tracks (a removed backend's flows are dropped, never used again).

use core::hash::BuildHasherDefault;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::collections::HashMap;

use crate::hash::{backend_hash, client_hash, KeyHasher};
use crate::tables::maglev::{table_size_for, Maglev};
use crate::types::{not_one_host, Backend, L4Proto};

/// `sessionAffinity` of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Each flow is hashed on its 5-tuple.
    None,
    /// Hash on the client IP only, so one client always lands on one backend.
    ClientIp,
}

/// One service port as the control thread computed it. Equality compares every
/// field (the control thread publishes a new table only when its entries differ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// `"ns/name:port"`, for status and errors.
    pub name: String,
    /// The ClusterIP.
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: L4Proto,
    /// Ready backends only; may be empty (clients then get a TCP RST or ICMP port
    /// unreachable). Sorted and deduplicated by [`ServiceTable::build`].
    pub backends: Vec<Backend>,
    pub affinity: Affinity,
}

impl ServiceEntry {
    /// The checks [`ServiceTable::build`] makes of one entry on its own: the
    /// VIP and every backend one unicast host, no port 0. (Whether another
    /// entry claims the same `(vip, port, proto)` is the table's to say.)
    pub fn check(&self) -> Result<(), LbError> {
        if not_one_host(self.vip) {
            return Err(LbError::BadVip {
                name: self.name.clone(),
                vip: self.vip,
            });
        }
        if self.port == 0 {
            return Err(LbError::ZeroPort {
                name: self.name.clone(),
            });
        }
        if let Some(b) = self
            .backends
            .iter()
            .find(|b| b.port == 0 || not_one_host(b.ip))
        {
            return Err(LbError::BadBackend {
                name: self.name.clone(),
                backend: *b,
            });
        }
        Ok(())
    }
}

/// Why a service table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    /// Two entries claim one `(vip, port, proto)`.
    #[error("services {first} and {second} both claim {vip}:{port}/{proto}")]
    Duplicate {
        first: String,
        second: String,
        vip: Ipv4Addr,
        port: u16,
        proto: L4Proto,
    },
    /// The ClusterIP is not one unicast address.
    #[error("service {name}: {vip} is not a unicast address")]
    BadVip { name: String, vip: Ipv4Addr },
    /// Service port 0.
    #[error("service {name}: port 0")]
    ZeroPort { name: String },
    /// A backend with port 0 or an address that is not one unicast host.
    #[error("service {name}: bad backend {backend}")]
    BadBackend { name: String, backend: Backend },
}

type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// `(vip, port, proto)` packed into one word.
fn key(vip: Ipv4Addr, port: u16, proto: L4Proto) -> u64 {
    (u64::from(vip.to_bits()) << 24) | (u64::from(port) << 8) | u64::from(proto.number())
}

/// One service port with its lookup table.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub(crate) entry: ServiceEntry,
    maglev: Maglev,
}

impl Service {
    /// The Maglev choice for a client.
    #[inline]
    pub(crate) fn pick(&self, client: (Ipv4Addr, u16)) -> Option<Backend> {
        let e = &self.entry;
        let h = match e.affinity {
            Affinity::None => backend_hash(client, e.vip, e.port, e.proto),
            Affinity::ClientIp => client_hash(client.0),
        };
        let i = self.maglev.lookup(h)?;
        e.backends.get(i).copied()
    }

    /// `true` if `b` is one of its (sorted) backends.
    #[inline]
    pub(crate) fn has_backend(&self, b: Backend) -> bool {
        self.entry.backends.binary_search(&b).is_ok()
    }
}

/// Next table generation; 0 is never handed out.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// An immutable snapshot of every service port. See the module docs.
#[derive(Clone)]
pub struct ServiceTable {
    services: Vec<Service>,
    by_key: KeyMap<u64, usize>,
    vips: KeyMap<u32, ()>,
    generation: u64,
}

impl core::fmt::Debug for ServiceTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServiceTable")
            .field("services", &self.services.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl ServiceTable {
    /// Builds the table and one Maglev table per entry. Errors: a duplicate
    /// `(vip, port, proto)`, a VIP or backend that is not one unicast host, port 0.
    pub fn build(entries: Vec<ServiceEntry>) -> Result<ServiceTable, LbError> {
        let mut services = Vec::with_capacity(entries.len());
        let mut by_key = KeyMap::default();
        let mut vips = KeyMap::default();
        by_key.reserve(entries.len());
        for mut e in entries {
            e.check()?;
            let k = key(e.vip, e.port, e.proto);
            if let Some(&i) = by_key.get(&k) {
                let first: Option<&Service> = services.get(i);
                return Err(LbError::Duplicate {
                    first: first.map(|s| s.entry.name.clone()).unwrap_or_default(),
                    second: e.name,
                    vip: e.vip,
                    port: e.port,
                    proto: e.proto,
                });
            }
            e.backends.sort_unstable();
            e.backends.dedup();
            let maglev = Maglev::new(&e.backends, table_size_for(e.backends.len()));
            by_key.insert(k, services.len());
            vips.insert(e.vip.to_bits(), ());
            services.push(Service { entry: e, maglev });
        }
        Ok(ServiceTable {
            services,
            by_key,
            vips,
            generation: NEXT_GENERATION.fetch_add(1, Relaxed),
        })
    }

    /// A table without services (with its own generation).
    pub fn empty() -> ServiceTable {
        ServiceTable {
            services: Vec::new(),
            by_key: KeyMap::default(),
            vips: KeyMap::default(),
            generation: NEXT_GENERATION.fetch_add(1, Relaxed),
        }
    }

    /// The table a pipeline starts with, before anything is published: no
    /// services, generation 0. Flows are neither confirmed nor flushed against it
    /// (flows restored at start wait for the first real table).
    pub fn unpublished() -> ServiceTable {
        ServiceTable {
            services: Vec::new(),
            by_key: KeyMap::default(),
            vips: KeyMap::default(),
            generation: 0,
        }
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// `true` without services.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service port at `(vip, port, proto)` (backends sorted).
    pub fn lookup(&self, vip: Ipv4Addr, port: u16, proto: L4Proto) -> Option<&ServiceEntry> {
        self.find(vip, port, proto).map(|s| &s.entry)
    }

    #[inline]
    pub(crate) fn find(&self, vip: Ipv4Addr, port: u16, proto: L4Proto) -> Option<&Service> {
        if self.services.is_empty() {
            return None;
        }
        let i = *self.by_key.get(&key(vip, port, proto))?;
        self.services.get(i)
    }

    /// `true` if any service uses this address.
    #[inline]
    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        !self.vips.is_empty() && self.vips.contains_key(&ip.to_bits())
    }

    /// Unique per table built (process-wide counter).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The backend Maglev picks for a new flow from `client` (for tests and status).
    pub fn pick(
        &self,
        vip: Ipv4Addr,
        port: u16,
        proto: L4Proto,
        client: (Ipv4Addr, u16),
    ) -> Option<Backend> {
        self.find(vip, port, proto)?.pick(client)
    }

    /// Every entry, in build order.
    pub fn entries(&self) -> impl Iterator<Item = &ServiceEntry> + '_ {
        self.services.iter().map(|s| &s.entry)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn be(last: u8, port: u16) -> Backend {
        Backend {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port,
        }
    }

    fn entry(name: &str, port: u16, proto: L4Proto, backends: Vec<Backend>) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            vip: VIP,
            port,
            proto,
            backends,
            affinity: Affinity::None,
        }
    }

    #[test]
    fn build_lookup_and_pick() {
        let t = ServiceTable::build(vec![
            entry(
                "kube-system/kube-dns:53",
                53,
                L4Proto::Udp,
                vec![be(3, 53), be(2, 53)],
            ),
            entry("kube-system/kube-dns:53", 53, L4Proto::Tcp, vec![be(2, 53)]),
            entry("default/empty:80", 80, L4Proto::Tcp, vec![]),
        ])
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert!(t.is_vip(VIP));
        assert!(!t.is_vip(Ipv4Addr::new(10, 96, 0, 11)));
        let dns = t.lookup(VIP, 53, L4Proto::Udp).unwrap();
        assert_eq!(dns.backends, vec![be(2, 53), be(3, 53)], "sorted");
        assert!(t.lookup(VIP, 54, L4Proto::Udp).is_none());
        assert_eq!(
            t.pick(VIP, 53, L4Proto::Tcp, (Ipv4Addr::new(10, 244, 2, 9), 999)),
            Some(be(2, 53))
        );
        assert_eq!(
            t.pick(VIP, 80, L4Proto::Tcp, (Ipv4Addr::new(10, 244, 2, 9), 999)),
            None
        );
        // Both backends get picked over many clients.
        let mut seen = std::collections::BTreeSet::new();
        for port in 1000..1100 {
            seen.insert(t.pick(VIP, 53, L4Proto::Udp, (Ipv4Addr::new(10, 244, 2, 9), port)));
        }
        assert_eq!(seen.len(), 2);
        let other = ServiceTable::empty();
        assert!(other.is_empty());
        assert_ne!(other.generation(), t.generation());
        assert!(!other.is_vip(VIP));
    }

    #[test]
    fn client_ip_affinity_ignores_the_port() {
        let mut e = entry(
            "default/web:80",
            80,
            L4Proto::Tcp,
            (2..12).map(|i| be(i, 80)).collect(),
        );
        e.affinity = Affinity::ClientIp;
        let t = ServiceTable::build(vec![e]).unwrap();
        for c in 1..50u8 {
            let ip = Ipv4Addr::new(10, 244, 3, c);
            let first = t.pick(VIP, 80, L4Proto::Tcp, (ip, 1));
            assert!((2..200).all(|p| t.pick(VIP, 80, L4Proto::Tcp, (ip, p)) == first));
        }
    }

    #[test]
    fn build_errors_name_the_service() {
        let dup = ServiceTable::build(vec![
            entry("a/x:80", 80, L4Proto::Tcp, vec![]),
            entry("b/y:80", 80, L4Proto::Tcp, vec![]),
        ]);
        let err = dup.unwrap_err();
        assert_eq!(
            err.to_string(),
            "services a/x:80 and b/y:80 both claim 10.96.0.10:80/TCP"
        );
        let mut bad = entry("a/x:80", 80, L4Proto::Tcp, vec![]);
        bad.vip = Ipv4Addr::BROADCAST;
        assert!(matches!(
            ServiceTable::build(vec![bad]),
            Err(LbError::BadVip { .. })
        ));
        assert!(matches!(
            ServiceTable::build(vec![entry("a/x:0", 0, L4Proto::Tcp, vec![])]),
            Err(LbError::ZeroPort { .. })
        ));
        let e = ServiceTable::build(vec![entry("a/x:80", 80, L4Proto::Tcp, vec![be(2, 0)])]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "service a/x:80: bad backend 10.244.1.2:0"
        );
    }
}
