//! Answering one query: bytes in, bytes out, no I/O except the optional
//! upstream call for names outside the zone.
//!
//! The rules, and where they come from:
//! - A query is one question, OPCODE 0 (RFC 1035 §4.1.1); another opcode gets
//!   NOTIMP, a malformed query FORMERR, a message too short for a header or
//!   one with QR set is dropped (answering responses invites loops).
//! - Names in the zone are answered authoritatively (AA). An existing name
//!   without the asked type is NODATA: NOERROR, no answers, the SOA in the
//!   authority section (RFC 2308 §2.2). An absent name inside the cluster
//!   domain is NXDOMAIN with the SOA (RFC 2308 §3), and so is a name below one
//!   that is absent; an empty non-terminal is NODATA (RFC 8020).
//! - An ExternalName CNAME is returned for every type but CNAME's own and is
//!   followed while its target stays inside the zone (RFC 1034 §4.3.2); a
//!   target outside is left to the client's resolver.
//! - Over UDP the answer must fit the client's limit: 512 bytes, or the
//!   payload size of its OPT record (RFC 6891 §6.2.5), never more than the
//!   server's own [`Transport::Udp`] `max`. An answer RRset that does not fit
//!   is left out whole and TC is set so the client retries over TCP (RFC 2181
//!   §9, RFC 7766 §5); additional records that do not fit are just left out.
//! - A client that sent an OPT record gets one back (RFC 6891 §6.1.1); an
//!   EDNS version above 0 gets BADVERS (§6.1.3).
//! - Names outside the zone go to the [`Upstream`] if one is configured and
//!   are REFUSED otherwise: this server never sends anything anywhere by
//!   itself. [`respond`] with [`Forwarding::Defer`] leaves the upstream call
//!   to the caller (the server's forwarding pool), so answering a cluster
//!   name never waits on an upstream.
//! - ANY is answered minimally (RFC 8482): a name holding a CNAME gets the
//!   CNAME (§4.2), any other existing name one synthesized HINFO "RFC8482"
//!   record, an empty non-terminal NODATA. Never every RRset, so ANY is no
//!   better an amplifier than any other type.
//!
//! Case: the question is echoed as the client wrote it, and answer owners are
//! pointers to it, so the answer keeps the client's case (RFC 4343 §4.1).

use crate::wire::{
    flags, parse_question, write_u16_at, Edns, Header, Question, Rcode, RecordType, CLASS_ANY,
    CLASS_IN, EDNS_PAYLOAD, HEADER_LEN, MIN_UDP_PAYLOAD, PTR_TO_QNAME,
};
use crate::zone::{Lookup, Node, RrSet, Zone, MAX_CNAME_HOPS};

/// How the query arrived, which decides the size limit of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP; `max` is the server's own ceiling (its receive and send buffers),
    /// applied on top of the client's 512 bytes or EDNS payload size.
    Udp { max: usize },
    /// TCP (RFC 7766): up to 65,535 bytes, never truncated.
    Tcp,
}

/// Where queries for names outside the zone go. Implemented by
/// [`crate::UdpUpstream`]; tests use their own.
pub trait Upstream {
    /// Sends `query` unchanged and returns the response, whose ID must match;
    /// `None` on timeout or error (the client then gets SERVFAIL).
    fn forward(&self, query: &[u8]) -> Option<Vec<u8>>;
}

/// Why a message got no response at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than a header: there is no ID to answer to.
    ShortHeader,
    /// QR set: a response, never answered.
    NotAQuery,
}

/// What [`answer_into`] did; the server counts these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered from the zone or refused, with this RCODE; `truncated` when TC was set.
    Answered {
        rcode: Rcode,
        truncated: bool,
    },
    /// Relayed from the upstream (or SERVFAIL when it failed: `ok` false).
    Forwarded {
        ok: bool,
    },
    /// The name is outside the zone and [`Forwarding::Defer`] was asked:
    /// nothing written; the caller forwards it.
    Deferred,
    /// SERVFAIL without asking the upstream: the forwarding pool was full
    /// ([`Forwarding::Shed`]).
    Shed,
    Dropped(DropReason),
}

