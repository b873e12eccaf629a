//! The tunnel's UDP socket and batched datagram IO (`recvmmsg`/`sendmmsg`): one system call
//! moves up to [`BATCH`] datagrams, into and out of buffers allocated once per thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::sockopt;

/// Room for one datagram or packet: the device's MTU plus WireGuard's 32 bytes, rounded up.
pub(super) const SLOT: usize = 2048;
/// Datagrams per system call.
pub(super) const BATCH: usize = 32;
/// Socket buffers: room for bursts while the other thread is busy (forced: we are root).
const SOCKET_BUFFER: usize = 16 << 20;

/// Binds the tunnel's socket on every address, with large buffers.
pub(super) fn bind(port: u16) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    // Without CAP_NET_ADMIN, as much as net.core.{r,w}mem_max allow.
    if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER)?;
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER)?;
    }
    Ok(socket)
}

/// Waits until `fd` is readable or `timeout` passes; `true` if readable.
pub(super) fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Up to [`BATCH`] datagrams with their peers' addresses, in one allocation.
pub(super) struct Batch {
    buf: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [SocketAddrV4; BATCH],
    count: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("count", &self.count).finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            buf: vec![0u8; SLOT * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); BATCH],
            count: 0,
        }
    }
}

impl Batch {
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// The next free slot, to write a datagram into before [`Batch::push`]. Panics when full.
    pub fn free_slot(&mut self) -> &mut [u8] {
        let at = self.count * SLOT;
        &mut self.buf[at..at + SLOT]
    }

    /// Keeps the first `len` bytes of the free slot, to be sent to `to`.
    pub fn push(&mut self, len: usize, to: SocketAddrV4) {
        self.lens[self.count] = len;
        self.addrs[self.count] = to;
        self.count += 1;
    }

    /// Datagram `i` and where it came from (or goes).
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        (&self.buf[i * SLOT..i * SLOT + self.lens[i]], self.addrs[i])
    }

    /// Sends every datagram (blocking while the socket's buffer is full) and empties the
    /// batch; returns how many could not be sent.
    pub fn send(&mut self, socket: &UdpSocket) -> usize {
        let mut sent = 0;
        let mut failed = 0;
        while sent < self.count {
            match self.sendmmsg(socket, sent) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The first datagram was refused (no route, message too long): skip it.
                    tracing::trace!(error = %e, to = %self.addrs[sent], "tunnel send failed");
                    sent += 1;
                    failed += 1;
                }
            }
        }
        self.count = 0;
        failed
    }

    /// Fills the batch with the datagrams waiting on `socket` (none: `WouldBlock`).
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.count = 0;
        let n = self.recvmmsg(socket)?;
        self.count = n;
        Ok(n)
    }

    #[allow(unsafe_code)]
    fn sendmmsg(&mut self, socket: &UdpSocket, from: usize) -> io::Result<usize> {
        let n = self.count - from;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..n {
            let i = from + k;
            names[k] = sockaddr(self.addrs[i]);
            iovs[k].iov_base = self.buf[i * SLOT..].as_mut_ptr().cast();
            iovs[k].iov_len = self.lens[i];
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = (&mut names[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at live names and iovecs, which point into
        // `self.buf` within each slot; the kernel only reads them during the call.
        let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as _, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    #[allow(unsafe_code)]
    fn recvmmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..BATCH {
            iovs[k].iov_base = self.buf[k * SLOT..].as_mut_ptr().cast();
            iovs[k].iov_len = SLOT;
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = (&mut names[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
        }
        let flags = libc::MSG_DONTWAIT;
        // SAFETY: every header points at a live name and iovec; each iovec covers one
        // `SLOT`-sized slot of `self.buf`, which the kernel writes during the call only.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for k in 0..n {
            let truncated = msgs[k].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram cannot authenticate: length 0 makes it invalid.
            self.lens[k] = if truncated { 0 } else { msgs[k].msg_len as usize };
            self.addrs[k] = from_sockaddr(&names[k]);
        }
        Ok(n)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes()), u16::from_be(s.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back_whole() {
        let a = bind(0).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            _ => unreachable!(),
        };
        let mut out = Batch::default();
        for i in 0..5u8 {
            let slot = out.free_slot();
            slot[..3].copy_from_slice(&[i, i, i]);
            out.push(3 + usize::from(i), to);
        }
        assert_eq!(out.send(&a), 0);
        assert_eq!(out.count, 0);
        let mut got = Batch::default();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            assert!(wait_readable(&b, Duration::from_secs(5)).unwrap(), "nothing arrived");
            for i in 0..got.recv(&b).unwrap() {
                let (d, from) = got.get(i);
                assert_eq!(from.port(), a.local_addr().unwrap().port());
                seen.push(d.to_vec());
            }
        }
        assert_eq!(seen[4].len(), 7);
        assert_eq!(&seen[4][..3], &[4, 4, 4]);
        assert!(matches!(got.recv(&b), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }
}
