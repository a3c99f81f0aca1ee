//! SPDY/3.1, the server side, as far as the kubelet's streaming endpoints use it: the
//! peer (the API server relaying `kubectl`) opens streams with `SYN_STREAM`, each is
//! answered with `SYN_REPLY` (or refused with `RST_STREAM`), and data flows both ways in
//! `DATA` frames until each side sends `FIN`. Header blocks are zlib streams with the
//! SPDY/3 dictionary, one compression context per direction for the whole connection.
//! Flow control (`WINDOW_UPDATE`) is not used by the Go peers and is ignored; `PING` is
//! echoed; `SETTINGS` and `HEADERS` are read (a header block must be inflated to keep the
//! shared context in step) and dropped.
//!
//! The peer is untrusted: every frame is bounded before it is read (control frames at
//! [`MAX_CONTROL_FRAME`], inflated header blocks at [`MAX_HEADER_BLOCK`]), data is read
//! in chunks of at most [`DATA_CHUNK`] whatever length a frame declares, open streams are
//! at most [`MAX_STREAMS`], and a connection without a frame either way for its idle
//! timeout is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use headers::Headers;
use headers::{Cursor, Deflater, Inflater};

/// The `Upgrade` token of the protocol.
pub(crate) const UPGRADE: &str = "SPDY/3.1";

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;

/// `RST_STREAM` status codes used here.
pub(crate) mod status {
    /// A malformed or out-of-order frame.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Too many streams open.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is not wanted (its headers were refused).
    pub const CANCEL: u32 = 5;
}

/// The largest control frame read (a header block is far smaller in practice).
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// The largest header block once inflated.
pub(crate) const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The most name/value pairs in one header block.
const MAX_HEADER_PAIRS: usize = 64;
/// Data is read and written in pieces of at most this size.
pub(crate) const DATA_CHUNK: usize = 32 * 1024;
/// Streams open at once on one connection (the peer's half not yet finished).
pub(crate) const MAX_STREAMS: usize = 128;
/// Chunks of a stream's incoming data queued for its reader.
const INCOMING_QUEUE: usize = 8;
/// Frames queued for the writer.
const OUTGOING_QUEUE: usize = 64;
/// How long a closing session waits for what its streams still write.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ends before its peer closes it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Reading or writing the connection failed (the peer went away, most likely).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; the connection is not worth keeping.
    #[error("protocol: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// What the writer sends.
#[derive(Debug)]
enum Out {
    Reply(u32),
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32, status: u32 },
    Ping(u32),
    GoAway { last: u32, status: u32 },
}

/// The time of the last frame read or written, for the idle timeout.
#[derive(Debug, Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One stream opened by the peer and accepted.
#[derive(Debug)]
pub(crate) struct Stream {
    /// What the peer sends on it, in pieces; ends at the peer's `FIN` (or reset).
    pub incoming: mpsc::Receiver<Bytes>,
    /// Sends on it.
    pub out: StreamWriter,
    /// Fires when the peer resets the stream or the connection is gone.
    pub reset: CancellationToken,
}

/// The sending half of a [`Stream`]; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Out>,
}

/// The connection is gone: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the connection is closed")]
pub(crate) struct Closed;

impl StreamWriter {
    /// Sends `data` (in frames of at most [`DATA_CHUNK`]).
    pub(crate) async fn send(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(DATA_CHUNK));
            self.frames
                .send(Out::Data {
                    id: self.id,
                    data: piece,
                    fin: false,
                })
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Ends our half of the stream (`FIN`).
    pub(crate) async fn finish(&self) {
        let _ = self
            .frames
            .send(Out::Data {
                id: self.id,
                data: Bytes::new(),
                fin: true,
            })
            .await;
    }
}

/// A stream the peer opened, not yet answered. What the peer sends on it meanwhile is
/// already queued for it.
#[derive(Debug)]
pub(crate) struct Pending {
    id: u32,
    headers: Headers,
    incoming: mpsc::Receiver<Bytes>,
    reset: CancellationToken,
}

impl Pending {
    /// Its `SYN_STREAM` headers.
    pub(crate) fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Its ID.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

/// What the reader keeps of an open stream.
struct Open {
    incoming: mpsc::Sender<Bytes>,
    reset: CancellationToken,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A SPDY connection, server side. A reader task reads frames, dispatching data to the
/// open streams and handing each stream the peer opens to [`Session::accept`]; a writer
/// task sends what the streams and the session queue. Frames are read whole whatever
/// the caller of [`Session::accept`] does meanwhile: dropping its future (a deadline won
/// a `select!`) loses nothing.
pub(crate) struct Session {
    accepted: mpsc::Receiver<Pending>,
    frames: mpsc::Sender<Out>,
    /// Fires when the connection idled out or failed: the writer stops, every stream is
    /// reset.
    gone: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    reader: AbortOnDrop,
}

impl Session {
    /// A session over `io`, closed after `idle` without a frame either way.
    pub(crate) fn new<IO>(io: IO, idle: Duration) -> Result<Self, Error>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (frames, queue) = mpsc::channel(OUTGOING_QUEUE);
        let (to_accept, accepted) = mpsc::channel(1);
        let activity = Activity::new();
        let gone = CancellationToken::new();
        let deflater = Deflater::new()?;
        let writer = tokio::spawn(write_loop(
            write_half,
            queue,
            deflater,
            activity.clone(),
            gone.clone(),
        ));
        tokio::spawn(watch_idle(activity.clone(), idle, gone.clone()));
        let reader = reader::Reader {
            io: read_half,
            frames: frames.clone(),
            accepted: to_accept,
            open: HashMap::new(),
            next_id: 1,
            last_accepted: 0,
            inflater: Inflater::new(),
            activity,
            streams: gone.child_token(),
            gone: gone.clone(),
        };
        let reader = AbortOnDrop(tokio::spawn(reader.run()));
        Ok(Self {
            accepted,
            frames,
            gone,
            writer,
            reader,
        })
    }

