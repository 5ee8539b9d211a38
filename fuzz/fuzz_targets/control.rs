//! The control socket's protocol on arbitrary bytes: the agent's reading of a
//! connection (`tapestry_proto::Requests`, which `tapestryd`'s control module
//! runs on every connection) and the client's decoding of a reply line. Never a
//! panic; every request or reply accepted encodes to one line that decodes to
//! the same value; every error becomes a reply that does too.
//!
//! The first byte picks the reader's buffer size (1 to 256 bytes, so lines
//! arrive split as a socket delivers them), the second the line bound (so
//! `TooLong` is reached within libFuzzer's input sizes); the rest is the stream.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use tapestry_proto::{decode_reply, decode_request, encode_reply, encode_request, Reply, RequestError, Requests};

/// `line` (from an encode function) is one line: a newline at its end and none before.
fn one_line(line: &[u8]) -> &[u8] {
    match line.split_last() {
        Some((b'\n', body)) if !body.contains(&b'\n') => body,
        _ => panic!("not one line: {:?}", String::from_utf8_lossy(line)),
    }
}

fn reply_round_trips(reply: &Reply) {
    let line = encode_reply(reply).expect("a reply always encodes");
    let back = decode_reply(one_line(&line)).expect("an encoded reply decodes");
    assert_eq!(&back, reply);
}

fuzz_target!(|data: &[u8]| {
    let [chunk, bound, stream @ ..] = data else { return };
    let chunk = usize::from(*chunk) + 1;
    let max = usize::from(*bound) * 16;
    let mut fatal = false;
    for next in Requests::with_limit(BufReader::with_capacity(chunk, stream), max) {
        assert!(!fatal, "a request after the stream was given up");
        match next {
            Ok(req) => {
                let line = encode_request(&req).expect("a decoded request has UTF-8 paths");
                let back = decode_request(one_line(&line)).expect("an encoded request decodes");
                assert_eq!(back, req);
            }
            Err(e) => {
                fatal = !matches!(e, RequestError::Malformed(_));
                assert!(!matches!(e, RequestError::Io(_)), "reading a slice fails: {e}");
                // What the agent sends back.
                reply_round_trips(&Reply::error(e.to_string()));
            }
        }
    }
    for line in stream.split(|&b| b == b'\n') {
        if let Ok(reply) = decode_reply(line) {
            reply_round_trips(&reply);
        }
    }
});
