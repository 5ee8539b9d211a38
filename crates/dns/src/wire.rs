//! The DNS wire format, as far as a cluster DNS server needs it (RFC 1035 §4).
//!
//! Why hand-written rather than a general DNS library: the hot path is a query
//! for a name that does not exist (the resolver's `ndots:5` search path turns
//! every external lookup into up to five cluster-domain NXDOMAINs first), and a
//! general codec allocates a `Vec` per label and per record. Here the query is
//! read through bounds-checked views into a fixed stack buffer, lowercased on
//! the way (RFC 4343), and the answer is copied from records the [`Zone`]
//! prebuilt in wire form. The tests check both directions against an
//! independent codec (hickory-proto).
//!
//! Invariants: nothing here indexes a packet unchecked or panics; every
//! malformed input is a [`QueryError`].
//!
//! [`Zone`]: crate::Zone

use thiserror::Error;

/// Length of the fixed message header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form, length octets and the root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// QCLASS `*` (RFC 1035 §3.2.5).
pub const CLASS_ANY: u16 = 255;
/// The UDP payload every client accepts without EDNS (RFC 1035 §4.2.1).
pub const MIN_UDP_PAYLOAD: usize = 512;
/// The UDP payload this server advertises in its OPT record: the DNS Flag Day
/// 2020 recommendation, which avoids IP fragmentation on a 1280-byte path.
pub const EDNS_PAYLOAD: u16 = 1232;
/// A compression pointer to offset 12: the question name, which always starts
/// right after the header (RFC 1035 §4.1.4).
pub const PTR_TO_QNAME: [u8; 2] = [0xC0, 0x0C];

/// Resource record types this server knows by name (RFC 1035 §3.2.2, RFC 3596
/// AAAA, RFC 2782 SRV, RFC 6891 OPT, RFC 1995 IXFR). A total enum: any other
/// value is [`RecordType::Unknown`], never a parse error.
///
/// `Unknown(n)` must only carry values without a named variant; [`From<u16>`]
/// guarantees that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Ns,
    Cname,
    Soa,
    Ptr,
    /// Only ever synthesized, as the RFC 8482 answer to ANY.
    Hinfo,
    Txt,
    Aaaa,
    Srv,
    Opt,
    Ixfr,
    Axfr,
    Any,
    Unknown(u16),
}

impl From<u16> for RecordType {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::A,
            2 => Self::Ns,
            5 => Self::Cname,
            6 => Self::Soa,
            12 => Self::Ptr,
            13 => Self::Hinfo,
            16 => Self::Txt,
            28 => Self::Aaaa,
            33 => Self::Srv,
            41 => Self::Opt,
            251 => Self::Ixfr,
            252 => Self::Axfr,
            255 => Self::Any,
            n => Self::Unknown(n),
        }
    }
}

impl From<RecordType> for u16 {
    fn from(value: RecordType) -> Self {
        match value {
            RecordType::A => 1,
            RecordType::Ns => 2,
            RecordType::Cname => 5,
            RecordType::Soa => 6,
            RecordType::Ptr => 12,
            RecordType::Hinfo => 13,
            RecordType::Txt => 16,
            RecordType::Aaaa => 28,
            RecordType::Srv => 33,
            RecordType::Opt => 41,
            RecordType::Ixfr => 251,
            RecordType::Axfr => 252,
            RecordType::Any => 255,
            RecordType::Unknown(n) => n,
        }
    }
}

/// Response codes this server sends (RFC 1035 §4.1.1; BADVERS from RFC 6891 §6.1.3,
/// carried half in the header and half in the OPT record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    BadVers,
}

impl Rcode {
    /// The 12-bit extended value.
    pub fn value(self) -> u16 {
        match self {
            Self::NoError => 0,
            Self::FormErr => 1,
            Self::ServFail => 2,
            Self::NxDomain => 3,
            Self::NotImp => 4,
            Self::Refused => 5,
            Self::BadVers => 16,
        }
    }

    /// The low four bits, which go in the header.
    pub fn header_bits(self) -> u16 {
        self.value() & 0xF
    }

    /// The high eight bits, which go in the OPT record's TTL field.
    pub fn extended_bits(self) -> u8 {
        u8::try_from(self.value() >> 4).unwrap_or(0)
    }
}

