//! `tapestry-web`: the lab's HTTP workload. Every response names the pod that
//! answered, so a learner can see which pod (and which node) served a request:
//!
//! ```text
//! pod=web-a namespace=default ip=10.244.1.2 node=node1 client=10.244.1.3:51234 path=/
//! ```
//!
//! Pod facts come from the environment the lab sets (`POD_NAME`, `POD_NAMESPACE`,
//! `POD_IP`, `NODE_NAME`). One thread per connection; HTTP/1.0-style close.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let mut listen = "0.0.0.0:80".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_default(),
            "--port" => listen = format!("0.0.0.0:{}", args.next().unwrap_or_default()),
            "-h" | "--help" => {
                println!("usage: tapestry-web [--listen ADDR:PORT | --port PORT]\nServes HTTP; every answer names the pod (POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME).");
                return;
            }
            other => {
                eprintln!("tapestry-web: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tapestry-web: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("tapestry-web: listening on {listen}");
    for conn in listener.incoming().flatten() {
        let _ = std::thread::Builder::new().spawn(move || serve(conn));
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| "?".into())
}

fn serve(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let client = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let body = format!(
        "pod={} namespace={} ip={} node={} client={client} path={path}\n",
        env("POD_NAME"),
        env("POD_NAMESPACE"),
        env("POD_IP"),
        env("NODE_NAME")
    );
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