/// What to do with a name outside the zone.
#[derive(Clone, Copy)]
pub enum Forwarding<'a> {
    /// No upstream: REFUSED.
    Refuse,
    /// Ask this upstream now, blocking until it answers or times out.
    Ask(&'a dyn Upstream),
    /// An upstream exists but the caller asks it later: [`Outcome::Deferred`]
    /// with `out` empty.
    Defer,
    /// An upstream exists but has no room for this query: SERVFAIL at once.
    Shed,
    /// The upstream was asked and gave nothing in time: SERVFAIL.
    Failed,
}

/// Answers one DNS message. `None` means drop it. Pure except for the call to
/// `upstream`, which happens only for names outside the zone.
pub fn answer(
    zone: &Zone,
    query: &[u8],
    transport: Transport,
    upstream: Option<&dyn Upstream>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(MIN_UDP_PAYLOAD);
    match answer_into(zone, query, transport, upstream, &mut out) {
        Outcome::Dropped(_) => None,
        _ => Some(out),
    }
}

/// [`answer`] into a caller's buffer (cleared first), so a server loop
/// reuses one buffer and allocates nothing per query. On
/// [`Outcome::Dropped`] `out` is left empty.
pub fn answer_into(
    zone: &Zone,
    query: &[u8],
    transport: Transport,
    upstream: Option<&dyn Upstream>,
    out: &mut Vec<u8>,
) -> Outcome {
    let forwarding = upstream.map_or(Forwarding::Refuse, Forwarding::Ask);
    respond(zone, query, transport, forwarding, out)
}

/// [`answer_into`] with the choice of what happens to a name outside the
/// zone spelled out; everything else is answered the same way.
pub fn respond(
    zone: &Zone,
    query: &[u8],
    transport: Transport,
    forwarding: Forwarding<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    let Ok(header) = Header::parse(query) else {
        return Outcome::Dropped(DropReason::ShortHeader);
    };
    if header.is_response() {
        return Outcome::Dropped(DropReason::NotAQuery);
    }
    let ra = !matches!(forwarding, Forwarding::Refuse);
    if header.opcode() != 0 {
        return header_only(out, &header, Rcode::NotImp, ra);
    }
    let Ok(question) = parse_question(query, &header) else {
        return header_only(out, &header, Rcode::FormErr, ra);
    };
    let echo = query.get(HEADER_LEN..question.end).unwrap_or(&[]);
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp { max } => {
            let client = question.edns.map_or(MIN_UDP_PAYLOAD, |e| {
                usize::from(e.payload).max(MIN_UDP_PAYLOAD)
            });
            client.min(max.max(MIN_UDP_PAYLOAD))
        }
    };
    let mut w = Writer::start(out, &header, echo, question.edns, limit, ra);

    if question.edns.is_some_and(|e| e.version > 0) {
        return w.finish(Rcode::BadVers, false);
    }
    if question.qclass != CLASS_IN && question.qclass != CLASS_ANY {
        return w.finish(Rcode::Refused, false);
    }
    match question.qtype {
        // No zone transfers; the zone is not a primary for anyone.
        RecordType::Axfr | RecordType::Ixfr | RecordType::Opt => {
            return w.finish(Rcode::Refused, false)
        }
        _ => {}
    }

    match zone.lookup(question.name.as_bytes()) {
        Lookup::Found(node) => answer_found(zone, node, &question, w),
        Lookup::NxDomain => {
            w.authority(zone.soa_record());
            w.finish(Rcode::NxDomain, true)
        }
        Lookup::Outside => match forwarding {
            Forwarding::Refuse => w.finish(Rcode::Refused, false),
            Forwarding::Ask(up) => forward(up, query, limit, w),
            Forwarding::Defer => {
                w.out.clear();
                Outcome::Deferred
            }
            Forwarding::Shed => {
                w.finish(Rcode::ServFail, false);
                Outcome::Shed
            }
            Forwarding::Failed => {
                w.finish(Rcode::ServFail, false);
                Outcome::Forwarded { ok: false }
            }
        },
    }
}

