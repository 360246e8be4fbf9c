//! Byte streams: the 8-byte multiplexed frame format and the hijacked connection handed to a
//! [`Session`](super::backend::Session).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Which stream a chunk of container output (or input) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StreamKind {
    /// The first byte of a multiplexed frame.
    pub fn code(self) -> u8 {
        match self {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
        }
    }
}

/// Largest payload of one frame; longer writes are split.
const MAX_FRAME: usize = 1 << 20;

/// Appends `data` to `out` as multiplexed frames: stream type, three zero bytes, big-endian
/// u32 length, payload.
pub fn encode_frames(kind: StreamKind, data: &[u8], out: &mut Vec<u8>) {
    for part in data.chunks(MAX_FRAME) {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.push(kind.code());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
}

/// Encodes one chunk of output as the client expects it: raw for a tty, framed otherwise.
pub fn encode_output(tty: bool, kind: StreamKind, data: &[u8]) -> Vec<u8> {
    if tty {
        data.to_vec()
    } else {
        let mut out = Vec::with_capacity(data.len() + 8);
        encode_frames(kind, data, &mut out);
        out
    }
}

/// The client's side of a hijacked connection, split in an input and an output half.
pub struct HijackedIo {
    /// What the client sends (its stdin). Reads return 0 when the client half-closes (the
    /// docker CLI does that after the end of its stdin) or goes away.
    pub stdin: HijackedStdin,
    /// Where container output goes; clone it to write from several threads.
    pub output: OutputWriter,
}

/// The read half of a hijacked connection; bytes the server had already buffered come first.
pub struct HijackedStdin {
    pending: io::Cursor<Vec<u8>>,
    stream: UnixStream,
}

impl HijackedStdin {
    pub(crate) fn new(pending: Vec<u8>, stream: UnixStream) -> HijackedStdin {
        HijackedStdin {
            pending: io::Cursor::new(pending),
            stream,
        }
    }
}

impl Read for HijackedStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pending.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        match self.stream.read(buf) {
            // A reset connection is an end of input, not an error worth reporting.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            other => other,
        }
    }
}

/// The write half of a hijacked connection. Each write is one complete frame (or raw tty bytes),
/// so clones may be used from several threads.
#[derive(Clone)]
pub struct OutputWriter {
    stream: Arc<Mutex<UnixStream>>,
    tty: bool,
}

impl OutputWriter {
    pub(crate) fn new(stream: UnixStream, tty: bool) -> OutputWriter {
        OutputWriter {
            stream: Arc::new(Mutex::new(stream)),
            tty,
        }
    }

    /// Whether output is raw (tty) rather than multiplexed.
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// Writes `data` as output of `kind` (framed unless tty).
    pub fn write_output(&self, kind: StreamKind, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let bytes = encode_output(self.tty, kind, data);
        let mut stream = self
            .stream
            .lock()
            .map_err(|_| io::Error::other("output writer poisoned"))?;
        stream.write_all(&bytes)
    }

    /// A `Write` adapter for one stream kind (e.g. to `io::copy` a pipe into).
    pub fn writer(&self, kind: StreamKind) -> OutputStream {
        OutputStream {
            out: self.clone(),
            kind,
        }
    }

    /// Tells the client no more output follows (shuts down the write direction).
    pub fn close(&self) -> io::Result<()> {
        let stream = self
            .stream
            .lock()
            .map_err(|_| io::Error::other("output writer poisoned"))?;
        match stream.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

/// `Write` for one stream kind of an [`OutputWriter`].
pub struct OutputStream {
    out: OutputWriter,
    kind: StreamKind,
}

impl Write for OutputStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_output(self.kind, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the frames of a multiplexed stream back (for tests and the `system-docker` client).
pub fn decode_frames(mut data: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut frames = Vec::new();
    while !data.is_empty() {
        let header = data.get(..8)?;
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let payload = data.get(8..8 + len)?;
        frames.push((header[0], payload.to_vec()));
        data = &data[8 + len..];
    }
    Some(frames)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        encode_frames(StreamKind::Stdout, b"hello", &mut out);
        encode_frames(StreamKind::Stderr, b"oops\n", &mut out);
        assert_eq!(&out[..8], &[1, 0, 0, 0, 0, 0, 0, 5]);
        let frames = decode_frames(&out).unwrap();
        assert_eq!(
            frames,
            vec![(1, b"hello".to_vec()), (2, b"oops\n".to_vec())]
        );
        assert_eq!(encode_output(true, StreamKind::Stderr, b"raw"), b"raw");
        assert!(decode_frames(&out[..7]).is_none());
    }
}
