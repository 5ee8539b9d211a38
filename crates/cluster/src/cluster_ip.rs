//! Service virtual IPs: which service owns which address of the service
//! CIDR, kept in the shared store so that no two services ever share one.
//!
//! Each allocation is a compare-and-swap create of `clusterips/<ip>` (for
//! example `clusterips/10.96.0.10`) whose value names the service
//! (`{"service":"kube-system/kube-dns"}`), the way the API server's
//! allocator keeps one bitmap entry per address: two services, or two
//! processes applying the same manifest, racing for an address cannot both
//! win. Allocation is idempotent per service (it returns the address the
//! service already holds), also when two callers allocate for the *same*
//! service at once: the allocation written first (lowest store revision)
//! wins and the later one is given back.
//!
//! Addresses, following Kubernetes' `ipallocator` and KEP-3070:
//!
//! - The network and broadcast addresses are never handed out, not even on
//!   request.
//! - The first host (`10.96.0.1` in the default CIDR) belongs to the
//!   `default/kubernetes` service, and the tenth (`10.96.0.10`) is cluster
//!   DNS's well-known address (kubeadm's convention, what every pod's
//!   `resolv.conf` names). Both are handed out on explicit request only.
//! - Automatic allocation prefers the CIDR's upper band, above the first
//!   `min(max(16, size/16), 256)` addresses, and falls back to the lower band
//!   only when the upper one is full, so addresses that manifests ask for by
//!   number (which by convention come from the low band) are rarely already
//!   taken. Within a band the lowest free address is chosen, which keeps lab
//!   output predictable (the first automatic address of `10.96.0.0/12` is
//!   `10.96.1.0`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::net::Ipv4Cidr;
use crate::store::{Revision, Store, StoreError};

/// The default service CIDR, `10.96.0.0/12`.
pub const DEFAULT_SERVICE_CIDR: Ipv4Cidr =
    match Ipv4Cidr::new_const(Ipv4Addr::new(10, 96, 0, 0), 12) {
        Some(c) => c,
        None => panic!("valid constant"),
    };

/// Cluster DNS's well-known address in the default service CIDR.
pub const CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Offset in the service CIDR of the `default/kubernetes` service address.
pub const KUBERNETES_SERVICE_OFFSET: u64 = 1;

/// Offset in the service CIDR of the cluster DNS address.
pub const CLUSTER_DNS_OFFSET: u64 = 10;

/// Store key prefix of cluster IP allocations.
pub const CLUSTER_IP_PREFIX: &str = "clusterips/";

/// Why a cluster IP could not be allocated or released.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store {
        #[from]
        source: StoreError,
    },
    /// The service was not named as `NAMESPACE/NAME` or
    /// `services/NAMESPACE/NAME`.
    #[error("`{key}` does not name a service: expected NAMESPACE/NAME or services/NAMESPACE/NAME")]
    BadServiceKey { key: String },
    /// The requested address is not inside the service CIDR.
    #[error(
        "service {service}: spec.clusterIP {ip} is not inside the service CIDR {cidr}; \
         choose an address in it or leave clusterIP empty"
    )]
    OutsideCidr {
        service: String,
        ip: Ipv4Addr,
        cidr: Ipv4Cidr,
    },
    /// The requested address is the network or broadcast address.
    #[error(
        "service {service}: spec.clusterIP {ip} is the {which} address of the service CIDR \
         {cidr} and cannot be used"
    )]
    Unusable {
        service: String,
        ip: Ipv4Addr,
        cidr: Ipv4Cidr,
        which: &'static str,
    },
    /// The requested address belongs to another service.
    #[error("service {service}: spec.clusterIP {ip} is already allocated to service {holder}")]
    AlreadyAllocated {
        service: String,
        ip: Ipv4Addr,
        holder: String,
    },
    /// The service already holds a different address (clusterIP is
    /// immutable, as in Kubernetes: delete the service to change it).
    #[error(
        "service {service}: spec.clusterIP {requested} cannot replace its allocated {current}; \
         the cluster IP is immutable, delete the service and apply it again"
    )]
    Immutable {
        service: String,
        current: Ipv4Addr,
        requested: Ipv4Addr,
    },
    /// Every automatically assignable address is in use.
    #[error(
        "no free cluster IP for service {service}: all {assignable} assignable addresses of \
         {cidr} are in use"
    )]
    Exhausted {
        service: String,
        cidr: Ipv4Cidr,
        assignable: u64,
    },
}

