//! The reading side of a [`Session`](super::Session), run as its own task: frames are
//! read whole whatever the session's caller does, data goes to the open streams and each
//! stream the peer opens is handed to [`Session::accept`](super::Session::accept).

use std::collections::HashMap;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Activity, Cursor, DATA_CHUNK, Error, FLAG_FIN, GOAWAY, HEADERS, Headers, INCOMING_QUEUE,
    Inflater, MAX_CONTROL_FRAME, MAX_STREAMS, Open, Out, PING, Pending, RST_STREAM, SETTINGS,
    SYN_REPLY, SYN_STREAM, VERSION, WINDOW_UPDATE, protocol, status,
};

/// The reading side of a session.
pub(super) struct Reader<IO> {
    pub(super) io: ReadHalf<IO>,
    pub(super) frames: mpsc::Sender<Out>,
    pub(super) accepted: mpsc::Sender<Pending>,
    pub(super) open: HashMap<u32, Open>,
    pub(super) next_id: u32,
    pub(super) last_accepted: u32,
    pub(super) inflater: Inflater,
    pub(super) activity: Activity,
    pub(super) gone: CancellationToken,
    /// Fires when reading ended (and with `gone`): every stream is reset, what is
    /// queued is still written.
    pub(super) streams: CancellationToken,
}

impl<IO> Reader<IO>
where
    IO: AsyncRead + Send + 'static,
{
    /// Reads until the connection ends. Dropping the reader (its `open` streams and its
    /// `accepted` sender) ends every stream's incoming data and
    /// [`Session::accept`](super::Session::accept).
    pub(super) async fn run(mut self) {
        loop {
            let gone = self.gone.clone();
            let read = tokio::select! {
                () = gone.cancelled() => return,
                r = self.read_frame() => r,
            };
            match read {
                Ok(Some(pending)) => {
                    let sent = tokio::select! {
                        () = gone.cancelled() => return,
                        r = self.accepted.send(pending) => r,
                    };
                    if sent.is_err() {
                        // No one accepts streams any more.
                        return;
                    }
                }
                Ok(None) => {}
                // The peer opens no more streams; those open finish their output.
                Err(Ended::GoAway) => return,
                Err(Ended::Error(e)) => {
                    tracing::debug!(error = %e, "SPDY connection ended");
                    match e {
                        // The peer is told why; what is queued before it still goes.
                        Error::Protocol(_) => {
                            let _ = self.frames.try_send(Out::GoAway {
                                last: self.last_accepted,
                                status: status::PROTOCOL_ERROR,
                            });
                            self.streams.cancel();
                        }
                        Error::Io(_) => self.gone.cancel(),
                    }
                    return;
                }
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Option<Pending>, Ended> {
        let mut head = [0u8; 8];
        self.io.read_exact(&mut head).await.map_err(Error::from)?;
        self.activity.touch();
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        if first & 0x8000_0000 == 0 {
            self.read_data(first & 0x7fff_ffff, flags, len).await?;
            return Ok(None);
        }
        let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(0);
        let kind = u16::try_from(first & 0xffff).unwrap_or(0);
        if version != VERSION {
            return Err(Ended::Error(protocol(format!("SPDY version {version}"))));
        }
        if len > MAX_CONTROL_FRAME {
            return Err(Ended::Error(protocol(format!(
                "a control frame of {len} bytes"
            ))));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await.map_err(Error::from)?;
        self.control(kind, flags, &body).await
    }

    async fn control(
        &mut self,
        kind: u16,
        flags: u8,
        body: &[u8],
    ) -> Result<Option<Pending>, Ended> {
        let mut r = Cursor(body);
        match kind {
            SYN_STREAM => {
                let id = r.u32()? & 0x7fff_ffff;
                let _associated = r.u32()?;
                let _priority_and_slot = r.take(2)?;
                let headers = Headers::decode(&self.inflater.inflate(r.0)?)?;
                // The peer's streams are odd and rising.
                if id % 2 == 0 || id < self.next_id {
                    self.send(Out::Reset {
                        id,
                        status: status::PROTOCOL_ERROR,
                    })
                    .await;
                    return Ok(None);
                }
                self.next_id = id.saturating_add(2);
                // Streams refused since are forgotten.
                self.open.retain(|_, o| !o.reset.is_cancelled());
                if self.open.len() >= MAX_STREAMS {
                    self.send(Out::Reset {
                        id,
                        status: status::REFUSED_STREAM,
                    })
                    .await;
                    return Ok(None);
                }
                self.last_accepted = id;
                let (tx, incoming) = mpsc::channel(INCOMING_QUEUE);
                let reset = self.streams.child_token();
                // A stream opened finished has no incoming data: its sender is dropped.
                if flags & FLAG_FIN == 0 {
                    self.open.insert(
                        id,
                        Open {
                            incoming: tx,
                            reset: reset.clone(),
                        },
                    );
                }
                Ok(Some(Pending {
                    id,
                    headers,
                    incoming,
                    reset,
                }))
            }
            SYN_REPLY | HEADERS => {
                let _id = r.u32()?;
                // Kept in step with the peer's compression context, then dropped.
                Headers::decode(&self.inflater.inflate(r.0)?)?;
                Ok(None)
            }
            RST_STREAM => {
                let id = r.u32()? & 0x7fff_ffff;
                if let Some(open) = self.open.remove(&id) {
                    open.reset.cancel();
                }
                Ok(None)
            }
            PING => {
                let id = r.u32()?;
                // Echo the peer's pings (odd); ours would be even, and we send none.
                if id % 2 == 1 {
                    self.send(Out::Ping(id)).await;
                }
                Ok(None)
            }
            GOAWAY => Err(Ended::GoAway),
            SETTINGS | WINDOW_UPDATE => Ok(None),
            // Unknown control frames are ignored, as the protocol asks.
            _ => Ok(None),
        }
    }

    async fn read_data(&mut self, id: u32, flags: u8, mut len: usize) -> Result<(), Ended> {
        let sender = self.open.get(&id).map(|o| o.incoming.clone());
        while len > 0 {
            let n = len.min(DATA_CHUNK);
            let mut chunk = BytesMut::zeroed(n);
            self.io.read_exact(&mut chunk).await.map_err(Error::from)?;
            len -= n;
            self.activity.touch();
            if let Some(tx) = &sender {
                // A reader that is gone no longer wants the data: it is dropped.
                tokio::select! {
                    () = self.gone.cancelled() => return Err(Ended::Error(protocol("idle"))),
                    _ = tx.send(chunk.freeze()) => {}
                }
            }
        }
        if flags & FLAG_FIN != 0 {
            // The peer's half is done: its reader sees the end.
            self.open.remove(&id);
        }
        Ok(())
    }

    async fn send(&mut self, frame: Out) {
        let _ = self.frames.send(frame).await;
    }
}

/// Why reading stopped.
enum Ended {
    GoAway,
    Error(Error),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}
