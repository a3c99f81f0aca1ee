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
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): the words,
/// each preceded by its length as a 32-bit big-endian number, then the text of common
/// values. Its Adler-32 is `0xe3c6a7c2`, the dictionary ID in every zlib stream of
/// SPDY/3 header blocks.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
        "iso-8859-1,utf-,*,enq=0.",
    );
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&u32::try_from(w.len()).unwrap_or(0).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

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

/// A header block: lower-case names, each with its values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(Vec<(String, Vec<String>)>);

impl Headers {
    /// The first value of `name` (lower case).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Adds `name: value`.
    #[cfg(test)]
    pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
        self.0
            .push((name.to_ascii_lowercase(), vec![value.to_owned()]));
        self
    }

    /// The uncompressed block: the pair count, then each name and its values joined by
    /// NUL, every length a 32-bit big-endian number.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, self.0.len());
        for (name, values) in &self.0 {
            put_len(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            let value = values.join("\0");
            put_len(&mut out, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn decode(block: &[u8]) -> Result<Self, Error> {
        let mut r = Cursor(block);
        let count = r.u32()? as usize;
        if count > MAX_HEADER_PAIRS {
            return Err(protocol(format!("{count} headers in one block")));
        }
        let mut pairs: Vec<(String, Vec<String>)> = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.text()?.to_ascii_lowercase();
            if name.is_empty() {
                return Err(protocol("an empty header name"));
            }
            let values = r.text()?.split('\0').map(str::to_owned).collect();
            match pairs.iter_mut().find(|(n, _)| *n == name) {
                Some(_) => return Err(protocol(format!("header {name:?} twice"))),
                None => pairs.push((name, values)),
            }
        }
        if !r.0.is_empty() {
            return Err(protocol("bytes after the last header"));
        }
        Ok(Self(pairs))
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

/// Reads big-endian fields off a bounded buffer.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(protocol("a frame shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self) -> Result<&'a str, Error> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| protocol("a header that is not UTF-8"))
    }
}

/// The peer's header blocks, inflated with one context for the connection.
struct Inflater(Decompress);

impl Inflater {
    fn new() -> Self {
        Self(Decompress::new(true))
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
        // One byte more than allowed: filling it means the block is too large.
        let mut out = Vec::with_capacity(MAX_HEADER_BLOCK + 1);
        loop {
            let before = self.0.total_in();
            let r = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.0.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
                Ok(Status::StreamEnd) => return Err(protocol("the header stream ended")),
                Ok(_) if out.len() > MAX_HEADER_BLOCK => {
                    return Err(protocol("a header block larger than 64 KiB"));
                }
                Ok(_) if input.is_empty() => return Ok(out),
                // Output room left and input too, yet nothing moved: the block is cut.
                Ok(_) if used == 0 => return Err(protocol("a truncated header block")),
                Ok(_) => {}
            }
        }
    }
}

/// Our header blocks, deflated with one context for the connection.
struct Deflater(Compress);

impl Deflater {
    fn new() -> Result<Self, Error> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary())
            .map_err(|e| protocol(format!("header dictionary: {e}")))?;
        Ok(Self(z))
    }

    fn deflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| protocol(format!("compressing headers: {e}")))?;
            let used = usize::try_from(self.0.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            // A sync flush is complete once it leaves output room unused.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
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

mod reader;

#[cfg(test)]
mod tests;
