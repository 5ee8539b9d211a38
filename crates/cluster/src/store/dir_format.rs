//! The directory store's file formats, decoded without I/O (CONVENTIONS.md
//! §1, so the fuzz target `store_files` and the unit tests feed them bytes
//! directly): the `state` file, key files and the event log.
//!
//! What a decoder promises: any bytes give a value or an error naming what is
//! wrong, never a panic. The event log is decoded line by line, so one
//! corrupt line costs only that line: [`decode_log`] returns every complete
//! line with its record or the reason it is unreadable, and the caller skips
//! the bad ones (see `dir.rs` for what each reader then does). A record must
//! carry a revision above the one before it; one that does not is reported
//! as out of sequence rather than trusted. Missing revisions (a gap between
//! two good records) are the caller's to notice: a watch that needed them
//! ends with an error so its owner lists again.

use serde::{Deserialize, Serialize};

use super::{Entry, Event, Mutation, Revision};

/// What is wrong with a store file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The `state` file is not `"<revision> <compacted> <log_len>\n"`.
    #[error("expected three numbers, found `{found}`")]
    StateNumbers { found: String },
    /// The `state` file's compaction point is past its revision.
    #[error("compaction point {compacted} is past revision {revision}")]
    CompactedPastRevision {
        compacted: Revision,
        revision: Revision,
    },
    /// A key file without its `"<mod revision>\n"` line.
    #[error("no revision line")]
    NoRevisionLine,
    /// A key file whose first line is not a number.
    #[error("first line is not a revision number")]
    BadRevision,
    /// The event log does not start with a complete header line.
    #[error("no header line")]
    NoHeader,
    /// The header is unreadable and no record tells where the log starts.
    #[error("bad header ({reason}) and no readable record to infer it from")]
    BadHeader { reason: String },
}

/// What the `state` file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// The newest revision (applied to the key files).
    pub revision: Revision,
    /// The event log's compaction point (its header).
    pub compacted: Revision,
    /// Bytes of the log that hold applied records.
    pub log_len: u64,
}

/// Decodes the `state` file; a compaction point past the revision is an
/// error (it would make "events since compaction" negative).
pub fn decode_state(text: &[u8]) -> Result<State, FormatError> {
    let text = String::from_utf8_lossy(text);
    let bad = || FormatError::StateNumbers {
        found: text.trim().chars().take(80).collect(),
    };
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [revision, compacted, log_len] = nums.as_slice() else {
        return Err(bad());
    };
    if compacted > revision {
        return Err(FormatError::CompactedPastRevision {
            compacted: *compacted,
            revision: *revision,
        });
    }
    Ok(State {
        revision: *revision,
        compacted: *compacted,
        log_len: *log_len,
    })
}

/// The `state` file's bytes.
pub fn encode_state(s: &State) -> Vec<u8> {
    format!("{} {} {}\n", s.revision, s.compacted, s.log_len).into_bytes()
}

/// Decodes a key file: its mod revision and value.
pub fn decode_key_file(data: &[u8]) -> Result<(Revision, &[u8]), FormatError> {
    let nl = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(FormatError::NoRevisionLine)?;
    let (head, rest) = data.split_at(nl);
    let rev = std::str::from_utf8(head)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(FormatError::BadRevision)?;
    Ok((rev, rest.get(1..).unwrap_or_default()))
}

/// A key file's bytes.
pub fn encode_key_file(rev: Revision, value: &[u8]) -> Vec<u8> {
    let mut data = format!("{rev}\n").into_bytes();
    data.extend_from_slice(value);
    data
}

