//! The codec against well-formed and hostile packets: compression loops and forward
//! pointers, counts larger than the packet, truncated records, over-long names, and
//! random damage to a good reply.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::test_server::{Query, Rec, name_bytes, reply, with_soa};
use super::wire::{
    self, Question, RData, RecordType, Reject, WireError, encode_query, parse_reply, read_name,
};

const ID: u16 = 0x1234;

fn question(name: &str, qtype: RecordType) -> Question {
    Question {
        name: name.to_owned(),
        qtype,
    }
}

/// The test server's view of `question` with ID [`ID`], to build replies to it.
fn query(q: &Question) -> Query {
    let code: u16 = if q.qtype == RecordType::A { 1 } else { 28 };
    let question = [name_bytes(&q.name), code.to_be_bytes().to_vec(), vec![0, 1]].concat();
    Query {
        id: ID,
        name: q.name.clone(),
        qtype: code,
        tcp: false,
        question,
    }
}

fn malformed(packet: &[u8], q: &Question) -> Option<WireError> {
    match parse_reply(packet, ID, q) {
        Err(Reject::Malformed(error)) => Some(error),
        _ => None,
    }
}

#[test]
fn a_query_is_encoded_with_recursion_desired_and_optional_edns0() -> Result<(), WireError> {
    let q = question("web.shop.svc", RecordType::Aaaa);
    let packet = encode_query(ID, &q, false)?;
    let mut expected = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(b"\x03web\x04shop\x03svc\x00\x00\x1c\x00\x01");
    assert_eq!(packet, expected);
    let with_edns = encode_query(ID, &q, true)?;
    assert_eq!(with_edns[11], 1);
    assert_eq!(
        &with_edns[expected.len()..],
        &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
    );
    Ok(())
}

#[test]
fn names_that_do_not_fit_the_wire_are_not_encoded() {
    let long_label = question(&"a".repeat(64), RecordType::A);
    assert_eq!(
        encode_query(ID, &long_label, false),
        Err(WireError::BadLabel)
    );
    let long_name = question(&["a".repeat(63).as_str(); 5].join("."), RecordType::A);
    assert_eq!(
        encode_query(ID, &long_name, false),
        Err(WireError::NameTooLong)
    );
    assert_eq!(
        encode_query(ID, &question("a..b", RecordType::A), false),
        Err(WireError::BadLabel)
    );
}

#[test]
fn a_reply_is_read_with_its_records_and_compressed_names() {
    let q = question("Web", RecordType::A);
    let records = [
        Rec::Cname("web", "b.example"),
        Rec::A("b.example", Ipv4Addr::new(10, 0, 0, 1)),
    ];
    let reply = parse_reply(&reply(&query(&q), 0, false, &records), ID, &q);
    let reply = reply.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((reply.truncated, reply.rcode), (false, 0));
    let data: Vec<_> = reply
        .records
        .iter()
        .map(|r| (r.name.as_str(), r.data.clone(), r.ttl))
        .collect();
    assert_eq!(
        data,
        [
            ("web", RData::Cname("b.example".into()), 60),
            ("b.example", RData::A(Ipv4Addr::new(10, 0, 0, 1)), 60)
        ]
    );
}

#[test]
fn packets_for_another_query_are_not_ours() {
    let q = question("x", RecordType::A);
    let good = reply(&query(&q), 0, false, &[Rec::A("x", Ipv4Addr::LOCALHOST)]);
    assert!(parse_reply(&good, ID, &q).is_ok());
    assert_eq!(parse_reply(&good, ID + 1, &q), Err(Reject::NotOurs));
    assert_eq!(
        parse_reply(&good, ID, &question("y", RecordType::A)),
        Err(Reject::NotOurs)
    );
    assert_eq!(
        parse_reply(&good, ID, &question("x", RecordType::Aaaa)),
        Err(Reject::NotOurs)
    );
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    assert_eq!(parse_reply(&not_response, ID, &q), Err(Reject::NotOurs));
    assert_eq!(parse_reply(&good[..11], ID, &q), Err(Reject::NotOurs));
    assert_eq!(parse_reply(&good[..15], ID, &q), Err(Reject::NotOurs));
}

#[test]
fn a_truncated_reply_is_taken_without_its_records() {
    let q = question("x", RecordType::A);
    let mut packet = reply(&query(&q), 0, true, &[]);
    packet[7] = 200;
    let reply = parse_reply(&packet, ID, &q).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(reply.truncated && reply.records.is_empty());
}