/// Why a query could not be read. Cheap and `Copy`: it is returned per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("message of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("question count is {count}, a query carries exactly one")]
    QuestionCount { count: u16 },
    #[error("message ends inside a name or record at offset {offset}")]
    Truncated { offset: usize },
    #[error("label byte {byte:#04x} at offset {offset} is not a plain label length")]
    BadLabel { offset: usize, byte: u8 },
    #[error("name longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("more than one OPT record (RFC 6891 §6.1.1)")]
    DuplicateOpt,
    #[error("OPT record whose owner is not the root")]
    OptOwnerNotRoot,
}

/// Why a name from cluster data cannot be a DNS name. Built once per zone,
/// not per packet, so it may carry the offending text.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("{name:?} has an empty label")]
    EmptyLabel { name: String },
    #[error("label {label:?} is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong { label: String },
    #[error("{text:?} must be a single non-empty label")]
    NotALabel { text: String },
    #[error("{name:?} is longer than {MAX_NAME_LEN} bytes in wire form")]
    NameTooLong { name: String },
}

/// Reads a big-endian `u16` at `pos`, `None` past the end.
pub fn read_u16(msg: &[u8], pos: usize) -> Option<u16> {
    let bytes = msg.get(pos..pos.checked_add(2)?)?;
    <[u8; 2]>::try_from(bytes).ok().map(u16::from_be_bytes)
}

/// Reads a big-endian `u32` at `pos`, `None` past the end.
pub fn read_u32(msg: &[u8], pos: usize) -> Option<u32> {
    let bytes = msg.get(pos..pos.checked_add(4)?)?;
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

/// Overwrites a big-endian `u16` at `pos`; does nothing past the end.
pub fn write_u16_at(buf: &mut [u8], pos: usize, value: u16) {
    if let Some(slot) = pos.checked_add(2).and_then(|end| buf.get_mut(pos..end)) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
}

/// The fixed header (RFC 1035 §4.1.1), read-only view values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

/// Header flag bits (RFC 1035 §4.1.1).
pub mod flags {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const OPCODE_MASK: u16 = 0x7800;
}

impl Header {
    /// Reads the header.
    pub fn parse(msg: &[u8]) -> Result<Header, QueryError> {
        let short = QueryError::ShortHeader { len: msg.len() };
        Ok(Header {
            id: read_u16(msg, 0).ok_or(short)?,
            flags: read_u16(msg, 2).ok_or(short)?,
            qdcount: read_u16(msg, 4).ok_or(short)?,
            ancount: read_u16(msg, 6).ok_or(short)?,
            nscount: read_u16(msg, 8).ok_or(short)?,
            arcount: read_u16(msg, 10).ok_or(short)?,
        })
    }

    /// QR: set on responses.
    pub fn is_response(&self) -> bool {
        self.flags & flags::QR != 0
    }

    /// The 4-bit OPCODE; 0 is a standard query.
    pub fn opcode(&self) -> u16 {
        (self.flags & flags::OPCODE_MASK) >> 11
    }

    /// RD: recursion desired, copied into the response.
    pub fn recursion_desired(&self) -> bool {
        self.flags & flags::RD != 0
    }
}

/// A name in wire form, lowercased, in a fixed buffer: reading a question
/// allocates nothing.
#[derive(Clone, Copy)]
pub struct NameBuf {
    buf: [u8; MAX_NAME_LEN],
    len: usize,
}

impl NameBuf {
    /// The wire bytes, ending with the root label.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl std::fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", name_to_text(self.as_bytes()))
    }
}

/// The question and the EDNS parameters of a standard query.
#[derive(Clone, Copy, Debug)]
pub struct Question {
    /// The question name, lowercased.
    pub name: NameBuf,
    pub qtype: RecordType,
    pub qclass: u16,
    /// Offset just past the question: `query[HEADER_LEN..end]` is the
    /// question as the client wrote it (its case preserved, RFC 4343 §4.1).
    pub end: usize,
    /// The client's OPT record, if any (RFC 6891).
    pub edns: Option<Edns>,
}

/// What a client's OPT record says (RFC 6891 §6.1.2–6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The UDP payload size the client can reassemble.
    pub payload: u16,
    pub version: u8,
}

