//! Reads an untrusted tar stream (plain or gzip) member by member, with the limits a file from
//! outside needs: one member's headers (GNU long names, PAX records) are bounded instead of
//! read into memory whole, a member cut short or an archive that stops without its
//! end-of-archive marker is an error, and every byte read is hashed (a layer's diff id).
//! The parsing itself is the `tar` crate's.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Bytes of headers one member may have (Go's archive/tar allows 1 MiB of PAX or long name).
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What is wrong with the stream itself.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error(
        "a member's headers (long names, PAX records) are larger than {MAX_HEADER_BYTES} bytes"
    )]
    HugeHeader,
    #[error("the tar stream is truncated: {0}")]
    Truncated(String),
    #[error("the tar stream is unreadable: {0}")]
    Read(#[source] io::Error),
}

/// What the reader saw, shared with the loop that drives the `tar` crate.
#[derive(Debug, Default)]
struct Watch {
    /// Header bytes left for the member being parsed; `None` while reading member data.
    header_left: Cell<Option<u64>>,
    /// The header budget ran out.
    over: Cell<bool>,
    /// The input ended (or its decompression did) while more was wanted.
    ended: Cell<bool>,
}

/// The bytes the `tar` crate reads: hashed, counted against the header budget, watched for
/// their end.
pub struct Stream<'r> {
    inner: Box<dyn Read + 'r>,
    hash: ring::digest::Context,
    watch: Rc<Watch>,
}

impl std::fmt::Debug for Stream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("watch", &self.watch).finish_non_exhaustive()
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.watch.header_left.get();
        let want = match left {
            Some(0) if !buf.is_empty() => {
                self.watch.over.set(true);
                return Err(io::Error::other("member headers too large"));
            }
            Some(l) => buf.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    self.watch.ended.set(true);
                }
                return Err(e);
            }
        };
        if n == 0 && want > 0 {
            self.watch.ended.set(true);
        }
        if let Some(l) = left {
            self.watch.header_left.set(Some(l.saturating_sub(n as u64)));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// One member of the stream, as `each_member` hands it out.
pub type Member<'a, 'r> = tar::Entry<'a, Stream<'r>>;

/// Calls `each` with every member of the tar in `src` (gzip is undone first). `each` may read
/// the member's data; what it leaves is read here. Returns the `sha256:` digest of the
/// uncompressed stream.
pub fn each_member<'r, E>(
    src: impl Read + 'r,
    mut each: impl FnMut(&mut Member<'_, 'r>) -> Result<(), E>,
) -> Result<String, E>
where
    E: From<TarError>,
{
    let watch = Rc::new(Watch::default());
    let inner = super::layer::decompressed(src).map_err(TarError::Read)?;
    let stream = Stream {
        inner,
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        watch: watch.clone(),
    };
    let mut archive = tar::Archive::new(stream);
    {
        let mut entries = archive.entries().map_err(|e| failed(&watch, e))?;
        loop {
            watch.header_left.set(Some(MAX_HEADER_BYTES));
            let Some(entry) = entries.next() else { break };
            let mut entry = entry.map_err(|e| failed(&watch, e))?;
            watch.header_left.set(None);
            let done = each(&mut entry);
            let rest = match done {
                Ok(()) => io::copy(&mut entry, &mut io::sink()).map(drop),
                Err(_) => Ok(()),
            };
            if watch.ended.get() {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(TarError::Truncated(format!("member {name:?} ends early")).into());
            }
            done?;
            rest.map_err(|e| failed(&watch, e))?;
        }
    }
    if watch.ended.get() {
        return Err(TarError::Truncated("it ends without the end-of-archive marker".into()).into());
    }
    let mut stream = archive.into_inner();
    watch.header_left.set(None);
    io::copy(&mut stream, &mut io::sink()).map_err(|e| failed(&watch, e))?;
    Ok(format!("sha256:{}", super::layer::hex(stream.hash.finish().as_ref())))
}

/// The error the `tar` crate's `e` stands for.
fn failed(watch: &Watch, e: io::Error) -> TarError {
    if watch.over.get() {
        TarError::HugeHeader
    } else if watch.ended.get() || e.kind() == io::ErrorKind::UnexpectedEof {
        TarError::Truncated(e.to_string())
    } else {
        TarError::Read(e)
    }
}
