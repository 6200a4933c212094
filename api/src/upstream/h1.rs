//! An HTTP/1.1 client connection driven by the request that uses it.
//!
//! hyper's client runs every connection as a task of its own: a request crosses to that task
//! through a channel and its answer comes back through another, and the connection reads ahead
//! into a fresh 8 KiB buffer for every message while the last one's bytes are still in use.
//! In the gateway, this client and the head copy it made unnecessary took 8,500 of the
//! 43,000 instructions per request (`bench/results/2026-12-07-own-client.md`). Here the
//! request's own task writes the request and reads the answer, the connection keeps one read
//! buffer for its life, and an idle connection is just the socket and that buffer in the pool.
//!
//! Its scope is what it is used for: requests whose body is held in full (the gateway holds
//! every body it can replay), over HTTP/1.1, never an upgrade. Streamed uploads, tunnels and
//! h2c go through hyper's client, which writes a body while it reads the answer.
//!
//! What it promises the failover: a request whose first write fails was not sent (the kernel
//! took none of it), and the caller still holds it; anything after that may have reached the
//! app. An idle connection the server closed is found before it is used: its socket is
//! readable (end of stream, or bytes nobody asked for), as hyper's connection task would
//! have seen.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The most an answer's head may take, and the most headers it may have (hyper's limits).
const HEAD_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 100;
/// What one read asks the kernel for.
const READ_CHUNK: usize = 8 * 1024;
/// A chunk's size line or a trailer line longer than this is not HTTP.
const LINE_MAX: usize = 4 * 1024;
/// All of a chunked answer's trailers together, and how many fields.
const TRAILERS_MAX: usize = 16 * 1024;
const TRAILERS_COUNT: usize = 32;
/// A held body up to this size goes out in the same write as the head.
const ONE_WRITE_MAX: usize = 16 * 1024;