#[derive(Serialize, Deserialize)]
struct LogHeader {
    compacted: Revision,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum LogOp {
    Put,
    Delete,
}

/// One line of the event log. A value that is UTF-8 (JSON always is) is kept
/// readable in `value`; anything else goes hex-encoded in `hex`.
#[derive(Serialize, Deserialize)]
struct LogRecord {
    rev: Revision,
    key: String,
    op: LogOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// The log's header line (with its newline).
pub fn encode_header(compacted: Revision) -> Vec<u8> {
    let mut line = format!("{{\"compacted\":{compacted}}}").into_bytes();
    line.push(b'\n');
    line
}

/// The log line (with its newline) for `mutation` of `key` at `rev`.
pub(crate) fn encode_record(rev: Revision, key: &str, mutation: &Mutation) -> Vec<u8> {
    let (op, value, hex) = match mutation {
        Mutation::Put(v) => match std::str::from_utf8(v) {
            Ok(s) => (LogOp::Put, Some(s.to_string()), None),
            Err(_) => (LogOp::Put, None, Some(hex_encode(v))),
        },
        Mutation::Delete => (LogOp::Delete, None, None),
    };
    let rec = LogRecord {
        rev,
        key: key.to_string(),
        op,
        value,
        hex,
    };
    // A struct of strings and numbers always serializes.
    let mut line = serde_json::to_vec(&rec).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The log line (with its newline) recording `ev`.
pub fn encode_event(ev: &Event) -> Vec<u8> {
    match ev {
        Event::Put(e) => encode_record(e.revision, &e.key, &Mutation::Put(e.value.clone())),
        Event::Delete { key, revision } => encode_record(*revision, key, &Mutation::Delete),
    }
}

/// Decodes one log line (without its newline) into the event it records.
pub fn decode_record(line: &[u8]) -> Result<Event, String> {
    let rec: LogRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(match rec.op {
        LogOp::Delete => Event::Delete {
            key: rec.key,
            revision: rec.rev,
        },
        LogOp::Put => {
            let value = match (rec.value, rec.hex) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(h)) => hex_decode(&h).ok_or("bad hex value")?,
                (None, None) => Vec::new(),
            };
            Event::Put(Entry {
                key: rec.key,
                value,
                revision: rec.rev,
            })
        }
    })
}

/// One complete line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Byte offset of the line in the buffer given to the decoder.
    pub offset: usize,
    /// Length without the newline.
    pub len: usize,
    /// The event, or why the line is unreadable (including a revision not
    /// above the previous record's).
    pub event: Result<Event, String>,
}

/// Splits `buf` into complete `\n`-terminated lines and decodes each; a
/// record must have a revision above `after` and above the record before it.
/// Returns the lines and the bytes they span (a trailing partial line, a
/// torn write, is not consumed).
pub fn decode_lines(buf: &[u8], after: Revision) -> (Vec<LogLine>, usize) {
    let mut lines = Vec::new();
    let mut consumed = 0;
    let mut prev = after;
    while let Some(pos) = buf
        .get(consumed..)
        .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
    {
        let line = buf.get(consumed..consumed + pos).unwrap_or_default();
        let event = decode_record(line).and_then(|ev| {
            if ev.revision() <= prev {
                Err(format!(
                    "record revision {} is out of sequence (not above {prev})",
                    ev.revision()
                ))
            } else {
                prev = ev.revision();
                Ok(ev)
            }
        });
        lines.push(LogLine {
            offset: consumed,
            len: pos,
            event,
        });
        consumed += pos + 1;
    }
    (lines, consumed)
}

/// A whole event log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedLog {
    /// The compaction point: the header's, or inferred from the first
    /// readable record when the header is unreadable.
    pub compacted: Revision,
    /// Why the header was unreadable, if it was.
    pub header_error: Option<String>,
    /// Bytes of the header line.
    pub header_len: usize,
    /// Every complete line after the header (offsets from the buffer's start).
    pub lines: Vec<LogLine>,
    /// Bytes spanned by the header and the complete lines.
    pub consumed: usize,
}

impl DecodedLog {
    /// The newest revision the log accounts for: the last readable record's,
    /// plus one for each unreadable line after it (each stood for a change).
    pub fn last_revision(&self) -> Revision {
        let mut rev = self.compacted;
        for line in &self.lines {
            rev = match &line.event {
                Ok(ev) => ev.revision(),
                Err(_) => rev.saturating_add(1),
            };
        }
        rev
    }
}

