//! kubelet's plugin watcher dials the registration socket with gRPC-Go and no explicit
//! authority, so its requests carry the socket's path as HTTP/2 `:authority`
//! (`/var/lib/kubelet/plugins_registry/<driver>-reg.sock`). h2, tonic's HTTP/2, refuses
//! such a request ("malformed authority"; kubelet logs `failed to get plugin info using
//! RPC GetInfo ... stream terminated by RST_STREAM with error code: PROTOCOL_ERROR` and
//! retries forever). kubelet's CSI client sets `localhost` and is not affected; the
//! plugin watcher does not, as of v1.36.
//!
//! So every accepted connection goes through [`relay`], which rewrites the `:authority`
//! fields of the client's header blocks before tonic reads them and passes everything
//! else through unchanged.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value; h2 servers keep it unless configured.
const MAX_FRAME: usize = 16_384;
/// What kubelet's CSI client and tonic's own client send over Unix sockets.
const LOCALHOST: &str = "localhost";

/// Relays `stream` through a rewriter of request authorities; the returned end is what
/// the gRPC server reads and writes. The relay ends when either side closes.
pub fn relay(stream: UnixStream) -> DuplexStream {
    let (server_end, relay_end) = tokio::io::duplex(64 * 1024);
    let (client_read, mut client_write) = stream.into_split();
    let (mut server_read, server_write) = tokio::io::split(relay_end);
    tokio::spawn(async move {
        let requests = rewrite_requests(client_read, server_write);
        let responses = async {
            let copied = tokio::io::copy(&mut server_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
            copied
        };
        let (requests, responses) = tokio::join!(requests, responses);
        if let Err(e) = requests.and(responses.map(|_| ())) {
            tracing::debug!(error = %e, "registration connection ended");
        }
    });
    server_end
}

/// Copies an HTTP/2 client's bytes from `from` to `to`, rewriting `:authority` in header
/// blocks; anything that is not HTTP/2 with prior knowledge passes through unchanged.
async fn rewrite_requests<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    let read = read_up_to(&mut from, &mut preface).await?;
    to.write_all(&preface[..read]).await?;
    if preface != *PREFACE {
        tokio::io::copy(&mut from, &mut to).await?;
        return to.shutdown().await;
    }
    while let Some(frame) = read_frame(&mut from).await? {
        if frame.kind() != HEADERS {
            to.write_all(&frame.bytes).await?;
            continue;
        }
        let mut frames = vec![frame];
        while frames.last().is_some_and(|f| f.flags() & END_HEADERS == 0) {
            match read_frame(&mut from).await? {
                Some(next) if next.kind() == CONTINUATION => frames.push(next),
                // A protocol error the server will report; not ours to fix.
                Some(other) => {
                    frames.push(other);
                    break;
                }
                None => break,
            }
        }
        let bytes = rewrite_header_frames(&frames)
            .unwrap_or_else(|| frames.iter().flat_map(|f| f.bytes.clone()).collect());
        to.write_all(&bytes).await?;
    }
    to.shutdown().await
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
async fn read_up_to<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match from.read(&mut buf[read..]).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

/// One frame: its 9-byte header and payload, as read.
struct Frame {
    bytes: Vec<u8>,
}

impl Frame {
    fn kind(&self) -> u8 {
        self.bytes[3]
    }
    fn flags(&self) -> u8 {
        self.bytes[4]
    }
    fn payload(&self) -> &[u8] {
        &self.bytes[9..]
    }
}

/// The next frame, or `None` at the end of the stream (a partial frame is passed on by
/// failing: the server would refuse it anyway).
async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 9];
    match read_up_to(from, &mut header).await? {
        0 => return Ok(None),
        9 => {}
        _ => return Err(io::ErrorKind::UnexpectedEof.into()),
    }
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut bytes = Vec::with_capacity(9 + len);
    bytes.extend_from_slice(&header);
    bytes.resize(9 + len, 0);
    from.read_exact(&mut bytes[9..]).await?;
    Ok(Some(Frame { bytes }))
}

