//! Progress reporting for long work (pulls, loads). The library reports; the CLI renders.

use std::io::{self, Read};

/// Receives progress events. Ids are short digests; every method has a do-nothing default.
pub trait Progress: Send + Sync {
    /// A unit of work (a layer) starts; `total` bytes if known.
    fn start(&self, _id: &str, _total: Option<u64>) {}
    /// `bytes` more were transferred.
    fn advance(&self, _id: &str, _bytes: u64) {}
    /// The unit finished with a short status ("Pull complete", "Already exists").
    fn done(&self, _id: &str, _status: &str) {}
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// A reader that reports every read to a [`Progress`].
pub struct Counting<'a, R> {
    pub inner: R,
    pub id: &'a str,
    pub progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.progress.advance(self.id, n as u64);
        }
        Ok(n)
    }
}
