//! Finds where HTTP/1.1 requests begin in a client's byte stream, so the proxy can count
//! the requests it forwards over TCP without changing a byte of them. It reads request
//! heads with httparse and skips bodies by their framing (`Content-Length`, chunked). A
//! stream that is not HTTP/1.1 from its first bytes (TLS, HTTP/2, a database protocol),
//! or that stops being HTTP (an upgrade, `CONNECT`), is let through uncounted from there.

/// The longest request head read; past it the stream is not counted (servers refuse
/// heads much smaller: hyper's default is 100 headers and 400 KiB, nginx's 8 KiB lines).
const MAX_HEAD: usize = 64 * 1024;
/// Headers read per request head, as many as hyper allows.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line read.
const MAX_LINE: usize = 4096;

/// Where the reader is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before or inside a request head.
    Head,
    /// Inside a body of known length: this many bytes are left.
    Body(u64),
    /// A chunk-size line of a chunked body.
    ChunkSize,
    /// Inside a chunk's data: this many bytes are left, then the chunk's CRLF line.
    ChunkData(u64),
    /// The line ending a chunk's data.
    ChunkEnd,
    /// The trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Not HTTP/1.1, or no longer: nothing more is read.
    Opaque,
}

/// A reader of one client's stream.
#[derive(Debug)]
pub(crate) struct RequestHeads {
    at: At,
    /// The part of a head or line read so far, when it came in more than one piece.
    pending: Vec<u8>,
}

impl Default for RequestHeads {
    fn default() -> Self {
        RequestHeads { at: At::Head, pending: Vec::new() }
    }
}

impl RequestHeads {
    /// Whether the stream is no longer read (not HTTP/1.1, or upgraded to something else).
    pub fn opaque(&self) -> bool {
        self.at == At::Opaque
    }

    /// Reads the next bytes the client sent; returns how many requests began in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut began = 0;
        while !bytes.is_empty() {
            match self.at {
                At::Opaque => break,
                At::Head => match self.head(bytes) {
                    Some(used) => {
                        began += 1;
                        bytes = &bytes[used..];
                    }
                    None => break,
                },
                At::Body(left) => {
                    let left = skip(&mut bytes, left);
                    self.at = if left == 0 { At::Head } else { At::Body(left) };
                }
                At::ChunkData(left) => {
                    let left = skip(&mut bytes, left);
                    self.at = if left == 0 { At::ChunkEnd } else { At::ChunkData(left) };
                }
                At::ChunkSize | At::ChunkEnd | At::Trailers => {
                    let Some((line, used)) = self.line(bytes) else { break };
                    bytes = &bytes[used..];
                    self.at = match self.at {
                        At::ChunkSize => chunk_size(&line).map_or(At::Opaque, |n| if n == 0 { At::Trailers } else { At::ChunkData(n) }),
                        At::ChunkEnd if line.is_empty() => At::ChunkSize,
                        At::Trailers if line.is_empty() => At::Head,
                        At::Trailers => At::Trailers,
                        _ => At::Opaque,
                    };
                }
            }
        }
        began
    }

    /// Reads a request head from `bytes` (after any part of it read before): how many
    /// bytes of `bytes` it took, once it is whole.
    fn head(&mut self, bytes: &[u8]) -> Option<usize> {
        let before = self.pending.len();
        // The usual case, a head in one piece, is read in place.
        let buf = if before == 0 {
            bytes
        } else {
            self.pending.extend_from_slice(bytes);
            &self.pending[..]
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                self.at = body_of(&req);
                self.pending.clear();
                Some(len - before)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                if before == 0 {
                    self.pending.extend_from_slice(bytes);
                }
                None
            }
            // Not HTTP/1.1, or a head too big to be one a server takes.
            _ => {
                self.at = At::Opaque;
                self.pending = Vec::new();
                None
            }
        }
    }

    /// Reads one line (up to LF, CR LF stripped) from `bytes` after any part read before:
    /// the line and how many bytes of `bytes` it took.
    fn line(&mut self, bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        match bytes.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(&bytes[..i]);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some((line, i + 1))
            }
            None => {
                self.pending.extend_from_slice(bytes);
                if self.pending.len() > MAX_LINE {
                    self.at = At::Opaque;
                    self.pending = Vec::new();
                }
                None
            }
        }
    }
}

