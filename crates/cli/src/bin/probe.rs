//! `tapestry-probe`: the workload and the prober of the NetworkPolicy truth table
//! (`scripts/e2e_netpol.sh`), in the manner of upstream's `agnhost`.
//!
//! - `serve` is a pod's container command: a TCP and a UDP listener on every
//!   `--port` (default 80 and 81); each answers with the pod's name
//!   (`NAMESPACE/NAME`, from the `POD_NAMESPACE` and `POD_NAME` the kubelet sets):
//!   a TCP connection gets it and is closed, a UDP datagram gets it back.
//! - `probe` runs inside a pod (`scripts/lab.sh exec POD -- tapestry-probe probe
//!   …`) and tries every target at once, each within one bounded timeout, then
//!   prints one line per target, in the order given:
//!
//! ```text
//! tcp:10.244.2.4:80 connected y/b
//! udp:10.244.3.7:81 no-answer
//! ```
//!
//! Outcomes: `connected NAME` (the server answered NAME), `no-answer` (nothing
//! within the timeout: a NetworkPolicy denial drops packets, it does not reset),
//! `silent` (TCP connected but no name came), `refused` (a TCP reset or an ICMP
//! port unreachable), `error KIND` (anything else, e.g. no route). The exit status
//! is 0 whatever the outcomes; only bad arguments fail.
#![forbid(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

/// How often an unanswered UDP probe is sent again within its timeout.
const UDP_RESEND: Duration = Duration::from_millis(200);
/// The longest answer read back (a pod's name).
const MAX_ANSWER: usize = 256;

/// NetworkPolicy truth-table workload: serve names, probe many targets at once.
#[derive(Parser, Debug)]
#[command(name = "tapestry-probe", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Listen on TCP and UDP on every port; answer each connection or datagram
    /// with this pod's name.
    Serve {
        /// A port to serve on, TCP and UDP (repeat for several).
        #[arg(long = "port", default_values_t = [80u16, 81])]
        ports: Vec<u16>,
        /// The name to answer [default: $POD_NAMESPACE/$POD_NAME].
        #[arg(long)]
        name: Option<String>,
    },
    /// Try every target concurrently; print one line per target, in order.
    Probe {
        /// How long each target may take to answer, in milliseconds.
        #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        timeout_ms: u64,
        /// `tcp:IP:PORT` or `udp:IP:PORT`.
        #[arg(required = true)]
        targets: Vec<Target>,
    },
}

/// A transport protocol a target is probed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One thing to probe: `PROTO:IP:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    proto: Proto,
    addr: SocketAddr,
    /// As given on the command line, echoed on the output line.
    spec: String,
}

/// Why a target argument is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum TargetError {
    #[error("target '{0}' is not PROTO:IP:PORT (tcp:10.244.1.2:80)")]
    Shape(String),
    #[error("target '{spec}': protocol '{proto}' is neither tcp nor udp")]
    Proto { spec: String, proto: String },
    #[error("target '{spec}': '{addr}' is not an IPv4 address")]
    Addr { spec: String, addr: String },
    #[error("target '{spec}': '{port}' is not a port (1-65535)")]
    Port { spec: String, port: String },
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = spec.split(':');
        let (Some(proto), Some(addr), Some(port), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TargetError::Shape(spec.to_owned()));
        };
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(TargetError::Proto {
                    spec: spec.to_owned(),
                    proto: other.to_owned(),
                })
            }
        };
        let ip: Ipv4Addr = addr.parse().map_err(|_| TargetError::Addr {
            spec: spec.to_owned(),
            addr: addr.to_owned(),
        })?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(TargetError::Port {
                    spec: spec.to_owned(),
                    port: port.to_owned(),
                })
            }
        };
        Ok(Target {
            proto,
            addr: SocketAddr::from((ip, port)),
            spec: spec.to_owned(),
        })
    }
}

/// What became of one probe.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected(String),
    NoAnswer,
    Silent,
    Refused,
    Error(ErrorKind),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Connected(name) => write!(f, "connected {name}"),
            Outcome::NoAnswer => f.write_str("no-answer"),
            Outcome::Silent => f.write_str("silent"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Error(kind) => write!(f, "error {kind}"),
        }
    }
}

impl Outcome {
    fn of_error(e: &std::io::Error) -> Outcome {
        match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::NoAnswer,
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
            kind => Outcome::Error(kind),
        }
    }

    /// An answer read back: the name, or `silent` if there was none.
    fn of_answer(bytes: &[u8]) -> Outcome {
        let name = String::from_utf8_lossy(bytes).trim().to_owned();
        if name.is_empty() {
            Outcome::Silent
        } else {
            Outcome::Connected(name)
        }
    }
}