/// The value stored under `clusterips/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIpAllocation {
    /// `NAMESPACE/NAME` of the owning service.
    pub service: String,
}

/// Store key of one cluster IP: `clusterips/10.96.0.10`.
pub fn cluster_ip_key(ip: Ipv4Addr) -> String {
    format!("{CLUSTER_IP_PREFIX}{ip}")
}

/// `NAMESPACE/NAME` from either that or the store key
/// `services/NAMESPACE/NAME`.
fn service_name(service_key: &str) -> Result<String, ServiceError> {
    let name = service_key.strip_prefix("services/").unwrap_or(service_key);
    match name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok(name.to_string())
        }
        _ => Err(ServiceError::BadServiceKey {
            key: service_key.into(),
        }),
    }
}

/// Every allocation: address → (service `NAMESPACE/NAME`, mod revision).
/// An unreadable value counts as held by an unknown service (empty name),
/// so it is never handed out again.
pub fn list_cluster_ips(
    store: &dyn Store,
) -> Result<BTreeMap<Ipv4Addr, (String, Revision)>, ServiceError> {
    let (entries, _) = store.list(CLUSTER_IP_PREFIX)?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let ip: Ipv4Addr = e.key.strip_prefix(CLUSTER_IP_PREFIX)?.parse().ok()?;
            let service = serde_json::from_slice::<ClusterIpAllocation>(&e.value)
                .map(|a| a.service)
                .unwrap_or_default();
            Some((ip, (service, e.revision)))
        })
        .collect())
}

/// The address `service_key` holds, if any.
pub fn lookup_cluster_ip(
    store: &dyn Store,
    service_key: &str,
) -> Result<Option<Ipv4Addr>, ServiceError> {
    let service = service_name(service_key)?;
    Ok(held_by(&list_cluster_ips(store)?, &service)
        .first()
        .map(|(ip, _)| *ip))
}

/// The service's allocations, oldest (lowest revision) first.
fn held_by(
    all: &BTreeMap<Ipv4Addr, (String, Revision)>,
    service: &str,
) -> Vec<(Ipv4Addr, Revision)> {
    let mut mine: Vec<_> = all
        .iter()
        .filter(|(_, (s, _))| s == service)
        .map(|(ip, (_, rev))| (*ip, *rev))
        .collect();
    mine.sort_by_key(|(ip, rev)| (*rev, *ip));
    mine
}

/// Size of the low band that automatic allocation avoids (KEP-3070).
fn static_band(cidr: &Ipv4Cidr) -> u64 {
    (cidr.size() / 16).clamp(16, 256)
}

/// Offsets of the CIDR that may be used at all: not the network or the
/// broadcast address (every address for /31 and /32).
fn usable_range(cidr: &Ipv4Cidr) -> (u64, u64) {
    if cidr.prefix_len() >= 31 {
        (0, cidr.size())
    } else {
        (1, cidr.size() - 1)
    }
}