/// Answers for a name the zone holds: the RRset, a CNAME chain, or NODATA.
fn answer_found<'z>(
    zone: &'z Zone,
    mut node: &'z Node,
    q: &Question,
    mut w: Writer<'_>,
) -> Outcome {
    let mut owner: Option<&'z [u8]> = None; // None: the question name
    let mut hops = 0;
    let mut wanted: Option<&'z RrSet> = None;
    loop {
        if q.qtype == RecordType::Any {
            // RFC 8482: one small answer, never every RRset.
            if let Some(cname) = node.get(RecordType::Cname) {
                w.answer(cname, owner);
            } else if node.rrsets.is_empty() {
                w.authority(zone.soa_record()); // an empty non-terminal: NODATA
            } else {
                w.answer(zone.any_answer(), owner);
            }
            break;
        }
        if let Some(set) = node.get(q.qtype) {
            w.answer(set, owner);
            wanted = Some(set);
            break;
        }
        let Some(cname) = node.get(RecordType::Cname) else {
            w.authority(zone.soa_record()); // NODATA
            break;
        };
        w.answer(cname, owner);
        let Some(target) = cname.target.as_deref() else {
            break;
        };
        if hops >= MAX_CNAME_HOPS {
            break;
        }
        hops += 1;
        match zone.lookup(target) {
            Lookup::Found(next) => {
                node = next;
                owner = Some(target);
            }
            Lookup::NxDomain => {
                w.authority(zone.soa_record());
                return w.finish(Rcode::NxDomain, true);
            }
            Lookup::Outside => break, // the client's resolver follows it
        }
    }
    if let Some(set) = wanted {
        for extra in &set.extra {
            w.additional(&extra.bytes, extra.count);
        }
    }
    w.finish(Rcode::NoError, true)
}

fn forward(up: &dyn Upstream, query: &[u8], limit: usize, w: Writer<'_>) -> Outcome {
    match up.forward(query) {
        Some(response) if response.len() <= limit => {
            w.out.clear();
            w.out.extend_from_slice(&response);
            Outcome::Forwarded { ok: true }
        }
        Some(_) => {
            // Larger than this client takes over UDP: tell it to use TCP.
            let mut w = w;
            w.tc = true;
            w.finish(Rcode::NoError, false);
            Outcome::Forwarded { ok: true }
        }
        None => {
            w.finish(Rcode::ServFail, false);
            Outcome::Forwarded { ok: false }
        }
    }
}

/// A response with the header alone (FORMERR, NOTIMP): the question may be
/// unreadable, so it is not echoed.
fn header_only(out: &mut Vec<u8>, query: &Header, rcode: Rcode, ra: bool) -> Outcome {
    let mut f = flags::QR | (query.flags & (flags::OPCODE_MASK | flags::RD)) | rcode.header_bits();
    if ra {
        f |= flags::RA;
    }
    out.extend_from_slice(&query.id.to_be_bytes());
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Outcome::Answered {
        rcode,
        truncated: false,
    }
}

/// Size of the OPT record this server appends.
const OPT_LEN: usize = 11;

/// Writes a response section by section, keeping it under the size limit.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    id: u16,
    rd: bool,
    ra: bool,
    edns: Option<Edns>,
    /// Room for everything but the OPT record.
    room: usize,
    counts: [u16; 3],
    tc: bool,
    /// Where a chased CNAME target's name was last written, for pointers.
    chased: Option<(usize, usize)>,
}

