//! The SPDY server side against a client of the tests' own, a header block made by
//! another zlib (Python's), and a hostile peer.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::headers::dictionary;
use super::testing::{Client, Frame, control};
use super::*;

/// Adler-32, written out here so that the dictionary is checked against the protocol's
/// dictionary ID by other code than the one that uses it.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn the_dictionary_is_the_one_of_spdy_3() {
    assert_eq!(dictionary().len(), 1423);
    assert_eq!(adler32(dictionary()), 0xe3c6_a7c2);
}

#[test]
fn header_blocks_deflated_by_another_zlib_inflate_in_one_context() {
    // Python's zlib with the SPDY/3 dictionary and a sync flush per block, as Go's
    // SPDY framer writes them: the second block refers back into the first.
    let first = hex(
        "78bbe3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c2863515141500000000ffff",
    );
    let second = hex("225333a8a44a04000000ffff");
    let mut inflater = Inflater::new();
    let h = Headers::decode(&inflater.inflate(&first).expect("first")).expect("decode");
    assert_eq!(h.get("port"), Some("8080"));
    assert_eq!(h.get("requestid"), Some("0"));
    assert_eq!(h.get("streamtype"), Some("error"));
    let h = Headers::decode(&inflater.inflate(&second).expect("second")).expect("decode");
    assert_eq!(h.get("streamtype"), Some("data"));
}

#[test]
fn our_header_blocks_inflate_in_the_peers_context() {
    let mut deflater = Deflater::new().expect("deflater");
    let mut inflater = Inflater::new();
    for i in 0..5 {
        let h = Headers::default()
            .with("port", &format!("80{i}"))
            .with("x", "a\0b");
        let back = inflater
            .inflate(&deflater.deflate(&h.encode()).expect("deflate"))
            .expect("inflate");
        let back = Headers::decode(&back).expect("decode");
        assert_eq!(back.get("port"), Some(format!("80{i}").as_str()));
        assert_eq!(back.0[1].1, vec!["a".to_owned(), "b".to_owned()]);
    }
}

#[test]
fn a_header_block_that_inflates_past_the_bound_is_refused() {
    let mut deflater = Deflater::new().expect("deflater");
    // 1 MiB of one value compresses to a few KiB: a small frame, a large block.
    let big = "a".repeat(1 << 20);
    let bomb = deflater
        .deflate(&Headers::default().with("x", &big).encode())
        .expect("deflate");
    assert!(bomb.len() < MAX_CONTROL_FRAME);
    let err = Inflater::new().inflate(&bomb).expect_err("refused");
    assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
}

#[test]
fn malformed_blocks_are_errors_not_panics() {
    for block in [
        &[][..],
        &[0, 0, 0, 1][..],
        &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff][..],
        &[0, 0, 1, 0][..],
        &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        assert!(Headers::decode(block).is_err(), "{block:?}");
    }
    let twice = Headers::default().with("a", "1").with("a", "2").encode();
    assert!(Headers::decode(&twice).is_err());
    assert!(Inflater::new().inflate(b"not zlib at all").is_err());
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A session on one end of a pipe whose accepted streams echo what they receive, and a
/// client on the other.
fn echo_server(idle: Duration) -> (Client<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move {
        let mut session = Session::new(theirs, idle).expect("session");
        while let Some(pending) = session.accept().await {
            if pending.headers().get("refuse").is_some() {
                session.refuse(pending, status::CANCEL).await;
                continue;
            }
            let Ok(mut stream) = session.reply(pending).await else {
                break;
            };
            tokio::spawn(async move {
                while let Some(chunk) = stream.incoming.recv().await {
                    if stream.out.send(chunk).await.is_err() {
                        return;
                    }
                }
                stream.out.finish().await;
            });
        }
        session.close().await;
    });
    (Client::new(ours), server)
}

#[tokio::test]
async fn streams_are_answered_and_carry_data_both_ways_until_fin() {
    let (mut c, _server) = echo_server(Duration::from_secs(60));
    c.open(1, &[("streamtype", "data")], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    // Larger than one frame the server writes.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    c.data(1, &payload, true).await;
    assert_eq!(c.read_to_fin(1).await, payload);
    // A second stream, its headers in the same compression context.
    c.open(3, &[("streamtype", "data")], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(3)));
    c.data(3, b"again", true).await;
    assert_eq!(c.read_to_fin(3).await, b"again");
}

#[tokio::test]
async fn pings_are_echoed_and_refused_streams_reset() {
    let (mut c, _server) = echo_server(Duration::from_secs(60));
    c.ping(7).await;
    assert_eq!(c.next().await, Some(Frame::Ping(7)));
    c.open(1, &[("refuse", "yes")], false).await;
    assert_eq!(
        c.next().await,
        Some(Frame::Reset {
            id: 1,
            status: status::CANCEL
        })
    );
    // Unknown control frames and flow control are passed over.
    c.raw(&control(0x77, 0, b"whatever")).await;
    c.raw(&control(WINDOW_UPDATE, 0, &[0, 0, 0, 1, 0, 0, 1, 0]))
        .await;
    c.raw(&control(SETTINGS, 0, &[0, 0, 0, 0])).await;
    c.ping(9).await;
    assert_eq!(c.next().await, Some(Frame::Ping(9)));
}

