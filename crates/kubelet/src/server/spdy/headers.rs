//! SPDY/3 header blocks: the name/value block format, and the zlib contexts (with the
//! protocol's dictionary) that carry them, one per direction for the whole connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{Error, MAX_HEADER_BLOCK, MAX_HEADER_PAIRS, protocol};

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): the words,
/// each preceded by its length as a 32-bit big-endian number, then the text of common
/// values. Its Adler-32 is `0xe3c6a7c2`, the dictionary ID in every zlib stream of
/// SPDY/3 header blocks.
pub(super) fn dictionary() -> &'static [u8] {
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

/// A header block: lower-case names, each with its values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(pub(super) Vec<(String, Vec<String>)>);

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
    pub(super) fn encode(&self) -> Vec<u8> {
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

    pub(super) fn decode(block: &[u8]) -> Result<Self, Error> {
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
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(protocol("a frame shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn text(&mut self) -> Result<&'a str, Error> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| protocol("a header that is not UTF-8"))
    }
}

/// The peer's header blocks, inflated with one context for the connection.
pub(super) struct Inflater(Decompress);

impl Inflater {
    pub(super) fn new() -> Self {
        Self(Decompress::new(true))
    }

    pub(super) fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
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
pub(super) struct Deflater(Compress);

impl Deflater {
    pub(super) fn new() -> Result<Self, Error> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary())
            .map_err(|e| protocol(format!("header dictionary: {e}")))?;
        Ok(Self(z))
    }

    pub(super) fn deflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
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