/// What follows a request's head, by its framing (RFC 9112 section 6): a chunked body, a
/// body of `Content-Length`, or none. A request that changes protocol (`CONNECT`, an
/// upgrade, HTTP/2's preface) ends the reading, as does framing a server would refuse.
fn body_of(req: &httparse::Request<'_, '_>) -> At {
    if matches!(req.method, Some("CONNECT" | "PRI")) {
        return At::Opaque;
    }
    let values = |name: &'static str| header_values(req, name);
    let upgrades = values("connection").any(|v| v.split(',').any(|t| t.trim() == "upgrade"));
    if upgrades && values("upgrade").next().is_some() {
        return At::Opaque;
    }
    if let Some(codings) = values("transfer-encoding").last() {
        return if codings.rsplit(',').next().map(str::trim) == Some("chunked") { At::ChunkSize } else { At::Opaque };
    }
    let mut lengths = values("content-length");
    match (lengths.next(), lengths.next()) {
        (None, _) => At::Head,
        (Some(n), None) => n.parse::<u64>().map_or(At::Opaque, |n| if n == 0 { At::Head } else { At::Body(n) }),
        (Some(_), Some(_)) => At::Opaque,
    }
}

/// A request's values of header `name`, trimmed and lowercase.
fn header_values<'a>(req: &'a httparse::Request<'_, '_>, name: &'static str) -> impl Iterator<Item = String> + 'a {
    req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
}

/// Takes up to `left` bytes off the front of `bytes`: how many are still to come.
fn skip(bytes: &mut &[u8], left: u64) -> u64 {
    let n = left.min(bytes.len() as u64);
    *bytes = &bytes[n as usize..];
    left - n
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let hex = text.split(';').next()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const POST: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /";
    const CHUNKED: &[u8] = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nGET \r\n0\r\nX-T: 1\r\n\r\n";

    fn count(stream: &[u8]) -> usize {
        RequestHeads::default().feed(stream)
    }

    #[test]
    fn requests_are_counted_and_bodies_skipped() {
        let stream = [GET, POST, CHUNKED, GET].concat();
        assert_eq!(count(&stream), 4, "the bodies look like request heads and are not counted");
    }

    #[test]
    fn what_is_not_http_or_stops_being_it_is_not_counted() {
        assert_eq!(count(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 0, "TLS");
        assert_eq!(count(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, "HTTP/2's preface");
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let mut r = RequestHeads::default();
        assert_eq!(r.feed(&[&upgrade[..], GET].concat()), 1, "what follows an upgrade is not HTTP");
        assert!(r.opaque());
        let smuggled = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(count(&[&smuggled[..], GET].concat()), 1, "framing a server refuses ends the reading");
    }

    proptest! {
        /// However the stream is cut into reads, the same requests are found.
        #[test]
        fn any_split_of_the_stream_counts_the_same(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            let stream = [GET, POST, CHUNKED, GET, POST].concat();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % stream.len()).collect();
            points.sort();
            let mut r = RequestHeads::default();
            let (mut total, mut from) = (0, 0);
            for p in points.into_iter().chain([stream.len()]) {
                total += r.feed(&stream[from..p.max(from)]);
                from = p.max(from);
            }
            prop_assert_eq!(total, 5);
        }

        /// Any bytes at all are read without a panic, and never count more requests than
        /// there are line ends (a head has at least one).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let line_ends = bytes.iter().filter(|b| **b == b'\n').count();
            prop_assert!(count(&bytes) <= line_ends);
        }
    }
}