/// Reads the question and the OPT record of a query whose header is `header`.
///
/// Compression pointers are refused in the question: the question is the first
/// name in the message, so a pointer could only point into the header.
pub fn parse_question(msg: &[u8], header: &Header) -> Result<Question, QueryError> {
    if header.qdcount != 1 {
        return Err(QueryError::QuestionCount {
            count: header.qdcount,
        });
    }
    let mut name = NameBuf {
        buf: [0; MAX_NAME_LEN],
        len: 0,
    };
    let mut pos = HEADER_LEN;
    loop {
        let len_byte = *msg.get(pos).ok_or(QueryError::Truncated { offset: pos })?;
        if len_byte & 0xC0 != 0 {
            return Err(QueryError::BadLabel {
                offset: pos,
                byte: len_byte,
            });
        }
        let end = pos + 1 + usize::from(len_byte);
        let label = msg
            .get(pos..end)
            .ok_or(QueryError::Truncated { offset: pos })?;
        let dst = name
            .buf
            .get_mut(name.len..name.len + label.len())
            .ok_or(QueryError::NameTooLong)?;
        // Length octets are <= 63, below b'A', so lowercasing leaves them alone.
        for (d, s) in dst.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        name.len += label.len();
        pos = end;
        if len_byte == 0 {
            break;
        }
    }
    let qtype = read_u16(msg, pos).ok_or(QueryError::Truncated { offset: pos })?;
    let qclass = read_u16(msg, pos + 2).ok_or(QueryError::Truncated { offset: pos })?;
    let end = pos + 4;

    // Answer and authority sections of a query are normally empty; skip them
    // anyway, then look for the OPT record in the additional section.
    let mut pos = end;
    let mut edns = None;
    let records =
        usize::from(header.ancount) + usize::from(header.nscount) + usize::from(header.arcount);
    let first_additional = usize::from(header.ancount) + usize::from(header.nscount);
    for index in 0..records {
        let owner_is_root = msg.get(pos) == Some(&0);
        pos = skip_name(msg, pos)?;
        let rtype = read_u16(msg, pos).ok_or(QueryError::Truncated { offset: pos })?;
        let class = read_u16(msg, pos + 2).ok_or(QueryError::Truncated { offset: pos })?;
        let ttl = read_u32(msg, pos + 4).ok_or(QueryError::Truncated { offset: pos })?;
        let rdlen = read_u16(msg, pos + 8).ok_or(QueryError::Truncated { offset: pos })?;
        let next = pos + 10 + usize::from(rdlen);
        if next > msg.len() {
            return Err(QueryError::Truncated { offset: pos });
        }
        if index >= first_additional && RecordType::from(rtype) == RecordType::Opt {
            if edns.is_some() {
                return Err(QueryError::DuplicateOpt);
            }
            if !owner_is_root {
                return Err(QueryError::OptOwnerNotRoot);
            }
            let [_, version, _, _] = ttl.to_be_bytes();
            edns = Some(Edns {
                payload: class,
                version,
            });
        }
        pos = next;
    }
    Ok(Question {
        name,
        qtype: RecordType::from(qtype),
        qclass,
        end,
        edns,
    })
}

/// Skips a name that may end in a compression pointer; returns the offset after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, QueryError> {
    loop {
        let len_byte = *msg.get(pos).ok_or(QueryError::Truncated { offset: pos })?;
        match len_byte & 0xC0 {
            0xC0 => {
                return if pos + 2 <= msg.len() {
                    Ok(pos + 2)
                } else {
                    Err(QueryError::Truncated { offset: pos })
                }
            }
            0 if len_byte == 0 => return Ok(pos + 1),
            0 => pos += 1 + usize::from(len_byte),
            _ => {
                return Err(QueryError::BadLabel {
                    offset: pos,
                    byte: len_byte,
                })
            }
        }
    }
}

/// Encodes a dotted name (a trailing dot is optional) in lowercase wire form.
/// No escapes: cluster names are DNS-1123 labels, port names and IP dashes.
pub fn encode_name(text: &str) -> Result<Vec<u8>, NameError> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel {
                    name: text.to_owned(),
                });
            }
            let len = u8::try_from(label.len())
                .ok()
                .filter(|&l| usize::from(l) <= MAX_LABEL_LEN)
                .ok_or_else(|| NameError::LabelTooLong {
                    label: label.to_owned(),
                })?;
            out.push(len);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > MAX_NAME_LEN {
        return Err(NameError::NameTooLong {
            name: text.to_owned(),
        });
    }
    Ok(out)
}

