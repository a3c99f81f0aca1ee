//! One question to one nameserver: over UDP, again over TCP when the answer is
//! truncated (or always, with `use-vc`). Sockets are made here, at call time, in the
//! network namespace of the calling thread.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::wire::{self, Question, Reject, Reply};

/// The buffer a UDP answer is read into; a longer datagram is cut to it.
pub(crate) const UDP_BUFFER: usize = 4096;

/// Why a nameserver gave no usable reply.
#[derive(Debug)]
pub(crate) enum AskError {
    /// Nothing that answers the query within the timeout.
    Timeout,
    /// A socket error: the server is unreachable, refused the connection, or the
    /// namespace has no route to it.
    Io(io::Error),
    /// A reply to the query that cannot be read.
    Malformed,
}

impl From<io::Error> for AskError {
    fn from(error: io::Error) -> Self {
        AskError::Io(error)
    }
}

/// Asks `server` the `question`, waiting at most `wait` for the UDP answer and as long
/// again for the TCP one when it is truncated.
pub(crate) async fn ask(
    server: SocketAddr,
    question: &Question,
    edns0: bool,
    use_vc: bool,
    wait: Duration,
) -> Result<Reply, AskError> {
    let id = random_id()?;
    let query = wire::encode_query(id, question, edns0).map_err(|_| AskError::Malformed)?;
    if !use_vc {
        let reply = timeout(wait, udp(server, &query, id, question))
            .await
            .map_err(|_| AskError::Timeout)??;
        if !reply.truncated {
            return Ok(reply);
        }
    }
    timeout(wait, tcp(server, &query, id, question))
        .await
        .map_err(|_| AskError::Timeout)?
}

/// A query ID from the kernel's random source. The source port is random too: Linux
/// picks a random ephemeral port for a socket bound to port 0.
fn random_id() -> Result<u16, AskError> {
    let mut bytes = [0u8; 2];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(io::Error::from)?;
    Ok(u16::from_ne_bytes(bytes))
}

/// Sends `query` from a fresh socket connected to `server` (so that the kernel drops
/// datagrams from any other address), then reads datagrams until one is the reply:
/// others (another ID, another question) are ignored.
async fn udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Question,
) -> Result<Reply, AskError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let len = socket.recv(&mut buffer).await?;
        match wire::parse_reply(&buffer[..len], id, question) {
            Ok(reply) => return Ok(reply),
            Err(Reject::NotOurs) => continue,
            Err(Reject::Malformed(_)) => return Err(AskError::Malformed),
        }
    }
}

/// Sends `query` over a TCP connection with its 2-byte length and reads one answer,
/// at most 65535 bytes as its length prefix allows.
async fn tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Question,
) -> Result<Reply, AskError> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| AskError::Malformed)?;
    let mut message = Vec::with_capacity(query.len() + 2);
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(query);
    stream.write_all(&message).await?;
    let len = usize::from(stream.read_u16().await.map_err(eof_is_malformed)?);
    let mut answer = vec![0u8; len];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(eof_is_malformed)?;
    match wire::parse_reply(&answer, id, question) {
        Ok(reply) if !reply.truncated => Ok(reply),
        Ok(_) | Err(_) => Err(AskError::Malformed),
    }
}

/// A connection closed inside an answer is a bad answer, not an unreachable server.
fn eof_is_malformed(error: io::Error) -> AskError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => AskError::Malformed,
        _ => AskError::Io(error),
    }
}