impl<'a> Writer<'a> {
    fn start(
        out: &'a mut Vec<u8>,
        query: &Header,
        echo: &[u8],
        edns: Option<Edns>,
        limit: usize,
        ra: bool,
    ) -> Writer<'a> {
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(echo);
        let opt = if edns.is_some() { OPT_LEN } else { 0 };
        Writer {
            out,
            id: query.id,
            rd: query.recursion_desired(),
            ra,
            edns,
            room: limit.saturating_sub(opt),
            counts: [0; 3],
            tc: false,
            chased: None,
        }
    }

    /// Appends a whole RRset to the answer section, owned by the question
    /// name (`owner` None) or by `owner`; sets TC instead if it does not fit.
    fn answer(&mut self, set: &RrSet, owner: Option<&[u8]>) {
        if self.tc {
            return;
        }
        let n = set.tails.len();
        let tails: usize = set.tails.iter().map(|t| t.len()).sum();
        let owners = match owner {
            None => 2 * n,
            Some(name) => name.len() + 2 * n.saturating_sub(1),
        };
        let Ok(count) = u16::try_from(n) else {
            self.tc = true;
            return;
        };
        if self.out.len() + owners + tails > self.room {
            self.tc = true;
            return;
        }
        for tail in &set.tails {
            match owner {
                None => self.out.extend_from_slice(&PTR_TO_QNAME),
                Some(name) => self.write_chased_owner(name),
            }
            self.out.extend_from_slice(tail);
        }
        self.counts[0] = self.counts[0].saturating_add(count);
    }

    /// A CNAME target's name: in full the first time, then as a pointer.
    fn write_chased_owner(&mut self, name: &[u8]) {
        let at = self.out.len();
        match self.chased {
            Some((offset, len))
                if self.out.get(offset..offset + len) == Some(name) && offset < 0x3FFF =>
            {
                let ptr = 0xC000 | u16::try_from(offset).unwrap_or(0);
                self.out.extend_from_slice(&ptr.to_be_bytes());
            }
            _ => {
                self.out.extend_from_slice(name);
                self.chased = Some((at, name.len()));
            }
        }
    }

    /// Appends the SOA to the authority section; TC if it does not fit.
    fn authority(&mut self, soa: &[u8]) {
        if self.tc || soa.is_empty() {
            return;
        }
        if self.out.len() + soa.len() > self.room {
            self.tc = true;
            return;
        }
        self.out.extend_from_slice(soa);
        self.counts[1] = self.counts[1].saturating_add(1);
    }

    /// Appends an additional-section RRset if it fits; never sets TC.
    fn additional(&mut self, bytes: &[u8], count: u16) {
        if self.tc || self.out.len() + bytes.len() > self.room {
            return;
        }
        self.out.extend_from_slice(bytes);
        self.counts[2] = self.counts[2].saturating_add(count);
    }

    /// Fills in the header, appends the OPT record, and reports the outcome.
    fn finish(self, rcode: Rcode, authoritative: bool) -> Outcome {
        let mut f = flags::QR | rcode.header_bits();
        if authoritative {
            f |= flags::AA;
        }
        if self.tc {
            f |= flags::TC;
        }
        if self.rd {
            f |= flags::RD;
        }
        if self.ra {
            f |= flags::RA;
        }
        let mut additional = self.counts[2];
        if self.edns.is_some() {
            // Root owner, TYPE OPT, CLASS = our payload size, TTL = extended
            // RCODE, version 0, no flags; no options.
            self.out.push(0);
            self.out
                .extend_from_slice(&u16::from(RecordType::Opt).to_be_bytes());
            self.out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            self.out
                .extend_from_slice(&[rcode.extended_bits(), 0, 0, 0, 0, 0]);
            additional = additional.saturating_add(1);
        }
        let header = self.out.as_mut_slice();
        write_u16_at(header, 0, self.id);
        write_u16_at(header, 2, f);
        write_u16_at(header, 4, 1);
        write_u16_at(header, 6, self.counts[0]);
        write_u16_at(header, 8, self.counts[1]);
        write_u16_at(header, 10, additional);
        Outcome::Answered {
            rcode,
            truncated: self.tc,
        }
    }
}
