//! A small HTTP/1.1 server side: request heads (parsed with `httparse`), bodies (length or
//! chunked), responses written and flushed as they go, and the connection hijack.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use super::error::ApiError;

/// Upper bound of a request head.
const MAX_HEAD: u64 = 64 * 1024;
/// Upper bound of a JSON request body.
pub(crate) const MAX_JSON_BODY: u64 = 8 * 1024 * 1024;
/// How much of an unread request body is drained to keep a connection alive.
const MAX_DRAIN: u64 = 1024 * 1024;

/// A parsed request line and headers.
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    pub method: String,
    /// The percent-decoded path, without the query.
    pub path: String,
    pub query: Query,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub http11: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether the client asked to upgrade the connection (attach, exec start).
    pub fn wants_upgrade(&self) -> bool {
        self.header("upgrade").is_some() || self.connection_has("upgrade")
    }

    pub fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.connection_has("close")
        } else {
            self.connection_has("keep-alive")
        }
    }

    fn framing(&self) -> Result<Framing, ApiError> {
        let chunked = match self.header("transfer-encoding") {
            None => false,
            Some(te) if te.trim().eq_ignore_ascii_case("chunked") => true,
            Some(te) => {
                return Err(ApiError::new(
                    501,
                    format!("unsupported transfer encoding: {te}"),
                ));
            }
        };
        let length = match self.header("content-length") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_parameter(format!("bad content-length: {v}")))?,
            ),
        };
        match (chunked, length) {
            (true, Some(_)) => Err(ApiError::bad_parameter(
                "both content-length and chunked transfer encoding",
            )),
            (true, None) => Ok(Framing::Chunked),
            (false, Some(n)) => Ok(Framing::Length(n)),
            (false, None) => Ok(Framing::Length(0)),
        }
    }
}

/// Query parameters in order, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((percent_decode(k, true)?, percent_decode(v, true)?));
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Docker's boolean: absent = `default`; "", "0", "no", "false", "none" = false; anything
    /// else = true.
    pub fn bool(&self, name: &str, default: bool) -> bool {
        match self.get(name) {
            None => default,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            ),
        }
    }

    /// An integer parameter; 400 when it does not parse. An empty value counts as absent.
    pub fn int<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| ApiError::bad_parameter(format!("invalid value for {name}: {v:?}"))),
        }
    }
}

/// Decodes `%XX` (and `+` as space in queries). 400 on bad escapes or non-UTF-8 results.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_parameter(format!("bad escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_parameter(format!("bad escape in {s:?}")))
}

/// Why reading a request head failed.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The connection failed.
    Io(io::Error),
    /// The bytes are not a request we can serve: answer 400 (or the status) and close.
    Bad(ApiError),
}

/// Reads one request head. `Ok(None)` when the client closed the connection between requests.
pub(crate) fn read_head(r: &mut BufReader<UnixStream>) -> Result<Option<RequestHead>, HeadError> {
    let mut raw = Vec::with_capacity(512);
    loop {
        let before = raw.len();
        let limit = MAX_HEAD.saturating_sub(before as u64);
        if limit == 0 {
            return Err(HeadError::Bad(ApiError::new(431, "request head too large")));
        }
        let n = r
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut raw)
            .map_err(HeadError::Io)?;
        if n == 0 {
            if before == 0 {
                return Ok(None);
            }
            return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let line = &raw[before..];
        if !line.ends_with(b"\n") {
            continue;
        }
        let blank = line == b"\r\n" || line == b"\n";
        if blank && before == 0 {
            // Tolerate empty lines between requests.
            raw.clear();
            continue;
        }
        if blank {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Bad(ApiError::bad_parameter(
                "incomplete request head",
            )));
        }
        Err(e) => {
            return Err(HeadError::Bad(ApiError::bad_parameter(format!(
                "malformed request: {e}"
            ))));
        }
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("");
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path, false).map_err(HeadError::Bad)?;
    let query = Query::parse(raw_query).map_err(HeadError::Bad)?;
    let mut hs = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        hs.push((h.name.to_ascii_lowercase(), value));
    }
    Ok(Some(RequestHead {
        method,
        path,
        query,
        headers: hs,
        http11: req.version == Some(1),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// The request body as a `Read` (length-delimited or chunked).
pub(crate) struct BodyReader<'a> {
    inner: &'a mut BufReader<UnixStream>,
    state: BodyState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// This many bytes are left (of the body, or of the current chunk).
    Length(u64),
    /// In a chunk with this many bytes left.
    Chunk(u64),
    /// Before a chunk-size line; `first` = no chunk read yet (no CRLF to skip).
    ChunkHeader {
        first: bool,
    },
    Done,
    /// A framing error happened: the connection cannot be reused.
    Broken,
}

impl<'a> BodyReader<'a> {
    pub fn new(inner: &'a mut BufReader<UnixStream>, head: &RequestHead) -> Result<Self, ApiError> {
        let state = match head.framing()? {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkHeader { first: true },
        };
        Ok(BodyReader { inner, state })
    }

    /// Reads a whole (small) body; 413 when larger than `limit`.
    pub fn read_limited(&mut self, limit: u64) -> Result<Vec<u8>, ApiError> {
        let mut buf = Vec::new();
        self.by_ref()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ApiError::bad_parameter(format!("cannot read request body: {e}")))?;
        if buf.len() as u64 > limit {
            return Err(ApiError::new(413, "request body too large"));
        }
        Ok(buf)
    }

    /// Reads what the handler left unread (up to a bound); true when the connection is at the
    /// start of the next request.
    pub fn finish(&mut self) -> bool {
        if self.state == BodyState::Done {
            return true;
        }
        let drained = io::copy(&mut self.by_ref().take(MAX_DRAIN), &mut io::sink());
        drained.is_ok() && self.state == BodyState::Done
    }

    fn read_chunk_size(&mut self, first: bool) -> io::Result<u64> {
        let mut line = Vec::new();
        if !first {
            // The CRLF that ends the previous chunk's data.
            self.inner
                .by_ref()
                .take(1024)
                .read_until(b'\n', &mut line)?;
            if line.trim_ascii() != b"" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
            }
            line.clear();
        }
        self.inner
            .by_ref()
            .take(1024)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        let size = text.split(';').next().unwrap_or("").trim();
        u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))
    }

    fn skip_trailers(&mut self) -> io::Result<()> {
        for _ in 0..64 {
            let mut line = Vec::new();
            let n = self
                .inner
                .by_ref()
                .take(8192)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line.trim_ascii().is_empty() {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many trailers",
        ))
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                BodyState::Done => return Ok(0),
                BodyState::Broken => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "broken body"));
                }
                BodyState::Length(left) | BodyState::Chunk(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let left = left - n as u64;
                    self.state = match self.state {
                        BodyState::Length(_) if left == 0 => BodyState::Done,
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::ChunkHeader { first: false },
                        _ => BodyState::Chunk(left),
                    };
                    return Ok(n);
                }
                BodyState::ChunkHeader { first } => {
                    let size = self.read_chunk_size(first)?;
                    if size == 0 {
                        self.skip_trailers()?;
                        self.state = BodyState::Done;
                    } else {
                        self.state = BodyState::Chunk(size);
                    }
                }
            }
        }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let r = self.read_inner(buf);
        if r.is_err() {
            self.state = BodyState::Broken;
        }
        r
    }
}

