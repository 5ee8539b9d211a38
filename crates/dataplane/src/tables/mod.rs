//! The tables the stages read and write: ports, the MAC table, routes, the service
//! table with its Maglev lookups, connection tracking, fragment translations and the
//! compiled NetworkPolicy table with the policy stage's flow table.
//! Read-mostly ones (routes, services, policies) are immutable snapshots swapped whole.

pub mod conntrack;
pub mod flow;
pub mod flow_file;
pub mod fragments;
pub mod mac_table;
pub mod maglev;
pub mod policy;
pub(crate) mod policy_flows;
pub mod ports;
pub mod routes;
pub mod service_table;
