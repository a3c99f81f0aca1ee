//! The DNS wire format as far as a stub resolver needs it: one question out (A or AAAA,
//! class IN, recursion desired) and a reply read back (its header, its question and the
//! A, AAAA and CNAME records of its answer section). Every length, count and compression
//! pointer is checked against the packet; no count read from the wire sizes an allocation.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of the fixed header.
const HEADER_LEN: usize = 12;
/// Longest name on the wire, labels and their length bytes and the root byte (RFC 1035).
const MAX_NAME_WIRE: usize = 255;
/// Most compression pointers followed in one name. Pointers must also go strictly
/// backwards, so a loop is impossible anyway; this bounds the work of a long chain.
const MAX_POINTERS: usize = 32;
/// Most answer records kept from one reply; further ones are not read.
const MAX_RECORDS: usize = 128;
/// The UDP payload size advertised in an EDNS0 OPT record (`options edns0`): the size
/// that avoids IP fragmentation on common paths (the 2020 DNS flag day's figure).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;

/// The response codes a resolver acts upon.
pub(crate) const RCODE_NOERROR: u8 = 0;
pub(crate) const RCODE_SERVFAIL: u8 = 2;
pub(crate) const RCODE_NXDOMAIN: u8 = 3;

/// The address families asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordType {
    /// An IPv4 address.
    A,
    /// An IPv6 address.
    Aaaa,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => TYPE_A,
            RecordType::Aaaa => TYPE_AAAA,
        }
    }
}

/// One question: an absolute name, without its trailing dot, and a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Question {
    pub name: String,
    pub qtype: RecordType,
}

/// What is wrong with a packet or a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("the packet ends inside a field")]
    Truncated,
    #[error("a name is longer than 255 bytes")]
    NameTooLong,
    #[error("a label is empty or longer than 63 bytes")]
    BadLabel,
    #[error("a compression pointer does not point backwards")]
    BadPointer,
    #[error("too many compression pointers in one name")]
    TooManyPointers,
    #[error("a record's data does not fit its type")]
    BadRecord,
}

/// The data of an answer record that the resolver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// A zone's SOA, of which only the negative-caching TTL (`minimum`) is kept.
    Soa(u32),
}

/// An answer record: its owner name (lower case, no trailing dot), its TTL and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

/// A reply that belongs to the question asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The TC bit: the answer did not fit, ask again over TCP. Its records are not read.
    pub truncated: bool,
    pub rcode: u8,
    pub records: Vec<Record>,
    /// How long the absence of an answer may be cached (RFC 2308): the lower of the
    /// authority section's SOA TTL and its `minimum`; `None` without an SOA.
    pub negative_ttl: Option<u32>,
}

/// Why a packet is not taken as the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not a reply to this query (another ID, another question, not a response, too
    /// short to tell): ignored, the resolver keeps waiting.
    NotOurs,
    /// The reply to this query, but unreadable.
    Malformed(WireError),
}

