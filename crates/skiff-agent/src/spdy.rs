//! SPDY/3.1 framing, the server's side: what kubectl's port-forward (and, before kubectl
//! 1.30, its exec and attach) speaks once the connection is upgraded (`Upgrade: SPDY/3.1`). Only what a stream server needs: reading
//! frames, answering streams (SYN_REPLY), data, resets, pings and going away. Header blocks
//! are zlib streams primed with the protocol's dictionary, one compression context per
//! direction for the whole connection.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const FLAG_FIN: u8 = 0x01;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;

/// RST_STREAM status: the stream was refused, or failed.
pub const REFUSED_STREAM: u32 = 3;
pub const INTERNAL_ERROR: u32 = 6;

/// Frames longer than this are refused (SPDY allows 16 MiB; clients send far less).
const MAX_FRAME: usize = 1 << 24;

#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A new stream from the client, with its headers (names lower-case).
    SynStream { stream_id: u32, fin: bool, headers: Vec<(String, String)> },
    Data { stream_id: u32, fin: bool, data: Vec<u8> },
    RstStream { stream_id: u32, status: u32 },
    Ping { id: u32 },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and the like, which a stream server can ignore.
    Other,
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The SPDY/3 header dictionary (from the protocol's specification): length-prefixed
/// header names and values, then common status lines, dates and media types.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding", "accept-language",
        "accept-ranges", "age", "allow", "authorization", "cache-control", "connection", "content-base", "content-encoding",
        "content-language", "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
        "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range",
        "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate",
        "proxy-authorization", "range", "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
        "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK", "version",
        "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for w in WORDS {
        out.extend_from_slice(&(w.len() as u32).to_be_bytes());
        out.extend_from_slice(w.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// Reads frames from the client.
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
    dictionary: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Self { io, inflate: Decompress::new(true), dictionary: dictionary() }
    }

    /// The next frame; `None` at the end of the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("a {len}-byte frame")));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data { stream_id, fin, data: body }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version}, not 3")));
        }
        let word = |at: usize| body.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        Ok(Some(match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                let stream_id = word(0).ok_or_else(|| invalid("a short SYN_STREAM"))? & 0x7fff_ffff;
                let block = body.get(10..).ok_or_else(|| invalid("a short SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream { stream_id, fin, headers }
            }
            RST_STREAM => Frame::RstStream {
                stream_id: word(0).ok_or_else(|| invalid("a short RST_STREAM"))? & 0x7fff_ffff,
                status: word(4).ok_or_else(|| invalid("a short RST_STREAM"))?,
            },
            PING => Frame::Ping { id: word(0).ok_or_else(|| invalid("a short PING"))? },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }))
    }

    /// A header block: decompressed with the connection's context, then count-prefixed
    /// pairs of length-prefixed names and values.
    fn headers(&mut self, block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.capacity() - plain.len() < 4096 {
                plain.reserve(8192);
            }
            let (read, written) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self.inflate.decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - read) as usize;
            let produced = self.inflate.total_out() - written;
            input = &input[consumed..];
            match result {
                // The first block names the dictionary the client primed its compressor with.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&self.dictionary).map_err(|e| invalid(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(invalid(format!("header block: {e}"))),
                Ok(_) => {}
            }
            if (input.is_empty() && produced == 0) || (consumed == 0 && produced == 0) {
                break;
            }
            if plain.len() > MAX_FRAME {
                return Err(invalid("a header block too large"));
            }
        }
        parse_headers(&plain)
    }
}

