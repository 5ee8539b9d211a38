//! `tapestry-cni`: the CNI plugin (Container Network Interface specification,
//! 1.0.0) for real container runtimes. It does no networking itself: it turns
//! the runtime's call — `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS` in the environment, the network configuration on
//! standard input — into an ADD / DEL / CHECK request on the node agent's
//! control socket, and prints the agent's answer as a CNI result (or a CNI
//! error, with a non-zero exit status).
//!
//! Network configuration (e.g. `/etc/cni/net.d/10-tapestry.conf`):
//! ```json
//! {"cniVersion": "1.0.0", "name": "tapestry", "type": "tapestry-cni",
//!  "socket": "/run/tapestry/tapestry/nodes/node1/tapestryd.sock"}
//! ```
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::json;
use tapestry_proto::{Attachment, Request};

const VERSION: &str = "1.0.0";
const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec, "Error"): 4 invalid configuration, 7 invalid network
/// config, 11 try again later, 100+ plugin-specific.
const ERR_ENV: u32 = 4;
const ERR_CONFIG: u32 = 7;
const ERR_AGENT: u32 = 11;
const ERR_FAILED: u32 = 100;

#[derive(Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    socket: Option<PathBuf>,
}

fn fail(code: u32, msg: &str, details: &str) -> ExitCode {
    println!(
        "{}",
        json!({ "cniVersion": VERSION, "code": code, "msg": msg, "details": details })
    );
    ExitCode::FAILURE
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// `K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;…` from `CNI_ARGS`.
fn cni_arg(args: &str, key: &str) -> Option<String> {
    args.split(';').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    })
}

fn main() -> ExitCode {
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        println!(
            "{}",
            json!({ "cniVersion": VERSION, "supportedVersions": SUPPORTED })
        );
        return ExitCode::SUCCESS;
    }
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        return fail(
            ERR_CONFIG,
            "cannot read the network configuration from stdin",
            &e.to_string(),
        );
    }
    let conf: NetConf = match serde_json::from_str(&stdin) {
        Ok(c) => c,
        Err(e) => return fail(ERR_CONFIG, "invalid network configuration", &e.to_string()),
    };
    let Some(socket) = conf
        .socket
        .or_else(|| std::env::var_os("TAPESTRY_SOCKET").map(PathBuf::from))
    else {
        return fail(
            ERR_CONFIG,
            "no agent socket",
            "set \"socket\" in the network configuration (or TAPESTRY_SOCKET)",
        );
    };
    let container_id = env("CNI_CONTAINERID");
    if container_id.is_empty() && command != "DEL" {
        return fail(ERR_ENV, "CNI_CONTAINERID is not set", "");
    }
    let args = env("CNI_ARGS");
    let attachment = Attachment {
        container_id,
        netns: PathBuf::from(env("CNI_NETNS")),
        ifname: Some(env("CNI_IFNAME"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "eth0".into()),
        pod_namespace: cni_arg(&args, "K8S_POD_NAMESPACE").unwrap_or_else(|| "default".into()),
        pod_name: cni_arg(&args, "K8S_POD_NAME").unwrap_or_default(),
    };
    let request = match command.as_str() {
        "ADD" => Request::Add(attachment),
        "DEL" => Request::Del(attachment),
        "CHECK" => Request::Check(attachment),
        other => return fail(ERR_ENV, "unknown CNI_COMMAND", other),
    };
    let reply = match tapestry_proto::call(&socket, &request) {
        Ok(r) => r,
        // DEL must succeed when there is nothing left to delete, agent gone included.
        Err(_) if command == "DEL" => return ExitCode::SUCCESS,
        Err(e) => return fail(ERR_AGENT, "cannot reach tapestryd", &e.to_string()),
    };
    if !reply.ok {
        return fail(
            ERR_FAILED,
            &format!("{command} failed"),
            &reply.error.unwrap_or_default(),
        );
    }
    if let Some(mut result) = reply.result {
        if !conf.cni_version.is_empty() {
            result.cni_version = conf.cni_version;
        }
        match serde_json::to_string(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(ERR_FAILED, "cannot encode the result", &e.to_string()),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_name_and_namespace_come_from_cni_args() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_INFRA_CONTAINER_ID=abc";
        assert_eq!(cni_arg(args, "K8S_POD_NAMESPACE").as_deref(), Some("shop"));
        assert_eq!(cni_arg(args, "K8S_POD_NAME").as_deref(), Some("cart-1"));
        assert_eq!(cni_arg(args, "MISSING"), None);
        assert_eq!(cni_arg("", "K8S_POD_NAME"), None);
    }
}
