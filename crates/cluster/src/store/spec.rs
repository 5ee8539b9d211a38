//! [`StoreSpec`]: one way to name a store, for every binary's `--store` and
//! for `TAPESTRY_STORE`: a directory path (the directory store) or
//! `etcd://HOST:PORT[,HOST:PORT…]` (the etcd store, one endpoint per
//! member). The string round-trips through `Display`, so a process hands the
//! spec it was given to its children unchanged.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DirStore, Store, StoreError};

/// The scheme that selects the etcd store.
const ETCD_SCHEME: &str = "etcd://";

/// Where the cluster store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A [`DirStore`] directory.
    Dir(PathBuf),
    /// An etcd cluster: `HOST:PORT` of each member.
    Etcd { endpoints: Vec<String> },
}

impl StoreSpec {
    /// Parses a spec; anything not `SCHEME://…` is a directory path.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Self::parse_os(OsStr::new(s))
    }

    /// Parses a spec that may be a non-UTF-8 path (from the environment).
    pub fn parse_os(s: &OsStr) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Spec {
            spec: s.to_string_lossy().into_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty; give a directory or etcd://HOST:PORT".into()));
        }
        let Some(text) = s.to_str() else {
            return Ok(StoreSpec::Dir(PathBuf::from(s)));
        };
        if let Some(list) = text.strip_prefix(ETCD_SCHEME) {
            let endpoints = list
                .split(',')
                .map(|e| check_endpoint(e).map(str::to_string).map_err(&bad))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(StoreSpec::Etcd { endpoints });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(bad(format!(
                "unknown scheme `{scheme}://`; give a directory or etcd://HOST:PORT[,HOST:PORT...]"
            )));
        }
        Ok(StoreSpec::Dir(PathBuf::from(s)))
    }

    /// The directory of a directory store.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            StoreSpec::Dir(p) => Some(p),
            StoreSpec::Etcd { .. } => None,
        }
    }

    /// Opens the store. A directory store creates its directory if needed;
    /// an etcd store connects lazily (see `EtcdStore::connect`).
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreSpec::Dir(dir) => Ok(Arc::new(DirStore::open(dir)?)),
            StoreSpec::Etcd { endpoints } => open_etcd(self, endpoints),
        }
    }
}

#[cfg(feature = "etcd")]
fn open_etcd(_spec: &StoreSpec, endpoints: &[String]) -> Result<Arc<dyn Store>, StoreError> {
    let opts = super::EtcdStoreOptions::new(endpoints.to_vec());
    Ok(Arc::new(super::EtcdStore::connect(opts)?))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(spec: &StoreSpec, _endpoints: &[String]) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Spec {
        spec: spec.to_string(),
        reason: "this binary was built without etcd support (tapestry-cluster's `etcd` feature)"
            .into(),
    })
}

/// `HOST:PORT` with a non-empty host (a name, an IPv4 address or a
/// bracketed IPv6 address) and a port from 1 to 65535.
fn check_endpoint(e: &str) -> Result<&str, String> {
    let Some((host, port)) = e.rsplit_once(':') else {
        return Err(format!("etcd endpoint `{e}` is not HOST:PORT"));
    };
    let host_ok = !host.is_empty()
        && if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        };
    if !host_ok {
        return Err(format!("etcd endpoint `{e}`: bad host `{host}`"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(e),
        _ => Err(format!("etcd endpoint `{e}`: bad port `{port}`")),
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Dir(p) => write!(f, "{}", p.display()),
            StoreSpec::Etcd { endpoints } => write!(f, "{ETCD_SCHEME}{}", endpoints.join(",")),
        }
    }
}

impl std::str::FromStr for StoreSpec {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn directories_and_etcd_endpoints_parse_and_round_trip() {
        for (text, want) in [
            (
                "/run/tapestry/store",
                StoreSpec::Dir("/run/tapestry/store".into()),
            ),
            ("relative/dir", StoreSpec::Dir("relative/dir".into())),
            (
                "etcd://127.0.0.1:2379",
                StoreSpec::Etcd {
                    endpoints: vec!["127.0.0.1:2379".into()],
                },
            ),
            (
                "etcd://10.0.0.1:2379,etcd-2.lab:2379,[::1]:2379",
                StoreSpec::Etcd {
                    endpoints: vec![
                        "10.0.0.1:2379".into(),
                        "etcd-2.lab:2379".into(),
                        "[::1]:2379".into(),
                    ],
                },
            ),
        ] {
            let spec = StoreSpec::parse(text).unwrap();
            assert_eq!(spec, want, "{text}");
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.dir().is_some(), text.starts_with(['/', 'r']));
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("etcd://", "not HOST:PORT"),
            ("etcd://127.0.0.1", "not HOST:PORT"),
            ("etcd://127.0.0.1:0", "bad port"),
            ("etcd://127.0.0.1:99999", "bad port"),
            ("etcd://:2379", "bad host"),
            ("etcd://http://h:1", "bad host"),
            ("etcd://a:1,,b:2", "not HOST:PORT"),
            ("etcd://[::1:2379", "bad host"),
            ("http://h:2379", "unknown scheme `http://`"),
        ] {
            let err = StoreSpec::parse(text).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StoreError::Spec { .. }) && msg.contains(says),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn a_directory_spec_opens_a_directory_store() {
        let dir = super::super::conformance::temp_dir("spec");
        let store = StoreSpec::Dir(dir.clone()).open().unwrap();
        let rev = store.put("k", b"v").unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().revision, rev);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
