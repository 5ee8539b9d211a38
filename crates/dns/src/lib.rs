//! Tapestry's cluster DNS, the CoreDNS of a Tapestry cluster: pods find
//! Services and each other by name through it (essential 5 of the design).
//!
//! It answers the Kubernetes DNS-Based Service Discovery specification,
//! version 1.1.0 (kubernetes/dns, `docs/specification.md`) from a
//! [`DnsData`] snapshot of the cluster: A, SRV and PTR for ClusterIP
//! services, per-endpoint records for headless ones, CNAME for ExternalName,
//! pod A records for pods that exist, and `dns-version` TXT. Names outside the
//! cluster domain go to an upstream if one is configured, and are refused
//! otherwise. ANY is answered minimally (RFC 8482).
//!
//! Shape: the core does no I/O. [`Zone::build`] turns a snapshot into prebuilt
//! wire-format records in hash maps; [`answer`] turns query bytes into answer
//! bytes against a zone (the upstream call is its only side effect);
//! [`Server`] owns the sockets and threads and reads the zone from an
//! `ArcSwap`, so a new snapshot replaces the old one without stopping service.
//!
//! - [`model`]: the input snapshot (serde, so a JSON file can supply it).
//! - [`zone`]: which names exist and what records they hold.
//! - [`answer`]: RCODEs, NODATA/NXDOMAIN, CNAME chasing, truncation, EDNS.
//! - [`wire`]: the DNS message format, read through checked views.
//! - [`server`]: UDP and TCP (RFC 1035 §4.2, RFC 7766), forwarding on a
//!   bounded pool, and the deadlines that keep slow clients from holding it.
#![forbid(unsafe_code)]

pub mod answer;
pub mod cluster;
pub mod model;
pub mod server;
pub mod wire;
pub mod zone;

pub use answer::{
    answer, answer_into, respond, DropReason, Forwarding, Outcome, Transport, Upstream,
};
pub use model::{
    DataError, DnsData, EndpointRecord, PodRecord, PortRecord, ServiceKind, ServiceRecord,
};
pub use server::{Counters, Server, ServerConfig, UdpUpstream};
pub use wire::{QueryError, Rcode, RecordType};
pub use zone::{BuildWarning, Zone, ZoneError};

#[cfg(test)]
mod answer_tests;