/// What went wrong on a connection.
#[derive(Debug, Error)]
pub enum H1Error {
    /// The connection ended before the answer did.
    #[error("the connection closed before the answer was complete")]
    ClosedEarly,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer's head is not HTTP/1.1.
    #[error("the answer's head is malformed: {0}")]
    Malformed(#[from] httparse::Error),
    /// The answer's head did not end within [`HEAD_MAX`] bytes.
    #[error("the answer's head is larger than {HEAD_MAX} bytes")]
    HeadTooLarge,
    /// The answer says its length in a way that cannot be trusted.
    #[error("the answer's framing is invalid: {0}")]
    Framing(&'static str),
}

/// An attempt to send a request failed.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request left: the connection was found closed, or the first write
    /// failed.
    NotSent(H1Error),
    /// The request was written, in whole or in part, and may have reached the app.
    Broken(H1Error),
}

/// One HTTP/1.1 connection: the socket and the buffer its answers are read into.
pub struct Connection {
    io: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Connection {
    /// A connection over `io`, already connected.
    pub fn new(io: TcpStream) -> Connection {
        Connection {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection can carry another request: the server has neither closed it
    /// nor sent anything since the last answer. Reads only what tokio's I/O driver already
    /// saw, as hyper's connection task would have.
    pub(super) fn is_open_and_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends a request (`head`, and `body` held in full) and reads its answer's head. The
    /// answer's body reads the rest from this connection, and hands it to `idle` once read to
    /// the end when the connection can be used again.
    pub async fn send(
        mut self,
        head: &http::request::Parts,
        body: &Bytes,
        idle: &std::sync::Arc<Idle>,
    ) -> Result<Response<H1Body>, SendError> {
        encode_head(&mut self.write, head, body.len());
        let together = body.len() <= ONE_WRITE_MAX;
        if together {
            self.write.extend_from_slice(body);
        }
        self.write_request(if together { None } else { Some(body) })
            .await?;
        let head_only = head.method == Method::HEAD;
        self.read_answer(head_only, idle)
            .await
            .map_err(SendError::Broken)
    }

    /// Writes what `encode_head` put in the write buffer, then `rest`. Only the first write
    /// can fail as not sent.
    async fn write_request(&mut self, rest: Option<&Bytes>) -> Result<(), SendError> {
        let first = match self.io.write(&self.write).await {
            Ok(0) => return Err(SendError::NotSent(H1Error::ClosedEarly)),
            Ok(n) => n,
            Err(e) => return Err(SendError::NotSent(e.into())),
        };
        let broken = |e: io::Error| SendError::Broken(e.into());
        self.io
            .write_all(&self.write[first..])
            .await
            .map_err(broken)?;
        if let Some(rest) = rest {
            self.io.write_all(rest).await.map_err(broken)?;
        }
        Ok(())
    }

    /// Reads the answer's head, past any interim `1xx`.
    async fn read_answer(
        mut self,
        head_only: bool,
        idle: &std::sync::Arc<Idle>,
    ) -> Result<Response<H1Body>, H1Error> {
        loop {
            if let Some(mut parsed) = parse_head(&mut self.read)? {
                if parsed.interim() {
                    continue;
                }
                let framing = parsed.framing(head_only)?;
                // After a `101` the connection speaks another protocol: never used again.
                let keep_alive = parsed.keep_alive
                    && !matches!(framing, Framing::UntilClose)
                    && parsed.status != StatusCode::SWITCHING_PROTOCOLS;
                let mut response = Response::new(H1Body {
                    conn: Some(self),
                    framing,
                    keep_alive,
                    idle: Some(idle.clone()),
                });
                *response.status_mut() = parsed.status;
                *response.version_mut() = parsed.version;
                *response.headers_mut() = parsed.headers;
                response.body_mut().finish_if_empty();
                return Ok(response);
            }
            if self.read.len() >= HEAD_MAX {
                return Err(H1Error::HeadTooLarge);
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(H1Error::ClosedEarly);
            }
        }
    }

    /// Reads what the socket has into the read buffer; `0` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // The buffer is reused once the last answer's bytes are dropped; while they are still
        // held, this allocates.
        self.read.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// Writes a request head: origin-form target, the headers as they are except the framing,
/// which is the held body's own length.
fn encode_head(out: &mut Vec<u8>, head: &http::request::Parts, body_len: usize) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        head.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A method that means to carry a body says its length even when it is empty (RFC 9110
    // §8.6); the others only when they carry one.
    if body_len > 0 || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer's head, read.
struct Parsed {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    keep_alive: bool,
}

impl Parsed {
    /// A `1xx` other than `101`: an interim answer, the final one follows.
    fn interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// How the answer's body is delimited (RFC 9112 §6.3). A `Transfer-Encoding` overrides a
    /// `Content-Length`, which is removed, as an intermediary must before it passes the answer
    /// on (§6.3 item 3); and since that pair is how responses are split, the connection is not
    /// used again.
    fn framing(&mut self, head_only: bool) -> Result<Framing, H1Error> {
        if head_only
            || self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Length(0));
        }
        let h = &mut self.headers;
        if let Some(te) = h.get_all(header::TRANSFER_ENCODING).iter().next_back() {
            let last = te.as_bytes().rsplit(|b| *b == b',').next().unwrap_or(b"");
            let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if h.remove(header::CONTENT_LENGTH).is_some() {
                self.keep_alive = false;
            }
            return Ok(if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            });
        }
        let h = &self.headers;
        let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
        match lengths.next() {
            None => Ok(Framing::UntilClose),
            Some(first) => {
                let n = content_length(first.as_bytes())
                    .ok_or(H1Error::Framing("Content-Length is not a number"))?;
                if lengths.any(|v| content_length(v.as_bytes()) != Some(n)) {
                    return Err(H1Error::Framing("Content-Length values differ"));
                }
                Ok(Framing::Length(n))
            }
        }
    }
}

/// A `Content-Length` value: digits only (`1,1` and signs are refused).
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Parses an answer's head from the front of `buf` and takes it off, or `None` when more is
/// needed. Header values keep pointing into the buffer's bytes, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised: a hundred empty headers would be written before every parse.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; HEADERS_MAX];
    let mut answer = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut answer,
        buf,
        &mut slots,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(answer.code.unwrap_or(0))
        .map_err(|_| H1Error::Malformed(httparse::Error::Status))?;
    let version = if answer.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let start = buf.as_ptr() as usize;
    let mut names = Vec::with_capacity(answer.headers.len());
    let mut close = false;
    let mut keep_alive_token = false;
    for h in answer.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Malformed(httparse::Error::HeaderName))?;
        if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let at = h.value.as_ptr() as usize - start;
        names.push((name, at, at + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(names.len());
    for (name, from, to) in names {
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))
            .map_err(|_| H1Error::Malformed(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    Ok(Some(Parsed {
        status,
        version,
        headers,
        keep_alive,
    }))
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// After the last chunk and the trailers.
    Chunked(Chunk),
    /// When the server closes the connection.
    UntilClose,
    /// It has ended.
    Done,
}

/// Where a chunked body's decoding is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk's size line.
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section, up to an empty line.
    Trailers,
}

/// What one step of decoding a chunked body gave.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// Bytes of the body.
    Data(Bytes),
    /// The buffer holds no complete step; read more.
    NeedMore,
    /// The trailer section, which ends the body.
    Trailers(HeaderMap),
    /// The body ended, without trailers.
    End,
}

/// One step of decoding a chunked body from `buf`.
fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(len) = line_length(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                // The size, then any extensions after `;`, which nothing here uses.
                let size = buf[..len].split(|b| *b == b';').next().unwrap_or(b"");
                let size = chunk_size(size.trim_ascii())
                    .ok_or(H1Error::Framing("a chunk's size is not hex"))?;
                buf.advance(len + 2);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - take as u64;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Framing("a chunk's data does not end with CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                let mut slots = [httparse::EMPTY_HEADER; TRAILERS_COUNT];
                let (len, fields) = match httparse::parse_headers(buf, &mut slots)? {
                    httparse::Status::Complete(parsed) => parsed,
                    httparse::Status::Partial if buf.len() > TRAILERS_MAX => {
                        return Err(H1Error::Framing("the trailers are too large"));
                    }
                    httparse::Status::Partial => return Ok(Decoded::NeedMore),
                };
                let trailers = trailer_fields(fields)?;
                buf.advance(len);
                return Ok(if trailers.is_empty() {
                    Decoded::End
                } else {
                    Decoded::Trailers(trailers)
                });
            }
        }
    }
}

