//! Addresses and interface configuration.
//!
//! Address plan of a node subnet (a `/24` by default, e.g. `10.244.1.0/24`):
//! `.1` is the gateway router inside the data plane, the last usable address
//! (`.254`) is the node's host port `cbr0`, and pods get the rest. MAC addresses
//! are derived from IPv4 addresses as `0a:58:a:b:c:d` (locally administered,
//! unicast; the convention OVN-Kubernetes uses), so a MAC in a capture tells
//! which address owns it.
//!
//! Interfaces are configured with iproute2's `ip`, run as a child process: this is
//! the control path (once per pod attach), and `ip` is what a learner reads in the
//! docs anyway. A child spawned from a thread that joined a pod's namespace runs
//! in that namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use tapestry_dataplane::MacAddr;

/// Why an `ip` command failed or its output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    #[error("cannot run `ip {args}`: {source} (is iproute2 installed?)")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("cannot read `ip -j addr` output: {0}")]
    Json(#[source] serde_json::Error),
    #[error("interface {dev} not found")]
    NoInterface { dev: String },
}

/// `0a:58:` followed by the four address bytes.
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x0a, 0x58, a, b, c, d])
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: MacAddr) -> String {
    let m = mac.0;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Runs `ip ARGS…` in the calling thread's network namespace.
pub fn ip(args: &[&str]) -> Result<String, NetconfError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetconfError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetconfError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Brings `dev` up with `mac`, `mtu`, the address `addr/prefix`, and optionally a
/// default route via `gateway`. Idempotent (`replace`).
pub fn configure_interface(
    dev: &str,
    mac: MacAddr,
    mtu: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetconfError> {
    let mac = mac_string(mac);
    let mtu = mtu.to_string();
    ip(&["link", "set", "dev", dev, "address", &mac, "mtu", &mtu])?;
    ip(&["link", "set", "dev", dev, "up"])?;
    ip(&[
        "addr",
        "replace",
        &format!("{addr}/{prefix_len}"),
        "dev",
        dev,
    ])?;
    if let Some(gw) = gateway {
        ip(&[
            "route",
            "replace",
            "default",
            "via",
            &gw.to_string(),
            "dev",
            dev,
        ])?;
    }
    Ok(())
}

/// What `ip` reports of `dev`: (MAC, MTU, IPv4 addresses with prefix, up?).
pub fn inspect_interface(dev: &str) -> Result<(String, u32, Vec<String>, bool), NetconfError> {
    let out = ip(&["-j", "addr", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(NetconfError::Json)?;
    let link = v.get(0).ok_or_else(|| NetconfError::NoInterface {
        dev: dev.to_owned(),
    })?;
    let mac = link
        .get("address")
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_owned();
    let mtu = link
        .get("mtu")
        .and_then(|m| m.as_u64())
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let up = link
        .get("flags")
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
    let addrs = link
        .get("addr_info")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter(|i| i.get("family").and_then(|f| f.as_str()) == Some("inet"))
                .filter_map(|i| {
                    Some(format!(
                        "{}/{}",
                        i.get("local")?.as_str()?,
                        i.get("prefixlen")?.as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((mac, mtu, addrs, up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_derived_from_ip() {
        assert_eq!(
            mac_string(mac_for(Ipv4Addr::new(10, 244, 1, 2))),
            "0a:58:0a:f4:01:02"
        );
    }
}
