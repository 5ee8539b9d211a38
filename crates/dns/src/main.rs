//! `tapestry-dns`: the cluster DNS server process.
//!
//! ```text
//! tapestry-dns --listen 0.0.0.0:53 [--domain cluster.local] [--ttl 5]
//!              [--upstream IP:PORT] (--store DIR|etcd://HOST:PORT,... | --data FILE.json)
//! ```
//!
//! Thin by design: it picks a source of [`DnsData`], builds a [`Zone`] from
//! it, and serves that zone, swapping in a rebuilt zone when the data changes.
//! Two sources:
//! - the cluster store (`--store DIR` or `--store etcd://HOST:PORT,...`, or
//!   `TAPESTRY_STORE`, which the kubelet sets for every container to the
//!   agent's own `--store`): watched through `ClusterCache`, so a Service,
//!   Pod or readiness change is in DNS a few milliseconds later;
//! - a JSON file (`--data`), checked every 200 ms by modification time and
//!   size; a file that fails to parse keeps the previous zone.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use clap::Parser;
use tapestry_cluster::{ClusterCache, StoreError, StoreSpec};
use tapestry_dns::{DataError, DnsData, Server, Zone};

/// How often a source is asked whether the data changed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    name = "tapestry-dns",
    about = "Tapestry cluster DNS (Kubernetes DNS spec 1.1.0)"
)]
struct Args {
    /// Address to serve UDP and TCP on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// TTL of every record and of negative answers, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Forward names outside the cluster domain here (UDP); without it they are REFUSED.
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// Cluster store to answer from: a directory or etcd://HOST:PORT[,HOST:PORT...]
    /// [default: $TAPESTRY_STORE].
    #[arg(long, value_name = "DIR|etcd://HOST:PORT,...", conflicts_with = "data")]
    store: Option<StoreSpec>,
    /// JSON file with the services and pods to serve (re-read when it changes).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// Where cluster data comes from.
trait Source: Send {
    /// The data, if it changed since the last call (the first call always
    /// returns it); an error leaves the current zone in place.
    fn poll(&mut self) -> Option<Result<DnsData, DataError>>;
    /// Blocks until the data may have changed.
    fn wait(&mut self);
}

/// The cluster store, through a watching cache: woken by every change.
struct StoreSource {
    cache: ClusterCache,
    changes: crossbeam_channel::Receiver<u64>,
    seen: u64,
}

impl StoreSource {
    fn open(spec: &StoreSpec) -> Result<StoreSource, StoreError> {
        let cache = ClusterCache::start(spec.open()?)?;
        let changes = cache.subscribe();
        Ok(StoreSource {
            cache,
            changes,
            seen: 0,
        })
    }

    fn data(&self) -> DnsData {
        tapestry_dns::cluster::dns_data(&self.cache.snapshot())
    }
}

impl Source for StoreSource {
    fn poll(&mut self) -> Option<Result<DnsData, DataError>> {
        let state = self.cache.snapshot();
        if state.generation == self.seen {
            return None;
        }
        self.seen = state.generation;
        Some(Ok(tapestry_dns::cluster::dns_data(&state)))
    }

    fn wait(&mut self) {
        // A closed channel means the cache stopped: fall back to a slow poll.
        if self.changes.recv().is_err() {
            thread::sleep(POLL_INTERVAL);
        }
    }
}

/// A JSON file, re-read when its modification time or size changes.
struct FileSource {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl Source for FileSource {
    fn wait(&mut self) {
        thread::sleep(POLL_INTERVAL);
    }

    fn poll(&mut self) -> Option<Result<DnsData, DataError>> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp == self.seen {
            return None;
        }
        self.seen = stamp;
        Some(DnsData::load(&self.path))
    }
}

fn build(data: &DnsData, args: &Args) -> Zone {
    let zone = Zone::build(data, &args.domain, args.ttl);
    for warning in zone.warnings() {
        tracing::warn!(%warning, "skipped");
    }
    tracing::info!(
        services = data.services.len(),
        pods = data.pods.len(),
        names = zone.name_count(),
        serial = zone.serial(),
        "zone built"
    );
    zone
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Err(error) = Zone::try_build(&DnsData::default(), &args.domain, args.ttl) {
        eprintln!("tapestry-dns: {error}");
        return ExitCode::FAILURE;
    }
    let store = match args.store.clone() {
        Some(spec) => Some(spec),
        None => match std::env::var_os("TAPESTRY_STORE").map(|s| StoreSpec::parse_os(&s)) {
            Some(Ok(spec)) => Some(spec),
            Some(Err(error)) => {
                eprintln!("tapestry-dns: TAPESTRY_STORE: {error}");
                return ExitCode::FAILURE;
            }
            None => None,
        },
    };
    let (first, mut source): (DnsData, Box<dyn Source>) = match (&args.data, store) {
        (Some(path), _) => {
            let mut source = FileSource {
                path: path.clone(),
                seen: None,
            };
            match source.poll() {
                Some(Ok(data)) => (data, Box::new(source)),
                Some(Err(error)) => {
                    eprintln!("tapestry-dns: {error}");
                    return ExitCode::FAILURE;
                }
                None => (DnsData::default(), Box::new(source)),
            }
        }
        (None, Some(spec)) => match StoreSource::open(&spec) {
            Ok(source) => (source.data(), Box::new(source)),
            Err(error) => {
                eprintln!("tapestry-dns: cluster store {spec}: {error}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!(
                "tapestry-dns: give --store DIR|etcd://HOST:PORT (or set TAPESTRY_STORE) or --data FILE"
            );
            return ExitCode::FAILURE;
        }
    };
    let zone = Arc::new(ArcSwap::from_pointee(build(&first, &args)));
    let server = match Server::bind(args.listen, Arc::clone(&zone), args.upstream) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("tapestry-dns: binding {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => {
            tracing::info!(%addr, domain = %args.domain, upstream = ?args.upstream, "serving")
        }
        Err(error) => tracing::warn!(%error, "local address"),
    }

    let reload = thread::Builder::new()
        .name("dns-reload".into())
        .spawn(move || loop {
            source.wait();
            match source.poll() {
                None => {}
                Some(Ok(data)) => zone.store(Arc::new(build(&data, &args))),
                Some(Err(error)) => tracing::warn!(%error, "keeping the current zone"),
            }
        });
    if let Err(error) = reload {
        eprintln!("tapestry-dns: reload thread: {error}");
        return ExitCode::FAILURE;
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tapestry-dns: {error}");
            ExitCode::FAILURE
        }
    }
}