/// A trailer section as the client gets it: without the fields a trailer must not carry
/// (framing, routing, connection options; RFC 9110 §6.5.1), which a recipient could take for
/// the head's.
fn trailer_fields(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, H1Error> {
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::Malformed(httparse::Error::HeaderName))?;
        let forbidden = [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::HOST,
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::UPGRADE,
        ];
        if forbidden.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| H1Error::Malformed(httparse::Error::HeaderValue))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// The length of the line at the front of `buf`, without its CRLF; `None` while it is not
/// all there.
fn line_length(buf: &[u8]) -> Result<Option<usize>, H1Error> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(H1Error::Framing("a line does not end with CRLF")),
        None if buf.len() > LINE_MAX => Err(H1Error::Framing("a line is too long")),
        None => Ok(None),
    }
}

fn chunk_size(hex: &[u8]) -> Option<u64> {
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    hex.iter().try_fold(0u64, |n, d| {
        let digit = (*d as char).to_digit(16)?;
        Some(n * 16 + u64::from(digit))
    })
}

/// An answer's body, read from its connection as the client takes it. Read to the end on a
/// connection that stays open, it hands the connection to the pool's idle list; dropped
/// before, it closes it (what is left of the answer would be read as the next one's).
pub struct H1Body {
    conn: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    idle: Option<std::sync::Arc<Idle>>,
}

impl H1Body {
    fn finish_if_empty(&mut self) {
        if self.framing == Framing::Length(0) {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(idle)) = (self.conn.take(), self.idle.take())
            && self.keep_alive
            // Bytes after the answer are nobody's: the connection is not used again.
            && conn.read.is_empty()
        {
            idle.put_back(conn);
        }
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a body that has not ended holds its connection")
    }

