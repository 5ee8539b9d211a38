//! Codecs over whole packets, below the stages: VXLAN encapsulation with software
//! TSO and fragmentation (`vxlan.rs`), NAT rewrites with incremental checksums
//! (`nat.rs`), and software GRO (`gro.rs`). Pure functions of bytes.

pub mod gro;
pub mod nat;
pub mod vxlan;