/// Renders a wire name as dotted text with a trailing dot, for logs and tests.
pub fn name_to_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let label = wire.get(pos + 1..pos + 1 + usize::from(len)).unwrap_or(&[]);
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        pos += 1 + usize::from(len);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Whether `name` equals `zone` or lies below it, comparing at label
/// boundaries (so `xcluster.local` is not below `cluster.local`). Both are
/// lowercase wire names.
pub fn is_subdomain(name: &[u8], zone: &[u8]) -> bool {
    if !name.ends_with(zone) {
        return false;
    }
    let boundary = name.len() - zone.len();
    let mut pos = 0;
    while pos < boundary {
        match name.get(pos) {
            Some(&len) if len != 0 => pos += 1 + usize::from(len),
            _ => return false,
        }
    }
    pos == boundary
}

/// The parent of a wire name (the name minus its first label), `None` for the root.
pub fn parent(name: &[u8]) -> Option<&[u8]> {
    let &len = name.first()?;
    if len == 0 {
        return None;
    }
    name.get(1 + usize::from(len)..)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    // A query for "Web.default.svc.cluster.local" A, RD set, with an OPT
    // record advertising 1232 bytes, as dig sends it (cookie option left out).
    static QUERY_BYTES: [u8; 58] = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, //
        3, b'W', b'e', b'b', 7, b'd', b'e', b'f', b'a', b'u', b'l', b't', 3, b's', b'v', b'c', 7,
        b'c', b'l', b'u', b's', b't', b'e', b'r', 5, b'l', b'o', b'c', b'a', b'l', 0, //
        0x00, 0x01, 0x00, 0x01, //
        0, 0x00, 0x29, 0x04, 0xD0, 0, 0, 0, 0, 0x00, 0x00,
    ];

    #[test]
    fn parse_query_bytes() {
        let header = Header::parse(&QUERY_BYTES).unwrap();
        assert_eq!(header.id, 0x1234);
        assert!(!header.is_response());
        assert_eq!(header.opcode(), 0);
        assert!(header.recursion_desired());
        let q = parse_question(&QUERY_BYTES, &header).unwrap();
        assert_eq!(
            q.name.as_bytes(),
            encode_name("web.default.svc.cluster.local").unwrap()
        );
        assert_eq!(q.qtype, RecordType::A);
        assert_eq!(q.qclass, CLASS_IN);
        assert_eq!(q.end, 47);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 1232,
                version: 0
            })
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for len in 0..QUERY_BYTES.len() {
            let msg = &QUERY_BYTES[..len];
            match Header::parse(msg) {
                Err(e) => assert_eq!(e, QueryError::ShortHeader { len }),
                Ok(h) => assert!(parse_question(msg, &h).is_err(), "len {len}"),
            }
        }
    }

    #[test]
    fn refuses_pointer_in_question_and_two_opts() {
        let mut msg = QUERY_BYTES;
        msg[12] = 0xC0;
        let h = Header::parse(&msg).unwrap();
        assert!(matches!(
            parse_question(&msg, &h),
            Err(QueryError::BadLabel { offset: 12, .. })
        ));

        let mut two = QUERY_BYTES.to_vec();
        two.extend_from_slice(&QUERY_BYTES[47..]);
        two[11] = 2;
        let h = Header::parse(&two).unwrap();
        assert_eq!(
            parse_question(&two, &h).unwrap_err(),
            QueryError::DuplicateOpt
        );
    }

    #[test]
    fn name_helpers() {
        let n = encode_name("A.b.Cluster.Local.").unwrap();
        assert_eq!(name_to_text(&n), "a.b.cluster.local.");
        let zone = encode_name("cluster.local").unwrap();
        assert!(is_subdomain(&n, &zone));
        assert!(is_subdomain(&zone, &zone));
        assert!(!is_subdomain(
            &encode_name("xcluster.local").unwrap(),
            &zone
        ));
        assert!(!is_subdomain(&encode_name("local").unwrap(), &zone));
        assert_eq!(parent(&n).unwrap(), encode_name("b.cluster.local").unwrap());
        assert_eq!(encode_name("").unwrap(), vec![0]);
        assert!(encode_name("a..b").is_err());
        assert!(encode_name(&"x".repeat(64)).is_err());
        assert!(encode_name(&["abc"; 70].join(".")).is_err());
    }

    #[test]
    fn record_type_round_trips() {
        for v in 0..=300u16 {
            assert_eq!(u16::from(RecordType::from(v)), v);
        }
        assert_eq!(Rcode::BadVers.header_bits(), 0);
        assert_eq!(Rcode::BadVers.extended_bits(), 1);
    }
}
