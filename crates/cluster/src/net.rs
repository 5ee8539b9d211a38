//! Address types the cluster objects carry: IPv4 CIDR blocks and MAC addresses,
//! defined once in `tapestry-net` (shared with the data plane) and serialized as the
//! strings Kubernetes and `ip` print.

pub use tapestry_net::{AddrParseError, Ipv4Cidr, MacAddr};