#[tokio::test]
async fn stream_ids_must_be_odd_and_rising() {
    let (mut c, _server) = echo_server(Duration::from_secs(60));
    c.open(5, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(5)));
    for id in [3, 6] {
        c.open(id, &[], false).await;
        assert_eq!(
            c.next().await,
            Some(Frame::Reset {
                id,
                status: status::PROTOCOL_ERROR
            })
        );
    }
}

#[tokio::test]
async fn streams_beyond_the_bound_are_refused() {
    let (mut c, _server) = echo_server(Duration::from_secs(60));
    let mut id = 1;
    for _ in 0..MAX_STREAMS {
        c.open(id, &[], false).await;
        assert_eq!(c.next().await, Some(Frame::Reply(id)));
        id += 2;
    }
    c.open(id, &[], false).await;
    assert_eq!(
        c.next().await,
        Some(Frame::Reset {
            id,
            status: status::REFUSED_STREAM
        })
    );
    // Finishing one makes room again.
    c.data(1, b"", true).await;
    assert_eq!(c.read_to_fin(1).await, b"");
    c.open(id + 2, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(id + 2)));
}

#[tokio::test]
async fn a_huge_control_frame_ends_the_connection_without_being_read() {
    let (mut c, server) = echo_server(Duration::from_secs(60));
    // Declares 16 MiB and sends none of it: the server must not wait for (or allocate)
    // the body.
    c.raw(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff])
        .await;
    assert_eq!(
        c.next().await,
        Some(Frame::GoAway {
            last: 0,
            status: status::PROTOCOL_ERROR
        })
    );
    assert_eq!(c.next().await, None);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the session ends")
        .expect("no panic");
}

#[tokio::test]
async fn another_version_or_a_header_bomb_ends_the_connection() {
    let (mut c, _server) = echo_server(Duration::from_secs(60));
    c.raw(&[0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00])
        .await;
    assert!(matches!(c.next().await, Some(Frame::GoAway { .. })));
    assert_eq!(c.next().await, None);

    let (mut c, _server) = echo_server(Duration::from_secs(60));
    c.open(1, &[("x", &"b".repeat(1 << 20))], false).await;
    assert!(matches!(c.next().await, Some(Frame::GoAway { .. })));
    assert_eq!(c.next().await, None);
}

#[tokio::test]
async fn a_large_data_frame_reaches_the_stream_in_bounded_pieces() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut c = Client::new(ours);
    let server = tokio::spawn(async move {
        let mut session = Session::new(theirs, Duration::from_secs(60)).expect("session");
        let pending = session.accept().await.expect("stream");
        let mut stream = session.reply(pending).await.expect("reply");
        let reader = tokio::spawn(async move {
            let mut pieces = Vec::new();
            while let Some(chunk) = stream.incoming.recv().await {
                pieces.push(chunk.len());
            }
            pieces
        });
        // Keeps reading frames (the data) until the client goes.
        while session.accept().await.is_some() {}
        reader.await.expect("reader")
    });
    c.open(1, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    // One frame of the largest size the format allows.
    let big = vec![7u8; 0x00ff_ffff];
    c.data(1, &big, true).await;
    c.io.shutdown().await.expect("shutdown");
    let pieces = server.await.expect("server");
    assert_eq!(pieces.iter().sum::<usize>(), big.len());
    assert!(pieces.iter().all(|&n| n <= DATA_CHUNK), "{pieces:?}");
}

#[tokio::test]
async fn a_reset_from_the_peer_reaches_the_stream() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut c = Client::new(ours);
    let server = tokio::spawn(async move {
        let mut session = Session::new(theirs, Duration::from_secs(60)).expect("session");
        let pending = session.accept().await.expect("stream");
        let stream = session.reply(pending).await.expect("reply");
        let reset = stream.reset.clone();
        tokio::spawn(async move { while session.accept().await.is_some() {} });
        tokio::time::timeout(Duration::from_secs(10), reset.cancelled())
            .await
            .is_ok()
    });
    c.open(1, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    c.reset(1, status::CANCEL).await;
    assert!(server.await.expect("server"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_and_its_streams_reset() {
    let (mut c, server) = echo_server(Duration::from_secs(3600));
    c.open(1, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    // Activity keeps it open...
    tokio::time::sleep(Duration::from_secs(3000)).await;
    c.ping(1).await;
    assert_eq!(c.next().await, Some(Frame::Ping(1)));
    // ...silence for the whole period after the last frame ends it, not before.
    let quiet = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(7200), c.next()).await;
    assert_eq!(end, Ok(None));
    assert!(
        quiet.elapsed() >= Duration::from_secs(3600),
        "{:?}",
        quiet.elapsed()
    );
    server.await.expect("no panic");
}

#[tokio::test]
async fn a_stream_writer_after_the_connection_went_reports_it() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut c = Client::new(ours);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut session = Session::new(theirs, Duration::from_secs(60)).expect("session");
        let pending = session.accept().await.expect("stream");
        let stream = session.reply(pending).await.expect("reply");
        while session.accept().await.is_some() {}
        let _ = tx.send(stream);
    });
    c.open(1, &[], false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    drop(c);
    let stream = rx.await.expect("stream");
    assert!(stream.reset.is_cancelled());
    let mut refused = false;
    for _ in 0..1000 {
        if stream.out.send(Bytes::from_static(b"x")).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused);
}