fn parse_headers(plain: &[u8]) -> io::Result<Vec<(String, String)>> {
    let short = || invalid("a short header block");
    let mut at = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = plain.get(at..at + n).ok_or_else(short)?;
        at += n;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// The answer that switches a connection to SPDY/3.1 with the stream `protocol`.
pub fn switching_protocols(protocol: &str) -> axum::response::Response {
    use axum::http::header;
    axum::response::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

/// A frame to send, from whichever task has one.
pub enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Reset(u32, u32),
    Ping(u32),
}

/// Starts the connection's writer as a task of its own, fed by the returned sender; it
/// ends when every sender is gone (or the client is).
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(io: W) -> (tokio::sync::mpsc::Sender<Out>, tokio::task::JoinHandle<()>) {
    let (out, mut outgoing) = tokio::sync::mpsc::channel::<Out>(64);
    let task = tokio::spawn(async move {
        let mut writer = Writer::new(io);
        while let Some(frame) = outgoing.recv().await {
            let written = match frame {
                Out::Reply(id) => writer.syn_reply(id, false).await,
                Out::Data(id, data, fin) => writer.data(id, &data, fin).await,
                Out::Reset(id, code) => writer.rst_stream(id, code).await,
                Out::Ping(id) => writer.ping(id).await,
            };
            if written.is_err() {
                return;
            }
        }
    });
    (out, task)
}

/// Writes frames to the client.
pub struct Writer<W> {
    io: W,
    deflate: Compress,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(io: W) -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).expect("a fresh compressor takes a dictionary");
        Self { io, deflate }
    }

    async fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(body);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Accepts a stream (no headers).
    pub async fn syn_reply(&mut self, stream_id: u32, fin: bool) -> io::Result<()> {
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&self.header_block(&[])?);
        self.control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body).await
    }

    pub async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) -> io::Result<()> {
        for (i, chunk) in data.chunks(64 * 1024).enumerate().chain(data.is_empty().then_some((0, &[][..]))) {
            let last = (i + 1) * 64 * 1024 >= data.len();
            let mut frame = Vec::with_capacity(8 + chunk.len());
            frame.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            frame.push(if fin && last { FLAG_FIN } else { 0 });
            frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
            frame.extend_from_slice(chunk);
            self.io.write_all(&frame).await?;
        }
        self.io.flush().await
    }

    pub async fn rst_stream(&mut self, stream_id: u32, status: u32) -> io::Result<()> {
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        self.control(RST_STREAM, 0, &body).await
    }

    pub async fn ping(&mut self, id: u32) -> io::Result<()> {
        self.control(PING, 0, &id.to_be_bytes()).await
    }

    fn header_block(&mut self, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(&plain, &mut out, FlushCompress::Sync).map_err(|e| invalid(e.to_string()))?;
            let consumed = (self.deflate.total_in() - before) as usize;
            plain.drain(..consumed);
            if plain.is_empty() && out.len() < out.capacity() || status == Status::StreamEnd {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b"utf-,*,enq=0."));
    }

    /// Frames a client would send, compressed the way SPDY clients do (the dictionary
    /// primed), read back by the server's reader; and the server's own header blocks read
    /// by a client-side decompressor.
    #[tokio::test]
    async fn frames_round_trip() {
        let mut client = Compress::new(Compression::default(), true);
        client.set_dictionary(&dictionary()).unwrap();
        let mut wire = Vec::new();
        for (id, port) in [(1u32, "8080"), (3, "9090")] {
            let mut plain = 3u32.to_be_bytes().to_vec();
            for (k, v) in [("streamtype", "data"), ("port", port), ("requestid", "0")] {
                plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
                plain.extend_from_slice(k.as_bytes());
                plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
                plain.extend_from_slice(v.as_bytes());
            }
            let mut block = Vec::with_capacity(512);
            client.compress_vec(&plain, &mut block, FlushCompress::Sync).unwrap();
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(&block);
            wire.extend_from_slice(&[0x80, 3, 0, 1, 0]);
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            wire.extend_from_slice(&body);
        }
        wire.extend_from_slice(&[0, 0, 0, 1, FLAG_FIN, 0, 0, 2, b'h', b'i']);
        let mut reader = Reader::new(wire.as_slice());
        let Some(Frame::SynStream { stream_id: 1, headers, .. }) = reader.next().await.unwrap() else { panic!("a SYN_STREAM") };
        assert_eq!(headers[1], ("port".into(), "8080".into()));
        let Some(Frame::SynStream { stream_id: 3, headers, .. }) = reader.next().await.unwrap() else { panic!("a second SYN_STREAM") };
        assert_eq!(headers[1], ("port".into(), "9090".into()), "the compression context carries over");
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Data { stream_id: 1, fin: true, data: b"hi".to_vec() }));
        assert_eq!(reader.next().await.unwrap(), None);

        let mut out = Vec::new();
        let mut writer = Writer::new(&mut out);
        writer.syn_reply(1, false).await.unwrap();
        writer.data(1, b"answer", true).await.unwrap();
        assert_eq!(&out[..4], &[0x80, 3, 0, 2]);
        let len = u32::from_be_bytes([0, out[5], out[6], out[7]]) as usize;
        let mut inflate = Decompress::new(true);
        let mut plain = Vec::with_capacity(64);
        if let Err(e) = inflate.decompress_vec(&out[12..8 + len], &mut plain, FlushDecompress::Sync) {
            assert!(e.needs_dictionary().is_some());
            inflate.set_dictionary(&dictionary()).unwrap();
            inflate.decompress_vec(&out[12 + inflate.total_in() as usize..8 + len], &mut plain, FlushDecompress::Sync).unwrap();
        }
        assert_eq!(plain, 0u32.to_be_bytes(), "an empty header block");
        assert_eq!(&out[8 + len..], &[0, 0, 0, 1, FLAG_FIN, 0, 0, 6, b'a', b'n', b's', b'w', b'e', b'r']);
    }
}