    /// Reads more into the connection's buffer; an error at the end of the stream.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        match ready!(self.conn().poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(H1Error::ClosedEarly)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if this.conn().read.is_empty() {
                        ready!(this.poll_more(cx))?;
                    }
                    let buf = &mut this.conn().read;
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    this.framing = Framing::Length(left - take as u64);
                    // The last bytes: the connection goes back now. hyper's server stops
                    // polling a body that says it has ended, and drops it.
                    if this.framing == Framing::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(mut chunk) => {
                    let decoded = decode_chunk(&mut chunk, &mut this.conn().read)?;
                    this.framing = Framing::Chunked(chunk);
                    match decoded {
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::NeedMore => ready!(this.poll_more(cx))?,
                        Decoded::Trailers(trailers) => {
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Decoded::End => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                    }
                }
                Framing::UntilClose => {
                    if this.conn().read.is_empty() {
                        match ready!(this.poll_more(cx)) {
                            Err(H1Error::ClosedEarly) => {
                                this.framing = Framing::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            other => other?,
                        }
                    }
                    let data = this.conn().read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// One upstream's idle connections of this client.
pub type Idle = super::IdleList<Connection>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Parsed {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf).unwrap().expect("a complete head")
    }

    #[test]
    fn a_head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
        );
        let mut p = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(p.framing(false).unwrap(), Framing::Length(5));
        assert_eq!(&buf[..], b"hello");
        // Partial: nothing taken.
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_head(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 27);
    }

    #[test]
    fn the_body_is_framed_as_rfc_9112_says() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::UntilClose,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
                false,
                Framing::Length(7),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                true,
                Framing::Length(0),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
                false,
                Framing::Length(0),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                false,
                Framing::Length(0),
            ),
        ];
        for (head, head_only, want) in cases {
            assert_eq!(parse(head).framing(head_only).unwrap(), want, "{head}");
        }
        // Both lengths: the chunks frame it, the Content-Length is not passed on, and the
        // connection is not used again.
        let mut both =
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(both.keep_alive);
        both.framing(false).unwrap();
        assert!(!both.keep_alive);
        assert!(!both.headers.contains_key(header::CONTENT_LENGTH));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(parse(bad).framing(false).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!parse("HTTP/1.1 200 OK\r\nConnection: foo, close\r\n\r\n").keep_alive);
        assert!(!parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    type Decoding = (Vec<u8>, Option<HeaderMap>, BytesMut);

    fn decode_all(wire: &[u8], step: usize) -> Result<Decoding, H1Error> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decode_chunk(&mut state, &mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t), buf)),
                Decoded::End => return Ok((body, None, buf)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(H1Error::ClosedEarly);
                    }
                    let to = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..to]);
                    fed = to;
                }
            }
        }
    }

    #[test]
    fn a_chunked_body_decodes_however_it_arrives() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: t\r\nContent-Length: 9\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (body, trailers, rest) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            // A trailer that would frame the body is not passed on.
            let trailers = trailers.expect("the trailer section");
            assert_eq!(trailers.len(), 1, "step {step}");
            assert_eq!(trailers["x-checksum"], "t", "step {step}");
            // What follows the body is left for whoever reads next.
            assert!(b"NEXT".starts_with(&rest), "step {step}");
        }
        let (body, trailers, rest) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(
            (&body[..], trailers, &rest[..]),
            (&b"abc"[..], None, &b""[..])
        );
    }

    #[test]
    fn a_malformed_chunked_body_is_refused() {
        for bad in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"5\r\nhel",
        ] {
            assert!(
                decode_all(bad, 3).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; LINE_MAX + 2];
        assert!(decode_all(&long, 512).is_err());
    }

    #[test]
    fn the_head_says_the_held_bodys_length_and_nothing_else_frames_it() {
        let (mut parts, ()) = http::Request::post("/cart?x=1")
            .header("host", "shop")
            .header("transfer-encoding", "chunked")
            .header("content-length", "999")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, 3);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /cart?x=1 HTTP/1.1\r\nhost: shop\r\ncontent-length: 3\r\n\r\n"
        );
        parts.method = Method::GET;
        encode_head(&mut out, &parts, 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /cart?x=1 HTTP/1.1\r\nhost: shop\r\n\r\n"
        );
    }
}