/// The reason phrase of the statuses we answer with.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "UPGRADED",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Headers dockerd sends on every answer.
pub(crate) fn common_headers(api_version: &str) -> [(&'static str, String); 4] {
    [
        ("Api-Version", api_version.to_string()),
        ("Docker-Experimental", "false".to_string()),
        ("Ostype", "linux".to_string()),
        (
            "Server",
            format!("Paddock-system-engine/{}", env!("CARGO_PKG_VERSION")),
        ),
    ]
}

/// Writes a status line and headers (and the blank line), then flushes.
pub(crate) fn write_head(
    w: &mut dyn Write,
    status: u16,
    headers: &[(&str, String)],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        // Values are ours; strip line breaks anyway so nothing can split the head.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        head.push_str(name);
        head.push_str(": ");
        head.push_str(&value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Chunked transfer encoding; every write goes out at once (so streams are live).
pub(crate) struct ChunkedWriter<'a> {
    inner: &'a mut dyn Write,
}

impl<'a> ChunkedWriter<'a> {
    pub fn new(inner: &'a mut dyn Write) -> Self {
        ChunkedWriter { inner }
    }

    /// Writes the last (empty) chunk.
    pub fn finish(self) -> io::Result<()> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()
    }
}

impl Write for ChunkedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut chunk = format!("{:x}\r\n", buf.len()).into_bytes();
        chunk.extend_from_slice(buf);
        chunk.extend_from_slice(b"\r\n");
        self.inner.write_all(&chunk)?;
        self.inner.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(
        raw: &[u8],
    ) -> (
        Result<Option<RequestHead>, HeadError>,
        BufReader<UnixStream>,
    ) {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(raw).unwrap();
        drop(a);
        let mut r = BufReader::new(b);
        (read_head(&mut r), r)
    }

    #[test]
    fn head_query_and_chunked_body() {
        let raw = b"POST /v1.44/images/load?quiet=0&names=a%2Fb&names=c+d HTTP/1.1\r\nHost: x\r\n\
            Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX: y\r\n\r\nNEXT";
        let (head, mut r) = parse(raw);
        let head = head.unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/v1.44/images/load");
        assert!(!head.query.bool("quiet", true));
        assert_eq!(head.query.get_all("names"), vec!["a/b", "c d"]);
        let mut body = BodyReader::new(&mut r, &head).unwrap();
        assert_eq!(body.read_limited(100).unwrap(), b"hello world");
        assert!(body.finish());
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn bad_heads_and_bodies() {
        let (head, _) = parse(b"GARBAGE\r\n\r\n");
        assert!(matches!(head, Err(HeadError::Bad(e)) if e.status == 400));
        let (head, _) = parse(b"");
        assert!(matches!(head, Ok(None)));
        let (head, mut r) = parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort");
        let head = head.unwrap().unwrap();
        let mut body = BodyReader::new(&mut r, &head).unwrap();
        assert!(body.read_limited(100).is_err());
        assert!(!body.finish());
        let (head, mut r) = parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
        let head = head.unwrap().unwrap();
        let mut body = BodyReader::new(&mut r, &head).unwrap();
        assert_eq!(body.read_limited(5).unwrap_err().status, 413);
        let q = Query::parse("t=abc&x=%zz").map(|_| ()).unwrap_err();
        assert_eq!(q.status, 400);
        let q = Query::parse("t=abc").unwrap();
        assert_eq!(q.int::<i64>("t").unwrap_err().status, 400);
        assert!(q.bool("t", false));
    }
}
