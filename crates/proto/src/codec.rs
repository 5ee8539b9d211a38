//! The wire form of the control protocol: one JSON value per line, and the
//! reading the agent does on a connection (blank lines skipped, a line longer
//! than its bound refused, bytes that are not UTF-8 or not a request answered
//! with an error rather than a dropped connection).
//!
//! The agent's control socket reads requests with [`Requests`]; the client
//! encodes with [`encode_request`] and decodes the reply with [`decode_reply`].
//! The `control` fuzz target (`fuzz/fuzz_targets/control.rs`) feeds arbitrary
//! bytes through both and checks that what is accepted round-trips.

use std::io::{self, BufRead};

use crate::{Reply, Request};

/// Longest request line the agent accepts (a request is a few hundred bytes).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Why [`Requests`] yielded no request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The line is not a request (not JSON, not UTF-8, an unknown `op`, a
    /// missing field). The connection stays in step: the next line is read.
    #[error("bad request: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The line has more than `max` bytes before its newline. Reading stops.
    #[error("request longer than {max} bytes")]
    TooLong { max: usize },
    /// The stream failed (a timeout, a reset). Reading stops.
    #[error("read: {0}")]
    Io(#[source] io::Error),
}

/// The requests on one connection, a line each.
///
/// Blank lines are skipped; a final line without its newline still counts.
/// After [`RequestError::TooLong`] or [`RequestError::Io`] the iterator ends, as
/// the stream is no longer known to be at a line's start; after
/// [`RequestError::Malformed`] it goes on with the next line.
pub struct Requests<R> {
    reader: R,
    max: usize,
    line: Vec<u8>,
    done: bool,
}