/// Encodes a query with ID `id` for `question`, recursion desired, with an EDNS0 OPT
/// record advertising [`EDNS_PAYLOAD`] bytes when `edns0`.
pub(crate) fn encode_query(
    id: u16,
    question: &Question,
    edns0: bool,
) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(HEADER_LEN + question.name.len() + 2 + 4 + 11);
    for field in [id, FLAG_RD, 1, 0, 0, u16::from(edns0)] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    encode_name(&question.name, &mut out)?;
    out.extend_from_slice(&question.qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns0 {
        out.push(0);
        for field in [TYPE_OPT, EDNS_PAYLOAD, 0, 0, 0] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }
    Ok(out)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let mut wire_len = 1;
    for label in name.split('.').filter(|_| !name.is_empty()) {
        if label.is_empty() || label.len() > 63 {
            return Err(WireError::BadLabel);
        }
        wire_len += label.len() + 1;
        if wire_len > MAX_NAME_WIRE {
            return Err(WireError::NameTooLong);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Reads `packet` as the reply to the query `id` for `question`.
pub(crate) fn parse_reply(packet: &[u8], id: u16, question: &Question) -> Result<Reply, Reject> {
    let header = packet.get(..HEADER_LEN).ok_or(Reject::NotOurs)?;
    let field = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let flags = field(2);
    if field(0) != id || flags & FLAG_QR == 0 || field(4) != 1 {
        return Err(Reject::NotOurs);
    }
    let after_question = read_question(packet, question).ok_or(Reject::NotOurs)?;
    let truncated = flags & FLAG_TC != 0;
    let rcode = (flags & 0x000f) as u8;
    if truncated {
        return Ok(Reply {
            truncated,
            rcode,
            records: Vec::new(),
            negative_ttl: None,
        });
    }
    let (records, after) =
        read_records(packet, after_question, field(6)).map_err(Reject::Malformed)?;
    let negative_ttl = after.and_then(|pos| negative_ttl(packet, pos, field(8)));
    Ok(Reply {
        truncated,
        rcode,
        records,
        negative_ttl,
    })
}

/// The negative-caching TTL of the first SOA among the `count` authority records at
/// `pos`; `None` when there is none or a record cannot be read.
fn negative_ttl(packet: &[u8], mut pos: usize, count: u16) -> Option<u32> {
    for _ in 0..count.min(MAX_RECORDS as u16) {
        let (record, next) = read_record(packet, pos).ok()?;
        if let Some(Record {
            ttl,
            data: RData::Soa(minimum),
            ..
        }) = record
        {
            return Some(ttl.min(minimum));
        }
        pos = next;
    }
    None
}

/// Checks the question section against `question`; returns the offset after it.
fn read_question(packet: &[u8], question: &Question) -> Option<usize> {
    let (name, pos) = read_name(packet, HEADER_LEN).ok()?;
    let qtype = read_u16(packet, pos).ok()?;
    let qclass = read_u16(packet, pos + 2).ok()?;
    let same = name.eq_ignore_ascii_case(&question.name)
        && qtype == question.qtype.code()
        && qclass == CLASS_IN;
    same.then_some(pos + 4)
}

/// Reads up to `count` answer records from `pos`, keeping those of class IN and type A,
/// AAAA, CNAME or SOA (at most [`MAX_RECORDS`]); returns them and the offset after the
/// section, `None` when the section was not read to its end.
fn read_records(
    packet: &[u8],
    mut pos: usize,
    count: u16,
) -> Result<(Vec<Record>, Option<usize>), WireError> {
    let mut records = Vec::new();
    for _ in 0..count {
        if records.len() == MAX_RECORDS {
            return Ok((records, None));
        }
        let (record, next) = read_record(packet, pos)?;
        records.extend(record);
        pos = next;
    }
    Ok((records, Some(pos)))
}

fn read_record(packet: &[u8], pos: usize) -> Result<(Option<Record>, usize), WireError> {
    let (name, pos) = read_name(packet, pos)?;
    let rtype = read_u16(packet, pos)?;
    let class = read_u16(packet, pos + 2)?;
    let ttl = read_u32(packet, pos + 4)?;
    let len = usize::from(read_u16(packet, pos + 8)?);
    let start = pos + 10;
    let rdata = packet.get(start..start + len).ok_or(WireError::Truncated)?;
    let end = start + len;
    if class != CLASS_IN {
        return Ok((None, end));
    }
    let data = match rtype {
        TYPE_A => RData::A(
            <[u8; 4]>::try_from(rdata)
                .map_err(|_| WireError::BadRecord)?
                .into(),
        ),
        TYPE_AAAA => RData::Aaaa(
            <[u8; 16]>::try_from(rdata)
                .map_err(|_| WireError::BadRecord)?
                .into(),
        ),
        TYPE_CNAME => {
            let (target, after) = read_name(packet, start)?;
            if after != end {
                return Err(WireError::BadRecord);
            }
            RData::Cname(target)
        }
        TYPE_SOA => RData::Soa(read_soa_minimum(packet, start, end)?),
        _ => return Ok((None, end)),
    };
    Ok((Some(Record { name, ttl, data }), end))
}

/// The `minimum` field of the SOA data from `start` to `end`: after two names and four
/// 32-bit fields.
fn read_soa_minimum(packet: &[u8], start: usize, end: usize) -> Result<u32, WireError> {
    let (_, after_mname) = read_name(packet, start)?;
    let (_, after_rname) = read_name(packet, after_mname)?;
    if after_rname + 20 != end {
        return Err(WireError::BadRecord);
    }
    read_u32(packet, after_rname + 16)
}

fn read_u32(packet: &[u8], pos: usize) -> Result<u32, WireError> {
    Ok(u32::from(read_u16(packet, pos)?) << 16 | u32::from(read_u16(packet, pos + 2)?))
}

fn read_u16(packet: &[u8], pos: usize) -> Result<u16, WireError> {
    match packet.get(pos..pos + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(WireError::Truncated),
    }
}

/// Reads the name at `pos`, following compression pointers; returns it (lower case, no
/// trailing dot, `?` for bytes a host name cannot hold) and the offset after it where it
/// sits. Each pointer must point before the start of the labels that led to it.
pub(crate) fn read_name(packet: &[u8], mut pos: usize) -> Result<(String, usize), WireError> {
    let mut name = String::new();
    let mut wire_len = 1;
    let mut after = None;
    let mut pointers = 0;
    let mut floor = pos;
    loop {
        let len = *packet.get(pos).ok_or(WireError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => break,
            0x00 => {
                let len = usize::from(len);
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(WireError::Truncated)?;
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE {
                    return Err(WireError::NameTooLong);
                }
                push_label(&mut name, label);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *packet.get(pos + 1).ok_or(WireError::Truncated)?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                pointers += 1;
                if target >= floor {
                    return Err(WireError::BadPointer);
                }
                if pointers > MAX_POINTERS {
                    return Err(WireError::TooManyPointers);
                }
                after.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
    Ok((name, after.unwrap_or(pos + 1)))
}

fn push_label(name: &mut String, label: &[u8]) {
    if !name.is_empty() {
        name.push('.');
    }
    name.extend(label.iter().map(|&b| match b {
        b'.' => '?',
        b if b.is_ascii_graphic() => char::from(b.to_ascii_lowercase()),
        _ => '?',
    }));
}
