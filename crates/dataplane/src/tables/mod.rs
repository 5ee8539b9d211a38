//! The tables the stages read and write: ports, the MAC table, routes, the service
//! table with its Maglev lookups, connection tracking and fragment translations.
//! Read-mostly ones (routes, services) are immutable snapshots swapped whole.

pub mod conntrack;
pub mod fragments;
pub mod mac_table;
pub mod maglev;
pub mod ports;
pub mod routes;
pub mod service_table;