/// A HEADERS frame and its CONTINUATIONs as one HEADERS frame with the authority
/// rewritten (padding dropped, priority kept); `None` when nothing changes or the frames
/// are not what they should be.
fn rewrite_header_frames(frames: &[Frame]) -> Option<Vec<u8>> {
    let (first, rest) = frames.split_first()?;
    if rest.iter().any(|f| f.kind() != CONTINUATION) {
        return None;
    }
    let payload = first.payload();
    let flags = first.flags();
    let (start, padding) = if flags & PADDED != 0 {
        (1, usize::from(*payload.first()?))
    } else {
        (0, 0)
    };
    let priority_len = if flags & PRIORITY != 0 { 5 } else { 0 };
    let priority = payload.get(start..start + priority_len)?;
    let fragment = payload.get(start + priority_len..payload.len().checked_sub(padding)?)?;
    let mut block = fragment.to_vec();
    for continuation in rest {
        block.extend_from_slice(continuation.payload());
    }
    let block = rewrite_authority(&block)?;
    let len = priority.len() + block.len();
    if len > MAX_FRAME {
        return None;
    }
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(HEADERS);
    out.push(flags & !PADDED | END_HEADERS);
    out.extend_from_slice(&first.bytes[5..9]);
    out.extend_from_slice(priority);
    out.extend_from_slice(&block);
    Some(out)
}

/// An HPACK header block (RFC 7541) with every literal `:authority` field that is not a
/// valid authority replaced by `localhost`, in the same representation (so the decoder's
/// dynamic table keeps its entries in the encoder's order); `None` when nothing changes.
///
/// The replacement is never longer than the value it replaces, so the server's dynamic
/// table never evicts an entry the client still refers to. A Huffman-coded value cannot be
/// checked without decoding it, so it is replaced whatever it says, by as much of
/// `localhost` as its shortest possible decoded length allows (codes are 5 to 30 bits).
pub fn rewrite_authority(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut changed = false;
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        let rest = &block[i..];
        // Indexed field, or a dynamic table size update: no strings to look at.
        let skip = if b & 0x80 != 0 {
            Some(7)
        } else if b & 0xe0 == 0x20 {
            Some(5)
        } else {
            None
        };
        if let Some(prefix) = skip {
            let (_, n) = integer(rest, prefix)?;
            out.extend_from_slice(&rest[..n]);
            i += n;
            continue;
        }
        // Literal with incremental indexing; without indexing; never indexed.
        let (prefix, kind_bits) = if b & 0xc0 == 0x40 {
            (6, 0x40)
        } else {
            (4, b & 0xf0)
        };
        let (index, mut n) = integer(rest, prefix)?;
        let mut is_authority = index == 1;
        if index == 0 {
            let (name, m) = string(&rest[n..])?;
            is_authority = !name.huffman && name.bytes == b":authority";
            n += m;
        }
        let (value, m) = string(&rest[n..])?;
        let end = n + m;
        match is_authority.then(|| replacement(&value)).flatten() {
            Some(new) => {
                // Index 1 (`:authority` in the static table) fits in either prefix; the
                // length fits in the 7-bit prefix of a plain string.
                out.push(kind_bits | 1);
                out.push(new.len() as u8);
                out.extend_from_slice(new.as_bytes());
                changed = true;
            }
            None => out.extend_from_slice(&rest[..end]),
        }
        i += end;
    }
    changed.then_some(out)
}

/// What replaces an authority value, if anything.
fn replacement(value: &HpackString<'_>) -> Option<&'static str> {
    let shortest = if value.huffman {
        if value.bytes.is_empty() {
            return None;
        }
        // 30 bits at most per character, up to 7 bits of padding, and a non-empty code
        // holds at least one character.
        ((value.bytes.len() * 8).saturating_sub(7) / 30).max(1)
    } else if value.bytes.iter().all(|c| is_authority_char(*c)) {
        return None;
    } else {
        value.bytes.len()
    };
    Some(&LOCALHOST[..shortest.min(LOCALHOST.len())])
}

/// Characters of an RFC 3986 authority (reg-name, IP literal, port, userinfo).
fn is_authority_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]%".contains(&c)
}

struct HpackString<'a> {
    huffman: bool,
    bytes: &'a [u8],
}

/// An HPACK string literal at the start of `buf` and its encoded length.
fn string(buf: &[u8]) -> Option<(HpackString<'_>, usize)> {
    let huffman = buf.first()? & 0x80 != 0;
    let (len, n) = integer(buf, 7)?;
    let bytes = buf.get(n..n.checked_add(len)?)?;
    Some((HpackString { huffman, bytes }, n + len))
}

