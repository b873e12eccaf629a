//! The tunnel's UDP socket and batched datagram IO: `sendmmsg` with UDP segmentation
//! offload (a run of equal-sized datagrams to one peer leaves as one GSO send, which the
//! stack and a veth or capable NIC carry whole), and `recvmmsg` with UDP GRO (datagrams
//! coalesced by the receiving side arrive as one buffer), into buffers allocated once per
//! thread.

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
/// `setsockopt(SOL_UDP, …)` options (linux/udp.h; not in the libc crate for glibc).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// A GSO send carries at most this many bytes and segments.
const GSO_MAX_BYTES: usize = 65_000;
const GSO_MAX_SEGMENTS: usize = 64;

/// Binds the tunnel's socket on every address, with large buffers and UDP GRO when the
/// kernel has it; says whether it can send with UDP GSO.
pub(super) fn bind(port: u16) -> io::Result<(UdpSocket, bool)> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    // Without CAP_NET_ADMIN, as much as net.core.{r,w}mem_max allow.
    if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER)?;
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER)?;
    }
    // Both from Linux 5.0 on; without them, one datagram per buffer each way.
    let gso = set_udp_option(&socket, UDP_SEGMENT, 0).is_ok();
    let _ = set_udp_option(&socket, UDP_GRO, 1);
    Ok((socket, gso))
}

#[allow(unsafe_code)]
fn set_udp_option(socket: &UdpSocket, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let value: *const libc::c_int = &value;
    // SAFETY: `value` points at a live c_int of `len` bytes, read during the call only.
    let r = unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_UDP, name, value.cast(), len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// `struct cmsghdr` with a UDP_SEGMENT (u16) or UDP_GRO (int) value: the layout of
/// CMSG_SPACE bytes the kernel reads and writes (the data right after the aligned header).
#[repr(C)]
struct Cmsg<T> {
    hdr: libc::cmsghdr,
    value: T,
}

/// Datagrams to send, up to [`BATCH`], with their peers' addresses, in one allocation.
pub(super) struct Batch {
    buf: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [SocketAddrV4; BATCH],
    count: usize,
    /// Runs of equal datagrams to one peer go out as one UDP GSO send.
    gso: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("count", &self.count).finish_non_exhaustive()
    }
}

impl Batch {
    pub fn new(gso: bool) -> Batch {
        Batch {
            buf: vec![0u8; SLOT * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); BATCH],
            count: 0,
            gso,
        }
    }

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

    /// Sends every datagram (blocking while the socket's buffer is full) and empties the
    /// batch; returns how many could not be sent.
    pub fn send(&mut self, socket: &UdpSocket) -> usize {
        let mut failed = 0;
        let mut from = 0;
        while from < self.count {
            match self.sendmmsg(socket, from) {
                Ok(sent) => from += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if self.gso && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    // The route's device cannot take GSO sends: one datagram at a time.
                    tracing::debug!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso = false;
                }
                Err(e) => {
                    // The first message was refused (no route, too long): skip its datagrams.
                    tracing::trace!(error = %e, to = %self.addrs[from], "tunnel send failed");
                    let n = self.run(from);
                    from += n;
                    failed += n;
                }
            }
        }
        self.count = 0;
        failed
    }

    /// How many datagrams from `from` on go in one message: with GSO, a run to the same
    /// peer of equal sizes (the last may be shorter), within the kernel's limits.
    fn run(&self, from: usize) -> usize {
        if !self.gso {
            return 1;
        }
        let (size, to) = (self.lens[from], self.addrs[from]);
        let mut n = 1;
        let mut bytes = size;
        while from + n < self.count && n < GSO_MAX_SEGMENTS {
            let (len, dst) = (self.lens[from + n], self.addrs[from + n]);
            if dst != to || len > size || bytes + len > GSO_MAX_BYTES {
                break;
            }
            n += 1;
            bytes += len;
            if len < size {
                break;
            }
        }
        n
    }

    /// One `sendmmsg` of the datagrams from `from` on; returns how many datagrams went.
    #[allow(unsafe_code)]
    fn sendmmsg(&mut self, socket: &UdpSocket, from: usize) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs: [Cmsg<u16>; BATCH] = unsafe { std::mem::zeroed() };
        let mut runs = [0usize; BATCH];
        let (mut m, mut i) = (0, from);
        while i < self.count {
            let n = self.run(i);
            for (k, iov) in iovs.iter_mut().enumerate().skip(i).take(n) {
                iov.iov_base = self.buf[k * SLOT..].as_mut_ptr().cast();
                iov.iov_len = self.lens[k];
            }
            names[m] = sockaddr(self.addrs[i]);
            let h = &mut msgs[m].msg_hdr;
            h.msg_name = (&mut names[m] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = n as _;
            if n > 1 {
                let c = &mut cmsgs[m];
                c.hdr.cmsg_level = libc::SOL_UDP;
                c.hdr.cmsg_type = UDP_SEGMENT;
                c.hdr.cmsg_len = (std::mem::offset_of!(Cmsg<u16>, value) + 2) as _;
                c.value = self.lens[i] as u16;
                h.msg_control = (c as *mut Cmsg<u16>).cast();
                h.msg_controllen = std::mem::size_of::<Cmsg<u16>>() as _;
            }
            runs[m] = n;
            m += 1;
            i += n;
        }
        // SAFETY: the first `m` headers point at live names, iovecs (into `self.buf`, within
        // each slot) and control messages; the kernel only reads them during the call.
        let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), m as _, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(runs[..r as usize].iter().sum())
    }
}