/// Decodes a whole event log: the header line, then each record line.
pub fn decode_log(buf: &[u8]) -> Result<DecodedLog, FormatError> {
    let nl = buf
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(FormatError::NoHeader)?;
    let header_len = nl + 1;
    let body = buf.get(header_len..).unwrap_or_default();
    let header = serde_json::from_slice::<LogHeader>(buf.get(..nl).unwrap_or_default());
    let (compacted, header_error) = match header {
        Ok(h) => (h.compacted, None),
        Err(e) => {
            // The first readable record, at line index i, is revision
            // compacted + 1 + i if no line before it was lost.
            let (lines, _) = decode_lines(body, 0);
            let inferred = lines.iter().enumerate().find_map(|(i, l)| {
                let rev = l.event.as_ref().ok()?.revision();
                rev.checked_sub(1)?.checked_sub(u64::try_from(i).ok()?)
            });
            match inferred {
                Some(c) => (c, Some(e.to_string())),
                None => {
                    return Err(FormatError::BadHeader {
                        reason: e.to_string(),
                    })
                }
            }
        }
    };
    let (mut lines, consumed) = decode_lines(body, compacted);
    for l in &mut lines {
        l.offset += header_len;
    }
    Ok(DecodedLog {
        compacted,
        header_error,
        header_len,
        lines,
        consumed: header_len + consumed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn put(rev: Revision, key: &str, value: &str) -> Vec<u8> {
        encode_record(rev, key, &Mutation::Put(value.as_bytes().to_vec()))
    }

    #[test]
    fn state_round_trips_and_rejects_compaction_past_revision() {
        let s = State {
            revision: 9,
            compacted: 4,
            log_len: 300,
        };
        assert_eq!(decode_state(&encode_state(&s)), Ok(s));
        assert_eq!(
            decode_state(b"3 5 100\n"),
            Err(FormatError::CompactedPastRevision {
                compacted: 5,
                revision: 3
            })
        );
        assert!(matches!(
            decode_state(b"banana\n"),
            Err(FormatError::StateNumbers { .. })
        ));
        assert!(decode_state(b"1 2").is_err());
        assert!(decode_state(b"1 0 2 3").is_err());
        assert!(decode_state(&[0xff, b' ', b'1']).is_err());
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_errors() {
        let data = encode_key_file(7, b"v\nw");
        assert_eq!(decode_key_file(&data), Ok((7, &b"v\nw"[..])));
        assert_eq!(decode_key_file(b"7"), Err(FormatError::NoRevisionLine));
        assert_eq!(decode_key_file(b"x\nv"), Err(FormatError::BadRevision));
        assert_eq!(decode_key_file(b"\n"), Err(FormatError::BadRevision));
    }

    #[test]
    fn binary_values_round_trip_through_hex() {
        let line = encode_record(3, "k", &Mutation::Put(vec![0xff, 0, 1]));
        let ev = decode_record(&line[..line.len() - 1]).unwrap();
        assert_eq!(
            ev,
            Event::Put(Entry {
                key: "k".into(),
                value: vec![0xff, 0, 1],
                revision: 3
            })
        );
        assert!(decode_record(br#"{"rev":1,"key":"k","op":"put","hex":"f"}"#).is_err());
    }

    #[test]
    fn a_corrupt_line_costs_only_itself() {
        let mut log = encode_header(0);
        log.extend(put(1, "a", "1"));
        log.extend(b"{\"rev\":2,\"key\":\"b\",\"op\":\"pu\xffXX\n");
        log.extend(put(3, "c", "3"));
        log.extend(put(3, "d", "dup")); // out of sequence
        log.extend(b"{\"rev\":5,\"ke"); // torn tail
        let d = decode_log(&log).unwrap();
        assert_eq!(d.compacted, 0);
        assert_eq!(d.lines.len(), 4);
        assert!(d.lines[0].event.is_ok());
        assert!(d.lines[1].event.is_err());
        assert_eq!(d.lines[2].event.as_ref().unwrap().key(), "c");
        assert!(d.lines[3].event.as_ref().unwrap_err().contains("sequence"));
        assert_eq!(d.consumed, log.len() - b"{\"rev\":5,\"ke".len());
        // The out-of-sequence line stood for revision 4.
        assert_eq!(d.last_revision(), 4);
        // Offsets point at the lines in the buffer.
        let l = &d.lines[2];
        assert_eq!(&log[l.offset..l.offset + l.len + 1], &put(3, "c", "3")[..]);
    }

    #[test]
    fn an_unreadable_header_is_inferred_from_the_first_record() {
        let mut log = b"{\"compac\n".to_vec();
        log.extend(b"garbage\n");
        log.extend(put(12, "a", "1"));
        let d = decode_log(&log).unwrap();
        assert_eq!(d.compacted, 10);
        assert!(d.header_error.is_some());
        assert_eq!(d.last_revision(), 12);
        assert!(matches!(
            decode_log(b"xx\nyy\n"),
            Err(FormatError::BadHeader { .. })
        ));
        assert_eq!(decode_log(b""), Err(FormatError::NoHeader));
        // A record that would put the start before revision 0 infers nothing.
        let mut log = b"x\n".to_vec();
        log.extend(b"bad\n");
        log.extend(put(1, "a", "1"));
        assert!(decode_log(&log).is_err());
    }

    #[test]
    fn huge_revisions_do_not_overflow() {
        let mut log = encode_header(u64::MAX);
        log.extend(b"junk\n");
        log.extend(put(u64::MAX, "a", "1"));
        let d = decode_log(&log).unwrap();
        assert_eq!(d.last_revision(), u64::MAX);
        assert!(d.lines.iter().all(|l| l.event.is_err()));
    }
}