/// An HPACK integer with a `prefix`-bit prefix at the start of `buf`, and its length.
fn integer(buf: &[u8], prefix: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*buf.first()?) & max;
    if first < max {
        return Some((first, 1));
    }
    let mut value = max;
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        value = value.checked_add(usize::from(b & 0x7f) << (7 * (i - 1)))?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `:method: POST` (static 3), then `:authority` as kubelet's gRPC-Go sends it:
    /// literal with incremental indexing, name index 1, the socket path as a plain string.
    fn kubelet_block(path: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x41, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        // `content-type: application/grpc` (name index 31, literal with indexing).
        block.push(0x40 | 31);
        block.push(16);
        block.extend_from_slice(b"application/grpc");
        block
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let path = "/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock";
        let rewritten = rewrite_authority(&kubelet_block(path)).unwrap();
        let mut want = vec![0x83, 0x41, 9];
        want.extend_from_slice(b"localhost");
        want.extend_from_slice(&kubelet_block(path)[3 + path.len()..]);
        assert_eq!(rewritten, want);
    }

    #[test]
    fn valid_authorities_and_other_fields_are_left_alone() {
        assert_eq!(rewrite_authority(&kubelet_block("localhost")), None);
        assert_eq!(rewrite_authority(&kubelet_block("127.0.0.1:8080")), None);
        // Indexed fields and a dynamic table size update only.
        assert_eq!(rewrite_authority(&[0x82, 0x86, 0x3f, 0xe1, 0x1f]), None);
    }

    #[test]
    fn every_literal_form_and_a_literal_name_are_rewritten() {
        for first in [0x01u8, 0x11] {
            let block = [vec![first, 5], b"/a/b/".to_vec()].concat();
            assert_eq!(
                rewrite_authority(&block).unwrap(),
                [vec![first, 5], b"local".to_vec()].concat(),
                "representation {first:#x}"
            );
        }
        let block = [
            vec![0x40, 10],
            b":authority".to_vec(),
            vec![3],
            b"/x/".to_vec(),
        ]
        .concat();
        assert_eq!(
            rewrite_authority(&block).unwrap(),
            [vec![0x41, 3], b"loc".to_vec()].concat()
        );
    }

    #[test]
    fn huffman_values_are_replaced_by_no_more_than_their_shortest_decoding() {
        // 40 bytes of Huffman code hold at least (320 - 7) / 30 = 10 characters.
        let block = [vec![0x41, 0x80 | 40], vec![0xaa; 40]].concat();
        assert_eq!(
            rewrite_authority(&block).unwrap(),
            [vec![0x41, 9], b"localhost".to_vec()].concat()
        );
        let block = [vec![0x41, 0x80 | 20], vec![0xaa; 20]].concat();
        assert_eq!(
            rewrite_authority(&block).unwrap(),
            [vec![0x41, 5], b"local".to_vec()].concat()
        );
    }

    #[test]
    fn truncated_blocks_are_not_touched() {
        let block = kubelet_block("/a/b.sock");
        assert_eq!(rewrite_authority(&block[..5]), None);
    }

    #[test]
    fn multi_byte_integers_decode() {
        assert_eq!(integer(&[0x1f, 0x9a, 0x0a], 5), Some((1337, 3)));
        assert_eq!(integer(&[0x0a], 5), Some((10, 1)));
        assert_eq!(integer(&[0x1f, 0x80], 5), None);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn the_relay_rewrites_split_padded_headers_and_passes_other_frames() {
        let path = "/tmp/spire-rs-node-x/kubelet/plugins_registry/csi.spiffe.io-reg.sock";
        let block = kubelet_block(path);
        let settings = frame(0x4, 0, 0, &[]);
        // HEADERS (padded, priority, no END_HEADERS) + CONTINUATION, then DATA.
        let mut headers_payload = vec![2];
        headers_payload.extend([0, 0, 0, 0, 16]);
        headers_payload.extend_from_slice(&block[..10]);
        headers_payload.extend([0, 0]);
        let data = frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]);
        let input = [
            PREFACE.to_vec(),
            settings.clone(),
            frame(HEADERS, PADDED | PRIORITY | 0x1, 1, &headers_payload),
            frame(CONTINUATION, END_HEADERS, 1, &block[10..]),
            data.clone(),
        ]
        .concat();
        let mut output = Vec::new();
        rewrite_requests(&input[..], &mut output).await.unwrap();

        let rewritten = rewrite_authority(&block).unwrap();
        let want = [
            PREFACE.to_vec(),
            settings,
            frame(
                HEADERS,
                PRIORITY | 0x1 | END_HEADERS,
                1,
                &[&[0, 0, 0, 0, 16][..], &rewritten].concat(),
            ),
            data,
        ]
        .concat();
        assert_eq!(output, want);
    }

    #[tokio::test]
    async fn a_client_that_does_not_speak_http2_is_passed_through() {
        let input = b"GET /healthz HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
        let mut output = Vec::new();
        rewrite_requests(&input[..], &mut output).await.unwrap();
        assert_eq!(output, input);
    }
}