/// Room for a GRO-coalesced buffer of datagrams.
const GRO_SLOT: usize = 1 << 16;
/// Buffers per `recvmmsg`.
const RECV_BATCH: usize = 16;

/// Received datagrams: up to [`RECV_BATCH`] buffers, each one datagram or several of one
/// size from one sender (UDP GRO), with their senders' addresses.
pub(super) struct RecvBatch {
    buf: Box<[u8]>,
    lens: [usize; RECV_BATCH],
    segments: [usize; RECV_BATCH],
    addrs: [SocketAddrV4; RECV_BATCH],
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("count", &self.count).finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> RecvBatch {
        RecvBatch {
            buf: vec![0u8; GRO_SLOT * RECV_BATCH].into_boxed_slice(),
            lens: [0; RECV_BATCH],
            segments: [0; RECV_BATCH],
            addrs: [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); RECV_BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Fills the batch with what waits on `socket` (nothing: `WouldBlock`); returns the
    /// number of buffers.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.count = 0;
        self.count = self.recvmmsg(socket)?;
        Ok(self.count)
    }

    /// The datagrams of buffer `i`, and who sent them.
    pub fn get(&self, i: usize) -> (impl Iterator<Item = &[u8]>, SocketAddrV4) {
        let data = &self.buf[i * GRO_SLOT..i * GRO_SLOT + self.lens[i]];
        (data.chunks(self.segments[i].max(1)), self.addrs[i])
    }

    #[allow(unsafe_code)]
    fn recvmmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_in; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs: [Cmsg<libc::c_int>; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..RECV_BATCH {
            iovs[k].iov_base = self.buf[k * GRO_SLOT..].as_mut_ptr().cast();
            iovs[k].iov_len = GRO_SLOT;
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = (&mut names[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
            h.msg_control = (&mut cmsgs[k] as *mut Cmsg<libc::c_int>).cast();
            h.msg_controllen = std::mem::size_of::<Cmsg<libc::c_int>>() as _;
        }
        let flags = libc::MSG_DONTWAIT;
        // SAFETY: every header points at a live name, iovec and control buffer; each iovec
        // covers one `GRO_SLOT`-sized slot of `self.buf`; the kernel writes them during the
        // call only.
        let r = unsafe {
            let msgs = msgs.as_mut_ptr();
            libc::recvmmsg(socket.as_raw_fd(), msgs, RECV_BATCH as _, flags, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for k in 0..n {
            let h = &msgs[k].msg_hdr;
            let truncated = h.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram cannot authenticate: length 0 makes it invalid.
            self.lens[k] = if truncated { 0 } else { msgs[k].msg_len as usize };
            let c = &cmsgs[k];
            let gro = h.msg_controllen >= std::mem::size_of::<Cmsg<libc::c_int>>() as _
                && c.hdr.cmsg_level == libc::SOL_UDP
                && c.hdr.cmsg_type == UDP_GRO;
            self.segments[k] = if gro { c.value.max(1) as usize } else { self.lens[k] };
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

    fn exchange(gso: bool, lens: &[usize]) -> Vec<Vec<u8>> {
        let (a, _) = bind(0).unwrap();
        let (b, _) = bind(0).unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, b.local_addr().unwrap().port());
        let mut out = Batch::new(gso);
        for (i, &len) in lens.iter().enumerate() {
            out.free_slot()[..len].fill(i as u8);
            out.push(len, to);
        }
        assert_eq!(out.send(&a), 0);
        assert_eq!(out.count, 0);
        let mut got = RecvBatch::default();
        let mut seen = Vec::new();
        while seen.len() < lens.len() {
            assert!(wait_readable(&b, Duration::from_secs(5)).unwrap(), "nothing arrived");
            for i in 0..got.recv(&b).unwrap() {
                let (datagrams, from) = got.get(i);
                assert_eq!(from.port(), a.local_addr().unwrap().port());
                seen.extend(datagrams.map(<[u8]>::to_vec));
            }
        }
        assert!(matches!(got.recv(&b), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        seen
    }

    #[test]
    fn batches_go_out_and_come_back_whole_with_and_without_segmentation() {
        let lens = [1000, 1000, 1000, 600, 1000, 1000, 40, 1472, 148];
        for gso in [false, true] {
            let seen = exchange(gso, &lens);
            let got: Vec<usize> = seen.iter().map(Vec::len).collect();
            assert_eq!(got, lens, "gso {gso}");
            for (i, d) in seen.iter().enumerate() {
                assert!(d.iter().all(|b| *b == i as u8), "datagram {i} (gso {gso})");
            }
        }
    }

    #[test]
    fn runs_are_equal_datagrams_to_one_peer() {
        let (p, q) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let mut b = Batch::new(true);
        for (len, to) in [(100, p), (100, p), (50, p), (100, p), (100, q), (100, q), (120, q)] {
            b.push(len, to);
        }
        assert_eq!(b.run(0), 3, "equal sizes, then a shorter last one");
        assert_eq!(b.run(3), 1, "another peer next");
        assert_eq!(b.run(4), 2, "a longer one cannot follow");
        assert_eq!(b.run(6), 1);
        b.gso = false;
        assert_eq!(b.run(0), 1);
    }
}