/// Time left until `deadline`, at least a millisecond (a zero socket timeout
/// means "none").
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn probe_tcp(addr: SocketAddr, deadline: Instant) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, left(deadline)) {
        Ok(s) => s,
        Err(e) => return Outcome::of_error(&e),
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; MAX_ANSWER];
    while Instant::now() < deadline && answer.len() < MAX_ANSWER {
        if let Err(e) = stream.set_read_timeout(Some(left(deadline))) {
            return Outcome::Error(e.kind());
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend(buf.iter().take(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if answer.is_empty() => {
                return match Outcome::of_error(&e) {
                    Outcome::NoAnswer => Outcome::Silent,
                    other => other,
                }
            }
            Err(_) => break,
        }
    }
    Outcome::of_answer(&answer)
}

fn probe_udp(addr: SocketAddr, deadline: Instant) -> Outcome {
    let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        s.connect(addr)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.kind()),
    };
    let mut buf = [0u8; MAX_ANSWER];
    loop {
        if let Err(e) = socket.send(b"probe") {
            return Outcome::of_error(&e);
        }
        let wait = left(deadline).min(UDP_RESEND);
        if let Err(e) = socket.set_read_timeout(Some(wait)) {
            return Outcome::Error(e.kind());
        }
        match socket.recv(&mut buf) {
            Ok(n) => return Outcome::of_answer(buf.get(..n).unwrap_or_default()),
            Err(e) => match Outcome::of_error(&e) {
                Outcome::NoAnswer if Instant::now() < deadline => {}
                other => return other,
            },
        }
    }
}

fn probe(target: &Target, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    match target.proto {
        Proto::Tcp => probe_tcp(target.addr, deadline),
        Proto::Udp => probe_udp(target.addr, deadline),
    }
}

/// Probes every target on its own thread; the outcomes in the targets' order.
fn probe_all(targets: &[Target], timeout: Duration) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let running: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || probe(t, timeout)))
            .collect();
        running
            .into_iter()
            .map(|h| h.join().unwrap_or(Outcome::Error(ErrorKind::Other)))
            .collect()
    })
}

/// Answers every TCP connection with `name` and closes it.
fn serve_tcp(listener: TcpListener, name: &str) {
    let answer = format!("{name}\n");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = conn.write_all(answer.as_bytes());
    }
}

/// Answers every UDP datagram with `name`.
fn serve_udp(socket: UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

fn serve(ports: &[u16], name: &str) -> ExitCode {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for &port in ports {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        match (TcpListener::bind(addr), UdpSocket::bind(addr)) {
            (Ok(t), Ok(u)) => {
                tcp.push(t);
                udp.push(u);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("tapestry-probe: cannot listen on {addr} (TCP and UDP): {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("tapestry-probe: {name} serving TCP and UDP on ports {ports:?}");
    std::thread::scope(|s| {
        for t in tcp {
            s.spawn(move || serve_tcp(t, name));
        }
        for u in udp {
            s.spawn(move || serve_udp(u, name));
        }
    });
    // The listeners never return.
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { ports, name } => {
            let name = name.unwrap_or_else(|| {
                let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "?".into());
                format!("{}/{}", var("POD_NAMESPACE"), var("POD_NAME"))
            });
            serve(&ports, &name)
        }
        Cmd::Probe {
            timeout_ms,
            targets,
        } => {
            let outcomes = probe_all(&targets, Duration::from_millis(timeout_ms));
            let mut out = std::io::stdout().lock();
            for (t, o) in targets.iter().zip(outcomes) {
                let _ = writeln!(out, "{} {o}", t.spec);
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_reject_with_the_reason() {
        let t: Target = "udp:10.244.1.2:81".parse().unwrap();
        assert_eq!(t.proto, Proto::Udp);
        assert_eq!(t.addr, "10.244.1.2:81".parse().unwrap());
        assert!(matches!(
            "10.244.1.2:80".parse::<Target>(),
            Err(TargetError::Shape(_))
        ));
        assert!(matches!(
            "sctp:10.244.1.2:80".parse::<Target>(),
            Err(TargetError::Proto { .. })
        ));
        assert!(matches!(
            "tcp:10.244.1:80".parse::<Target>(),
            Err(TargetError::Addr { .. })
        ));
        assert!(matches!(
            "tcp:10.244.1.2:0".parse::<Target>(),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(
            "tcp:10.244.1.2:80:1".parse::<Target>(),
            Err(TargetError::Shape(_))
        ));
    }

    /// A server on loopback answers both protocols; a port nobody serves is
    /// refused; an address that drops everything is no answer, within the bound.
    #[test]
    fn probes_tell_answered_refused_and_unanswered_apart() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tport, uport) = (
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        );
        std::thread::spawn(move || serve_tcp(tcp, "x/a"));
        std::thread::spawn(move || serve_udp(udp, "x/a"));
        // A TCP port certainly closed: bound, never listened on.
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let targets: Vec<Target> = [
            format!("tcp:127.0.0.1:{tport}"),
            format!("udp:127.0.0.1:{uport}"),
            format!("udp:127.0.0.1:{closed_port}"),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let out = probe_all(&targets, Duration::from_millis(2000));
        assert_eq!(
            out,
            vec![
                Outcome::Connected("x/a".into()),
                Outcome::Connected("x/a".into()),
                Outcome::Refused,
            ]
        );
    }

    #[test]
    fn a_silent_udp_peer_is_no_answer_within_the_timeout() {
        let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t: Target = format!("udp:127.0.0.1:{}", mute.local_addr().unwrap().port())
            .parse()
            .unwrap();
        let started = Instant::now();
        assert_eq!(probe(&t, Duration::from_millis(300)), Outcome::NoAnswer);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2));
    }
}