impl<R: BufRead> Requests<R> {
    /// Reads `reader` with the agent's bound, [`MAX_REQUEST_LINE`].
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_REQUEST_LINE)
    }

    /// Reads `reader`, refusing lines longer than `max` bytes.
    pub fn with_limit(reader: R, max: usize) -> Self {
        Requests {
            reader,
            max,
            line: Vec::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for Requests<R> {
    type Item = Result<Request, RequestError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match read_line(&mut self.reader, self.max, &mut self.line) {
                Ok(false) => self.done = true,
                Ok(true) if self.line.trim_ascii().is_empty() => {}
                Ok(true) => {
                    return Some(decode_request(&self.line).map_err(RequestError::Malformed))
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Reads one line into `line` (cleared first, newline left out). `Ok(false)` at
/// the end of the stream with nothing read; a last line without a newline is
/// returned as a line. At most `max` bytes are kept: a longer line is
/// [`RequestError::TooLong`], found without reading past `max` bytes of it.
pub fn read_line<R: BufRead>(
    reader: &mut R,
    max: usize,
    line: &mut Vec<u8>,
) -> Result<bool, RequestError> {
    line.clear();
    let mut seen = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RequestError::Io(e)),
        };
        if available.is_empty() {
            return Ok(seen);
        }
        seen = true;
        let (chunk, used, end) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (available.get(..at).unwrap_or_default(), at + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + chunk.len() > max {
            return Err(RequestError::TooLong { max });
        }
        line.extend_from_slice(chunk);
        reader.consume(used);
        if end {
            return Ok(true);
        }
    }
}

/// Decodes one request line (surrounding whitespace, a `\r` included, allowed).
pub fn decode_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Decodes one reply line.
pub fn decode_reply(line: &[u8]) -> Result<Reply, serde_json::Error> {
    serde_json::from_slice(line)
}

/// A request's line, newline included. Fails only for a path that is not UTF-8.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, serde_json::Error> {
    encode(req)
}

/// A reply's line, newline included.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, serde_json::Error> {
    encode(reply)
}

/// Compact JSON escapes every control character, a newline among them, so the
/// value is one line.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(value)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::Attachment;
    use std::io::BufReader;
    use std::path::PathBuf;

    fn all(input: &[u8], max: usize, chunk: usize) -> Vec<Result<Request, String>> {
        Requests::with_limit(BufReader::with_capacity(chunk, input), max)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    fn add(id: &str) -> Request {
        Request::Add(Attachment {
            container_id: id.into(),
            netns: PathBuf::from("/run/netns/p"),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
        })
    }

    #[test]
    fn lines_are_requests_blank_ones_skipped_and_a_last_line_needs_no_newline() {
        let mut input = encode_request(&Request::Status).unwrap();
        input.extend_from_slice(b"\n  \r\n");
        input.extend_from_slice(&encode_request(&add("c1")).unwrap());
        input.extend_from_slice(b"{\"op\":\"del\",\"container_id\":\"c2\"}");
        for chunk in [1, 3, 8192] {
            let got = all(&input, MAX_REQUEST_LINE, chunk);
            assert_eq!(got.len(), 3, "chunk {chunk}: {got:?}");
            assert_eq!(got[0].as_ref().unwrap(), &Request::Status);
            assert_eq!(got[1].as_ref().unwrap(), &add("c1"));
            let Ok(Request::Del(a)) = &got[2] else {
                panic!("chunk {chunk}: {:?}", got[2]);
            };
            assert_eq!((a.container_id.as_str(), a.ifname.as_str()), ("c2", "eth0"));
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_get_an_error_and_the_next_line_is_still_read() {
        // Before, the agent's `read_line` into a String failed on these and the
        // connection was closed with no reply.
        let input = b"{\"op\":\"del\",\"container_id\":\"\xff\"}\n\xc3\x28\n{\"op\":\"status\"}\n";
        let got = all(input, MAX_REQUEST_LINE, 4);
        assert_eq!(got.len(), 3, "{got:?}");
        let first = got[0].as_ref().unwrap_err();
        assert!(first.starts_with("bad request: "), "{first}");
        assert!(got[1].as_ref().unwrap_err().starts_with("bad request: "));
        assert_eq!(got[2].as_ref().unwrap(), &Request::Status);
    }

    #[test]
    fn a_line_over_the_bound_is_refused_and_ends_the_stream() {
        let mut input = vec![b' '; 40];
        input.extend_from_slice(b"{\"op\":\"status\"}\n{\"op\":\"status\"}\n");
        // 40 spaces and the request fit in 64 bytes, not in 50.
        assert_eq!(all(&input, 64, 7).len(), 2);
        let got = all(&input, 50, 7);
        assert_eq!(got, vec![Err("request longer than 50 bytes".to_owned())]);
        // Exactly at the bound is accepted; the newline does not count.
        let line = br#"{"op":"status"}"#;
        assert_eq!(all(line, line.len(), 2), vec![Ok(Request::Status)]);
        assert_eq!(all(line, line.len() - 1, 2).len(), 1);
        assert!(all(line, line.len() - 1, 2)[0].is_err());
    }

    #[test]
    fn unknown_ops_and_missing_fields_are_errors_naming_the_problem() {
        let got = all(
            b"{\"op\":\"reboot\"}\n{\"op\":\"add\"}\n[]\n",
            MAX_REQUEST_LINE,
            8192,
        );
        assert_eq!(got.len(), 3);
        let msgs: Vec<String> = got.into_iter().map(|r| r.unwrap_err()).collect();
        assert!(msgs[0].contains("unknown variant `reboot`"), "{}", msgs[0]);
        assert!(
            msgs[1].contains("missing field `container_id`"),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].starts_with("bad request: "), "{}", msgs[2]);
    }

    #[test]
    fn a_read_error_is_reported_once_and_ends_the_stream() {
        struct Failing;
        impl io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "slow client"))
            }
        }
        let mut it = Requests::new(BufReader::new(Failing));
        assert!(matches!(it.next(), Some(Err(RequestError::Io(_)))));
        assert!(it.next().is_none());
    }

    #[test]
    fn encoded_values_are_one_line_and_decode_to_themselves() {
        let req = Request::Check(Attachment {
            container_id: "a\nb\r\u{2028}\"".into(),
            netns: PathBuf::from("/proc/1/ns/net\n"),
            ifname: "\u{0}".into(),
            pod_namespace: String::new(),
            pod_name: "x".into(),
        });
        let line = encode_request(&req).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode_request(&line).unwrap(), req);
        let reply = Reply::error("bad\nthing");
        let line = encode_reply(&reply).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(decode_reply(&line).unwrap(), reply);
    }
}
