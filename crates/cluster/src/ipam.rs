//! Address management: which node owns which pod subnet, and which pod owns
//! which address, kept in the shared store so it survives agent restarts.
//!
//! Node subnets (the flannel model): the cluster CIDR (default
//! `10.244.0.0/16`) is split into per-node blocks (default `/24`). A node
//! leases one with compare-and-swap on `leases/<subnet>` (for example
//! `leases/10.244.1.0-24`, value `{"node":"node1","subnet":"10.244.1.0/24"}`),
//! so two agents racing for the same block cannot both get it. A node that
//! already holds a lease gets it back (restarts keep their subnet); a Node
//! object whose `spec.podCIDR` was set by hand claims exactly that block.
//! Block index 0 (`10.244.0.0/24`) is never handed out, so that the first
//! node is `10.244.1.0/24` and node *i* usually gets `10.244.i.0/24`, which
//! makes lab output easy to read.
//!
//! Pod addresses (the CNI `host-local` model): inside a node's block, `.1` is
//! the gateway (the node's router port) and the last usable address (`.254`
//! in a /24) is the node's host port; both are reserved, as are the network
//! and broadcast addresses. Each allocation is a compare-and-swap create of
//! `ips/<node>/<ip>` whose value names the pod, so no address is handed out
//! twice even by racing threads or processes. Allocation is idempotent per
//! pod, and round-robin within one [`PodIpam`] (it continues after the last
//! address it gave out) so a just-released address is not immediately
//! reused while stale ARP or bridge entries may still point at the old pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::manifest::Object;
use crate::net::Ipv4Cidr;
use crate::store::{Store, StoreError};

/// The default cluster pod CIDR.
pub const DEFAULT_CLUSTER_CIDR: Ipv4Cidr =
    match Ipv4Cidr::new_const(Ipv4Addr::new(10, 244, 0, 0), 16) {
        Some(c) => c,
        None => panic!("valid constant"),
    };

/// The default per-node prefix length.
pub const DEFAULT_NODE_PREFIX: u8 = 24;

/// Why an address could not be leased or allocated.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The store failed.
    #[error(transparent)]
    Store {
        #[from]
        source: StoreError,
    },
    /// The node prefix does not split the cluster CIDR into usable blocks.
    #[error(
        "node prefix /{node_prefix} cannot split cluster CIDR {cluster}: it must be from /{} to /30",
        cluster.prefix_len()
    )]
    BadNodePrefix { cluster: Ipv4Cidr, node_prefix: u8 },
    /// Every node block is leased.
    #[error(
        "no free /{node_prefix} left in cluster CIDR {cluster}: all {available} are leased; \
         delete unused nodes' leases or use a larger cluster CIDR"
    )]
    SubnetsExhausted {
        cluster: Ipv4Cidr,
        node_prefix: u8,
        available: u64,
    },
    /// The node's object asks for a pod CIDR another node holds.
    #[error("node {node} asks for podCIDR {subnet}, but node {holder} holds it")]
    PodCidrTaken {
        node: String,
        subnet: Ipv4Cidr,
        holder: String,
    },
    /// The node's object asks for a pod CIDR outside the cluster CIDR.
    #[error("node {node} asks for podCIDR {subnet}, which is not a /{node_prefix} inside cluster CIDR {cluster}")]
    PodCidrOutsideCluster {
        node: String,
        subnet: Ipv4Cidr,
        cluster: Ipv4Cidr,
        node_prefix: u8,
    },
    /// Every assignable address of the node's block is in use.
    #[error(
        "no free pod IP on node {node}: all {in_use} assignable addresses of {subnet} are in use"
    )]
    PodIpsExhausted {
        node: String,
        subnet: Ipv4Cidr,
        in_use: usize,
    },
}

/// The value stored under `leases/<subnet>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    pub node: String,
    pub subnet: Ipv4Cidr,
}

/// The value stored under `ips/<node>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAllocation {
    /// The pod's store key, e.g. `pods/default/web-a`.
    pub pod: String,
}

/// Store key of a subnet lease: `leases/10.244.1.0-24`.
pub fn lease_key(subnet: &Ipv4Cidr) -> String {
    format!("leases/{}-{}", subnet.network(), subnet.prefix_len())
}

/// Store key prefix of a node's pod IPs: `ips/node1/`.
pub fn ip_prefix(node: &str) -> String {
    format!("ips/{node}/")
}