    /// The next stream the peer opens; `None` when the connection ended (the peer closed
    /// it or went away, sent `GOAWAY`, broke the protocol, or idled out). Cancel-safe.
    pub(crate) async fn accept(&mut self) -> Option<Pending> {
        self.accepted.recv().await
    }

    /// Answers the peer's stream: its [`Stream`].
    pub(crate) async fn reply(&self, pending: Pending) -> Result<Stream, Closed> {
        self.frames
            .send(Out::Reply(pending.id))
            .await
            .map_err(|_| Closed)?;
        Ok(Stream {
            incoming: pending.incoming,
            out: StreamWriter {
                id: pending.id,
                frames: self.frames.clone(),
            },
            reset: pending.reset,
        })
    }

    /// Refuses the peer's stream (`RST_STREAM` with `status`).
    pub(crate) async fn refuse(&self, pending: Pending, status: u32) {
        // The reader forgets it.
        pending.reset.cancel();
        let _ = self
            .frames
            .send(Out::Reset {
                id: pending.id,
                status,
            })
            .await;
    }

    /// Waits until everything queued is written (the streams' writers dropped, or at
    /// most [`CLOSE_TIMEOUT`]) or the connection failed, then closes it.
    pub(crate) async fn close(self) {
        let Self {
            frames,
            mut writer,
            gone,
            reader,
            ..
        } = self;
        // Nothing more is read; the reader's own sender goes with it.
        drop(reader);
        drop(frames);
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            gone.cancel();
            let _ = writer.await;
        }
    }
}

/// Writes queued frames until every sender is gone or writing fails.
async fn write_loop<IO: AsyncWrite>(
    mut io: WriteHalf<IO>,
    mut queue: mpsc::Receiver<Out>,
    mut deflater: Deflater,
    activity: Activity,
    gone: CancellationToken,
) {
    let mut buf = Vec::with_capacity(DATA_CHUNK + 64);
    loop {
        let frame = tokio::select! {
            () = gone.cancelled() => break,
            f = queue.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        buf.clear();
        if let Err(e) = encode(&mut buf, &mut deflater, frame) {
            tracing::debug!(error = %e, "cannot encode a SPDY frame");
            break;
        }
        // Whatever else is queued goes in the same write.
        while buf.len() < DATA_CHUNK {
            let Ok(next) = queue.try_recv() else { break };
            if encode(&mut buf, &mut deflater, next).is_err() {
                break;
            }
        }
        let written = tokio::select! {
            () = gone.cancelled() => break,
            r = async { io.write_all(&buf).await?; io.flush().await } => r,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "SPDY write failed");
            gone.cancel();
            break;
        }
        activity.touch();
    }
    let _ = io.shutdown().await;
}

/// Appends `frame` to `buf`.
/// Appends a control frame of `kind` with `body` to `buf`.
fn control(buf: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) -> Result<(), Error> {
    if body.len() > 0x00ff_ffff {
        return Err(protocol("a control frame too large"));
    }
    buf.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
    buf.extend_from_slice(&kind.to_be_bytes());
    buf.push(flags);
    buf.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes()[1..]);
    buf.extend_from_slice(body);
    Ok(())
}

fn encode(buf: &mut Vec<u8>, deflater: &mut Deflater, frame: Out) -> Result<(), Error> {
    match frame {
        Out::Reply(id) => {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&deflater.deflate(&Headers::default().encode())?);
            control(buf, SYN_REPLY, 0, &body)
        }
        Out::Reset { id, status } => {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(buf, RST_STREAM, 0, &body)
        }
        Out::Ping(id) => control(buf, PING, 0, &id.to_be_bytes()),
        Out::GoAway { last, status } => {
            let mut body = last.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(buf, GOAWAY, 0, &body)
        }
        Out::Data { id, data, fin } => {
            buf.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            buf.push(if fin { FLAG_FIN } else { 0 });
            buf.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes()[1..]);
            buf.extend_from_slice(&data);
            Ok(())
        }
    }
}

/// Cancels `gone` once nothing was read or written for `idle`.
async fn watch_idle(activity: Activity, idle: Duration, gone: CancellationToken) {
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            () = gone.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if activity.last() + idle <= Instant::now() {
            tracing::debug!("SPDY connection idle for {idle:?}: closed");
            gone.cancel();
            return;
        }
    }
}

/// A SPDY client for tests.
#[cfg(test)]
pub(crate) mod testing;

mod headers;
mod reader;

#[cfg(test)]
mod tests;
