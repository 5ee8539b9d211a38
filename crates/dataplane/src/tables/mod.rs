//! The tables the stages read and write: ports, the MAC table, routes, the service
//! table with its Maglev lookups, connection tracking, fragment translations and the
//! compiled NetworkPolicy table.
//! Read-mostly ones (routes, services, policies) are immutable snapshots swapped whole.

pub mod conntrack;
pub mod fragments;
pub mod mac_table;
pub mod maglev;
pub mod policy;
pub mod ports;
pub mod routes;
pub mod service_table;