#[test]
fn counts_larger_than_the_packet_and_cut_records_are_malformed() {
    let q = question("x", RecordType::Aaaa);
    let good = reply(&query(&q), 0, false, &[Rec::Aaaa("x", Ipv6Addr::LOCALHOST)]);
    let mut more = good.clone();
    more[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(malformed(&more, &q), Some(WireError::Truncated));
    for cut in [good.len() - 1, good.len() - 16, good.len() - 20] {
        assert_eq!(
            malformed(&good[..cut], &q),
            Some(WireError::Truncated),
            "cut at {cut}"
        );
    }
    let mut wrong_length = good.clone();
    let rdlength = good.len() - 18;
    wrong_length[rdlength..rdlength + 2].copy_from_slice(&4u16.to_be_bytes());
    wrong_length.truncate(good.len() - 12);
    assert_eq!(malformed(&wrong_length, &q), Some(WireError::BadRecord));
}

#[test]
fn compression_loops_and_forward_pointers_are_refused() {
    // A name that points at itself, and one that points ahead of itself.
    assert_eq!(read_name(&[0xc0, 0x00], 0), Err(WireError::BadPointer));
    assert_eq!(
        read_name(&[0xc0, 0x02, 0x00], 0),
        Err(WireError::BadPointer)
    );
    // Two names pointing at each other: the second's pointer goes back, the first's forward.
    let packet = [1, b'a', 0xc0, 4, 1, b'b', 0xc0, 0];
    assert_eq!(read_name(&packet, 4), Err(WireError::BadPointer));
    // A long chain of pointers, each one going back to the previous one.
    let mut chain = vec![0u8];
    for i in 0..40u8 {
        chain.extend_from_slice(&[0xc0, if i == 0 { 0 } else { 1 + 2 * (i - 1) }]);
    }
    assert_eq!(
        read_name(&chain, chain.len() - 2),
        Err(WireError::TooManyPointers)
    );
    assert_eq!(read_name(&[0x80, 0], 0), Err(WireError::BadLabel));
    assert_eq!(read_name(&[0xc0], 0), Err(WireError::Truncated));
}

#[test]
fn names_over_255_bytes_are_refused_even_through_pointers() {
    let mut packet = Vec::new();
    for _ in 0..4 {
        packet.push(63);
        packet.extend(std::iter::repeat_n(b'a', 63));
    }
    packet.push(0);
    assert_eq!(read_name(&packet, 0), Err(WireError::NameTooLong));
    // 3 labels of 63 (193 bytes), then a label of 63 and a pointer back to them: 257.
    let mut pointed = packet[..192].to_vec();
    pointed.push(0);
    pointed.extend_from_slice(&packet[..64]);
    pointed.extend_from_slice(&[0xc0, 0]);
    assert_eq!(read_name(&pointed, 193), Err(WireError::NameTooLong));
    assert_eq!(
        read_name(&pointed, 0).map(|(n, end)| (n.len(), end)),
        Ok((191, 193))
    );
}

#[test]
fn odd_bytes_in_names_are_read_as_question_marks() {
    let (name, end) = read_name(b"\x03a.b\x02\xff\x07\x00", 0).unwrap_or_default();
    assert_eq!((name.as_str(), end), ("a?b.??", 8));
}

#[test]
fn random_damage_to_a_reply_never_panics() {
    let q = question("web.example", RecordType::A);
    let records = [
        Rec::Cname("web.example", "b.example"),
        Rec::A("b.example", Ipv4Addr::LOCALHOST),
    ];
    let good = reply(&query(&q), 0, false, &records);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut packet = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % packet.len();
            packet[at] = next() as u8;
        }
        packet.truncate(1 + (next() as usize) % (good.len() + 8));
        if let Ok(reply) = parse_reply(&packet, ID, &q) {
            assert!(reply.records.len() <= 2);
        }
    }
}

#[test]
fn a_reply_keeps_at_most_128_records() {
    let q = question("x", RecordType::A);
    let records: Vec<Rec> = (0..200)
        .map(|i| Rec::A("x", Ipv4Addr::new(10, 0, 0, i as u8)))
        .collect();
    let reply = parse_reply(&reply(&query(&q), 0, false, &records), ID, &q);
    assert_eq!(reply.map(|r| r.records.len()), Ok(128));
    let _ = wire::EDNS_PAYLOAD;
}

#[test]
fn the_negative_ttl_is_the_lower_of_the_soa_ttl_and_minimum() {
    let q = question("gone", RecordType::A);
    let parse = |packet: Vec<u8>| parse_reply(&packet, ID, &q).map(|r| r.negative_ttl);
    assert_eq!(
        parse(with_soa(reply(&query(&q), 3, false, &[]), 30, 5)),
        Ok(Some(5))
    );
    assert_eq!(
        parse(with_soa(reply(&query(&q), 3, false, &[]), 2, 5)),
        Ok(Some(2))
    );
    assert_eq!(parse(reply(&query(&q), 3, false, &[])), Ok(None));
    let mut cut = with_soa(reply(&query(&q), 0, false, &[]), 30, 5);
    cut.truncate(cut.len() - 2);
    assert_eq!(parse(cut), Ok(None));
}