/// Store key of one pod IP: `ips/node1/10.244.1.5`.
pub fn ip_key(node: &str, ip: Ipv4Addr) -> String {
    format!("ips/{node}/{ip}")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// All current subnet leases, keyed by subnet. Unreadable lease values are
/// reported with an empty node name (still counted as taken).
pub fn list_leases(store: &dyn Store) -> Result<BTreeMap<Ipv4Cidr, (String, u64)>, IpamError> {
    let (entries, _) = store.list("leases/")?;
    let mut out = BTreeMap::new();
    for e in entries {
        let lease = serde_json::from_slice::<SubnetLease>(&e.value).ok();
        let subnet = lease.as_ref().map(|l| l.subnet).or_else(|| {
            let rest = e.key.strip_prefix("leases/")?;
            let (addr, len) = rest.rsplit_once('-')?;
            Ipv4Cidr::parse(&format!("{addr}/{len}")).ok()
        });
        if let Some(subnet) = subnet {
            out.insert(
                subnet,
                (lease.map(|l| l.node).unwrap_or_default(), e.revision),
            );
        }
    }
    Ok(out)
}

/// The node's pod subnet: its existing lease, the block its Node object's
/// `spec.podCIDR` names, or the lowest free block (index 0 skipped).
pub fn lease_node_subnet(
    store: &dyn Store,
    node_name: &str,
    cluster_cidr: Ipv4Cidr,
    node_prefix: u8,
) -> Result<Ipv4Cidr, IpamError> {
    let count = cluster_cidr
        .subnet_count(node_prefix)
        .filter(|_| node_prefix <= 30)
        .ok_or(IpamError::BadNodePrefix {
            cluster: cluster_cidr,
            node_prefix,
        })?;
    let fits = |s: &Ipv4Cidr| s.prefix_len() == node_prefix && cluster_cidr.contains_net(s);
    let leases = list_leases(store)?;
    if let Some(subnet) = leases
        .iter()
        .find(|(s, (n, _))| n == node_name && fits(s))
        .map(|(s, _)| *s)
    {
        return Ok(subnet);
    }
    let lease = |subnet: Ipv4Cidr| SubnetLease {
        node: node_name.to_string(),
        subnet,
    };
    // A pod CIDR written into the Node object by hand is claimed as is.
    let wanted = store.get(&format!("nodes/{node_name}"))?.and_then(|e| {
        match Object::from_json(&e.value, &e.key) {
            Ok(Object::Node(n)) => n.spec.pod_cidr,
            _ => None,
        }
    });
    if let Some(subnet) = wanted {
        if !fits(&subnet) {
            return Err(IpamError::PodCidrOutsideCluster {
                node: node_name.into(),
                subnet,
                cluster: cluster_cidr,
                node_prefix,
            });
        }
        return match store.compare_and_swap(&lease_key(&subnet), 0, &encode(&lease(subnet))) {
            Ok(_) => Ok(subnet),
            Err(StoreError::Conflict { .. }) => {
                let holder = list_leases(store)?
                    .remove(&subnet)
                    .map(|(n, _)| n)
                    .unwrap_or_default();
                if holder == node_name {
                    Ok(subnet)
                } else {
                    Err(IpamError::PodCidrTaken {
                        node: node_name.into(),
                        subnet,
                        holder,
                    })
                }
            }
            Err(e) => Err(e.into()),
        };
    }
    for index in 1..count {
        let Some(subnet) = cluster_cidr.subnet(node_prefix, index) else {
            break;
        };
        if leases.contains_key(&subnet) {
            continue;
        }
        match store.compare_and_swap(&lease_key(&subnet), 0, &encode(&lease(subnet))) {
            Ok(_) => return Ok(subnet),
            // Another agent took it between our list and our write.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(IpamError::SubnetsExhausted {
        cluster: cluster_cidr,
        node_prefix,
        available: count.saturating_sub(1),
    })
}

/// Releases every subnet lease `node_name` holds (node removed from the
/// cluster). Returns the released subnets.
pub fn release_node_subnet(store: &dyn Store, node_name: &str) -> Result<Vec<Ipv4Cidr>, IpamError> {
    let mut released = Vec::new();
    for (subnet, (node, rev)) in list_leases(store)? {
        if node == node_name {
            match store.compare_and_delete(&lease_key(&subnet), rev) {
                Ok(_) => released.push(subnet),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(released)
}

/// Pod address allocator for one node's subnet, backed by the store.
pub struct PodIpam {
    store: Arc<dyn Store>,
    node: String,
    subnet: Ipv4Cidr,
    reserved: BTreeSet<Ipv4Addr>,
    /// Offset of the last address this allocator handed out (round-robin).
    cursor: AtomicU64,
}

impl PodIpam {
    /// The gateway (router port) address of a node subnet: the first host.
    pub fn gateway(subnet: &Ipv4Cidr) -> Option<Ipv4Addr> {
        subnet.nth(1)
    }

    /// The node host port's address: the last usable host (`.254` in a /24).
    pub fn host_port_ip(subnet: &Ipv4Cidr) -> Option<Ipv4Addr> {
        subnet.size().checked_sub(2).and_then(|n| subnet.nth(n))
    }

    /// An allocator reserving the gateway and the host port address.
    pub fn new(store: Arc<dyn Store>, node: &str, subnet: Ipv4Cidr) -> Self {
        let reserved = [Self::gateway(&subnet), Self::host_port_ip(&subnet)]
            .into_iter()
            .flatten();
        Self::with_reserved(store, node, subnet, reserved)
    }

    /// An allocator that never hands out `reserved` (nor the network and
    /// broadcast addresses).
    pub fn with_reserved(
        store: Arc<dyn Store>,
        node: &str,
        subnet: Ipv4Cidr,
        reserved: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        Self {
            store,
            node: node.to_string(),
            subnet,
            reserved: reserved.into_iter().collect(),
            cursor: AtomicU64::new(0),
        }
    }

    /// The subnet addresses come from.
    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    /// Addresses that may be handed out, in order.
    fn assignable_offsets(&self) -> impl Iterator<Item = (u64, Ipv4Addr)> + '_ {
        let (first, end) = if self.subnet.prefix_len() >= 31 {
            (0, self.subnet.size())
        } else {
            (1, self.subnet.size() - 1)
        };
        (first..end)
            .filter_map(|o| self.subnet.nth(o).map(|ip| (o, ip)))
            .filter(|(_, ip)| !self.reserved.contains(ip))
    }

    /// Current allocations of this node: address → (pod key, revision).
    /// Unreadable values count as allocated to an unknown pod.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, (String, u64)>, IpamError> {
        let prefix = ip_prefix(&self.node);
        let (entries, _) = self.store.list(&prefix)?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.key.strip_prefix(&prefix)?.parse().ok()?;
                let pod = serde_json::from_slice::<IpAllocation>(&e.value)
                    .map(|a| a.pod)
                    .unwrap_or_default();
                Some((ip, (pod, e.revision)))
            })
            .collect())
    }

    /// The address allocated to `pod_key`, if any.
    pub fn lookup(&self, pod_key: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, (pod, _))| pod == pod_key)
            .map(|(ip, _)| ip))
    }

    /// An address for `pod_key`: its existing one, else a free one claimed
    /// with compare-and-swap. Concurrent calls for *different* pods never
    /// get the same address; callers serialize calls for the same pod.
    pub fn allocate(&self, pod_key: &str) -> Result<Ipv4Addr, IpamError> {
        let taken = self.allocations()?;
        if let Some((ip, _)) = taken.iter().find(|(_, (pod, _))| pod == pod_key) {
            return Ok(*ip);
        }
        let value = encode(&IpAllocation {
            pod: pod_key.into(),
        });
        let start = self.cursor.load(Ordering::Relaxed);
        let candidates: Vec<_> = self
            .assignable_offsets()
            .filter(|(_, ip)| !taken.contains_key(ip))
            .collect();
        // Round-robin: first the addresses after the cursor, then the rest.
        let (after, before): (Vec<_>, Vec<_>) =
            candidates.into_iter().partition(|(o, _)| *o > start);
        for (offset, ip) in after.into_iter().chain(before) {
            match self
                .store
                .compare_and_swap(&ip_key(&self.node, ip), 0, &value)
            {
                Ok(_) => {
                    self.cursor.store(offset, Ordering::Relaxed);
                    return Ok(ip);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::PodIpsExhausted {
            node: self.node.clone(),
            subnet: self.subnet,
            in_use: self.allocations()?.len(),
        })
    }

    /// Makes sure `ip`, which `pod_key` already uses (a pod reattached
    /// after a restart), is recorded as that pod's: creates the allocation
    /// if it is missing (released meanwhile, as deleting the node does).
    /// `Ok(false)` if the address cannot be the pod's: outside this subnet,
    /// reserved, or held by another pod.
    pub fn claim(&self, pod_key: &str, ip: Ipv4Addr) -> Result<bool, IpamError> {
        if !self.assignable_offsets().any(|(_, a)| a == ip) {
            return Ok(false);
        }
        let value = encode(&IpAllocation {
            pod: pod_key.into(),
        });
        match self
            .store
            .compare_and_swap(&ip_key(&self.node, ip), 0, &value)
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(self
                .allocations()?
                .get(&ip)
                .is_some_and(|(p, _)| p == pod_key)),
            Err(e) => Err(e.into()),
        }
    }

    /// Frees every address held by `pod_key`; returns them.
    pub fn release(&self, pod_key: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut released = Vec::new();
        for (ip, (pod, rev)) in self.allocations()? {
            if pod == pod_key {
                match self.store.compare_and_delete(&ip_key(&self.node, ip), rev) {
                    Ok(_) => released.push(ip),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
