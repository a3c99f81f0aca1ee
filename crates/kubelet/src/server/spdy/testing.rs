//! A SPDY client for tests: opens streams and reads what the server sends, each frame
//! whole.

use super::{
    Cursor, Deflater, FLAG_FIN, GOAWAY, Headers, Inflater, PING, RST_STREAM, SYN_REPLY, SYN_STREAM,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Reply(u32),
    Data { id: u32, data: Vec<u8>, fin: bool },
    Reset { id: u32, status: u32 },
    Ping(u32),
    GoAway { last: u32, status: u32 },
    Other(u16),
}

pub(crate) struct Client<IO> {
    pub io: IO,
    deflater: Deflater,
    inflater: Inflater,
    /// Frames read while looking for others, handed out first.
    backlog: std::collections::VecDeque<Frame>,
}

/// A control frame's bytes.
pub(crate) fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    super::control(&mut f, kind, flags, body).expect("a control frame");
    f
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Client<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            deflater: Deflater::new().expect("deflater"),
            inflater: Inflater::new(),
            backlog: std::collections::VecDeque::new(),
        }
    }

    pub(crate) async fn raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// `SYN_STREAM` `id` with `headers`.
    pub(crate) async fn open(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) {
        let block = headers
            .iter()
            .fold(Headers::default(), |h, (n, v)| h.with(n, v))
            .encode();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&self.deflater.deflate(&block).expect("deflate"));
        let frame = control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &body);
        self.raw(&frame).await;
    }

    pub(crate) async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut f = id.to_be_bytes().to_vec();
        f.push(if fin { FLAG_FIN } else { 0 });
        f.extend_from_slice(&u32::try_from(data.len()).expect("len").to_be_bytes()[1..]);
        f.extend_from_slice(data);
        self.raw(&f).await;
    }

    pub(crate) async fn reset(&mut self, id: u32, status: u32) {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        self.raw(&control(RST_STREAM, 0, &body)).await;
    }

    pub(crate) async fn ping(&mut self, id: u32) {
        self.raw(&control(PING, 0, &id.to_be_bytes())).await;
    }

    /// The next frame, `None` once the server closed the connection.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        if let Some(f) = self.backlog.pop_front() {
            return Some(f);
        }
        self.read().await
    }

    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 8];
        self.io.read_exact(&mut head).await.ok()?;
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await.ok()?;
        if first & 0x8000_0000 == 0 {
            return Some(Frame::Data {
                id: first,
                data: body,
                fin: head[4] & FLAG_FIN != 0,
            });
        }
        let kind = u16::try_from(first & 0xffff).expect("kind");
        let mut r = Cursor(&body);
        Some(match kind {
            SYN_REPLY => {
                let id = r.u32().expect("id");
                let block = self.inflater.inflate(r.0).expect("inflate");
                Headers::decode(&block).expect("headers");
                Frame::Reply(id)
            }
            RST_STREAM => Frame::Reset {
                id: r.u32().expect("id"),
                status: r.u32().expect("status"),
            },
            PING => Frame::Ping(r.u32().expect("id")),
            GOAWAY => Frame::GoAway {
                last: r.u32().expect("last"),
                status: r.u32().expect("status"),
            },
            other => Frame::Other(other),
        })
    }

    /// The data of stream `id` until its `FIN` (other frames are skipped).
    pub(crate) async fn read_to_fin(&mut self, id: u32) -> Vec<u8> {
        let mut all = Vec::new();
        let mut others = std::collections::VecDeque::new();
        let mut backlog = std::mem::take(&mut self.backlog);
        loop {
            let frame = match backlog.pop_front() {
                Some(f) => Some(f),
                None => self.read().await,
            };
            match frame {
                Some(Frame::Data { id: i, data, fin }) if i == id => {
                    all.extend_from_slice(&data);
                    if fin {
                        others.extend(backlog);
                        self.backlog = others;
                        return all;
                    }
                }
                Some(f) => others.push_back(f),
                None => panic!("the connection closed before stream {id} finished"),
            }
        }
    }
}