/// The service's cluster IP: the one it already holds, else `requested`,
/// else a free one from `service_cidr`, claimed with compare-and-swap.
///
/// `service_key` is `NAMESPACE/NAME` or the store key
/// `services/NAMESPACE/NAME`. Concurrent calls never give one address to two
/// services, and concurrent calls for the same service agree on one address.
pub fn allocate_cluster_ip(
    store: &dyn Store,
    service_key: &str,
    requested: Option<Ipv4Addr>,
    service_cidr: Ipv4Cidr,
) -> Result<Ipv4Addr, ServiceError> {
    let service = service_name(service_key)?;
    let (first, end) = usable_range(&service_cidr);
    if let Some(ip) = requested {
        let Some(offset) = service_cidr.offset_of(ip) else {
            return Err(ServiceError::OutsideCidr {
                service,
                ip,
                cidr: service_cidr,
            });
        };
        if offset < first || offset >= end {
            return Err(ServiceError::Unusable {
                service,
                ip,
                cidr: service_cidr,
                which: if offset == 0 { "network" } else { "broadcast" },
            });
        }
    }
    let taken = list_cluster_ips(store)?;
    if let Some((current, _)) = held_by(&taken, &service).first() {
        return match requested {
            Some(r) if r != *current => Err(ServiceError::Immutable {
                service,
                current: *current,
                requested: r,
            }),
            _ => Ok(*current),
        };
    }
    let value = serde_json::to_vec(&ClusterIpAllocation {
        service: service.clone(),
    })
    .unwrap_or_default();
    if let Some(ip) = requested {
        return match store.compare_and_swap(&cluster_ip_key(ip), 0, &value) {
            Ok(rev) => settle(store, &service, ip, rev),
            Err(StoreError::Conflict { .. }) => {
                let holder = list_cluster_ips(store)?
                    .remove(&ip)
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                if holder == service {
                    Ok(ip)
                } else {
                    Err(ServiceError::AlreadyAllocated {
                        service,
                        ip,
                        holder: if holder.is_empty() {
                            "(unreadable allocation)".into()
                        } else {
                            holder
                        },
                    })
                }
            }
            Err(e) => Err(e.into()),
        };
    }
    let reserved = [KUBERNETES_SERVICE_OFFSET, CLUSTER_DNS_OFFSET];
    let band = static_band(&service_cidr).clamp(first, end);
    let candidates = (band..end)
        .chain(first..band)
        .filter(|o| !reserved.contains(o));
    let mut assignable = 0u64;
    for offset in candidates {
        assignable += 1;
        let Some(ip) = service_cidr.nth(offset) else {
            continue;
        };
        if taken.contains_key(&ip) {
            continue;
        }
        match store.compare_and_swap(&cluster_ip_key(ip), 0, &value) {
            Ok(rev) => return settle(store, &service, ip, rev),
            // Another allocator took it between our list and our write.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Exhausted {
        service,
        cidr: service_cidr,
        assignable,
    })
}

/// After winning `ip` at revision `rev`: if a concurrent call for the same
/// service won another address earlier, give ours back and return theirs.
/// The earliest allocation never gives itself back, so every caller settles
/// on it.
fn settle(
    store: &dyn Store,
    service: &str,
    ip: Ipv4Addr,
    rev: Revision,
) -> Result<Ipv4Addr, ServiceError> {
    let all = list_cluster_ips(store)?;
    match held_by(&all, service).first() {
        Some((oldest, _)) if *oldest != ip => {
            match store.compare_and_delete(&cluster_ip_key(ip), rev) {
                Ok(_) | Err(StoreError::Conflict { .. }) => Ok(*oldest),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(ip),
    }
}

/// Frees every address `service_key` holds (the service was deleted);
/// returns them.
pub fn release_cluster_ip(
    store: &dyn Store,
    service_key: &str,
) -> Result<Vec<Ipv4Addr>, ServiceError> {
    let service = service_name(service_key)?;
    let mut released = Vec::new();
    for (ip, rev) in held_by(&list_cluster_ips(store)?, &service) {
        match store.compare_and_delete(&cluster_ip_key(ip), rev) {
            Ok(_) => released.push(ip),
            // Changed meanwhile: no longer ours to free.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    released.sort();
    Ok(released)
}

#[cfg(test)]
#[path = "cluster_ip_tests.rs"]
mod tests;
