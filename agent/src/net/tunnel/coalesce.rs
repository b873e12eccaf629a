//! Writes to the device in bulk: consecutive decrypted VXLAN datagrams of one flow and size
//! become one UDP GSO packet (a `virtio_net_hdr` in front, the device opened with
//! IFF_VNET_HDR), which the kernel splits again at the VXLAN socket. The VXLAN device then
//! receives the inner frames in one go and GRO merges them, so the inner TCP stack sees a
//! few large segments instead of one wake-up per packet. Writes need no copy back: the
//! datagrams are appended to one buffer and written with one system call.

use std::io::Write;

use super::segment::{fold, sum};

/// `struct virtio_net_hdr` (legacy, 10 bytes): what IFF_VNET_HDR puts before each packet.
pub(super) const VNET_HDR: usize = 10;
const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_UDP_L4: u8 = 5;
/// IPv4 (no options) and UDP headers.
const HEADERS: usize = 28;
/// Segments per GSO packet (the kernel's UDP_MAX_SEGMENTS is at least 64).
const MAX_SEGMENTS: usize = 64;
const MAX_PACKET: usize = 65_535;

/// The packets waiting to be written: one, or several datagrams of one flow.
pub(super) struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes in `buf` after the vnet header.
    len: usize,
    segments: usize,
    /// Payload size of each datagram (the last may be shorter, then no more join).
    size: usize,
    /// Source, destination, ports and TOS of the flow (`None`: the packet cannot take
    /// others, being fragmented, with options or not UDP).
    flow: Option<[u8; 13]>,
    closed: bool,
    /// Off once the kernel refused a GSO write (no USO on TUN before Linux 6.2).
    enabled: bool,
    /// Size of the device's vnet header (10, or 24 with tunnel offloads).
    hdr: usize,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("segments", &self.segments).finish_non_exhaustive()
    }
}

impl Coalescer {
    /// A coalescer for a device whose vnet header has `hdr` bytes.
    pub fn new(hdr: usize) -> Coalescer {
        Coalescer {
            hdr,
            buf: vec![0u8; hdr + MAX_PACKET].into_boxed_slice(),
            len: 0,
            segments: 0,
            size: 0,
            flow: None,
            closed: false,
            enabled: true,
        }
    }
}

/// The flow of a UDP datagram that can be coalesced, and its payload size.
fn flow(pkt: &[u8]) -> Option<([u8; 13], usize)> {
    let plain_udp = pkt.len() > HEADERS
        && pkt[0] == 0x45
        && pkt[9] == 17
        && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff == 0
        && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
        && usize::from(u16::from_be_bytes([pkt[24], pkt[25]])) == pkt.len() - 20;
    if !plain_udp {
        return None;
    }
    let mut key = [0u8; 13];
    key[..12].copy_from_slice(&pkt[12..24]);
    key[12] = pkt[1];
    Some((key, pkt.len() - HEADERS))
}

impl Coalescer {
    /// Adds a packet for the device; writes what was waiting when it cannot join it.
    /// Returns the packets dropped because a write failed.
    pub fn push(&mut self, pkt: &[u8], tun: &mut impl Write) -> usize {
        let this = flow(pkt).filter(|_| self.enabled);
        if let (Some((key, size)), Some(f)) = (this, self.flow) {
            let fits = key == f
                && !self.closed
                && size <= self.size
                && self.segments < MAX_SEGMENTS
                && self.len + size <= MAX_PACKET;
            if fits {
                let at = self.hdr + self.len;
                self.buf[at..at + size].copy_from_slice(&pkt[HEADERS..]);
                self.len += size;
                self.segments += 1;
                self.closed = size < self.size;
                return 0;
            }
        }
        let dropped = self.flush(tun);
        self.buf[self.hdr..self.hdr + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.segments = 1;
        self.flow = this.map(|(key, _)| key);
        self.size = this.map_or(0, |(_, size)| size);
        self.closed = false;
        dropped
    }

    /// Writes what is waiting; returns the packets dropped because the write failed.
    pub fn flush(&mut self, tun: &mut impl Write) -> usize {
        if self.segments == 0 {
            return 0;
        }
        let segments = std::mem::take(&mut self.segments);
        self.finish(segments);
        match tun.write(&self.buf[..self.hdr + self.len]) {
            Ok(_) => 0,
            Err(e) if segments > 1 && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "the device refused a UDP GSO packet; writing packets one by one from now on");
                self.enabled = false;
                segments
            }
            Err(_) => segments,
        }
    }

    /// Fills in the vnet header and, for several datagrams, the headers of the whole.
    fn finish(&mut self, segments: usize) {
        let (hdr, pkt) = self.buf.split_at_mut(self.hdr);
        hdr.fill(0);
        if segments == 1 {
            hdr[1] = GSO_NONE;
            return;
        }
        let pkt = &mut pkt[..self.len];
        let total = self.len as u16;
        let udp_len = total - 20;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt[10..12].fill(0);
        let ip_sum = !fold(sum(&pkt[..20], 0));
        pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        pkt[24..26].copy_from_slice(&udp_len.to_be_bytes());
        // Checksum offload: the field holds the pseudo-header's sum, the kernel the rest.
        let pseudo = sum(&pkt[12..20], 17 + u64::from(udp_len));
        pkt[26..28].copy_from_slice(&fold(pseudo).to_be_bytes());
        hdr[0] = NEEDS_CSUM;
        hdr[1] = GSO_UDP_L4;
        hdr[2..4].copy_from_slice(&(HEADERS as u16).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(self.size as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::ipv4;
    use super::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn udp(payload: usize) -> Vec<u8> {
        ipv4(A, B, 17, 4790, 8 + payload)
    }

    /// Every write a coalescer makes.
    #[derive(Default)]
    struct Device(Vec<Vec<u8>>);

    impl Write for Device {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// (segments, gso_size, bytes after the vnet header) of each write.
    fn writes(packets: &[Vec<u8>]) -> Vec<(u8, u16, usize)> {
        let (mut c, mut dev) = (Coalescer::new(VNET_HDR), Device::default());
        for p in packets {
            assert_eq!(c.push(p, &mut dev), 0);
        }
        assert_eq!(c.flush(&mut dev), 0);
        dev.0.iter().map(|w| (w[1], u16::from_ne_bytes([w[4], w[5]]), w.len() - VNET_HDR)).collect()
    }

    #[test]
    fn datagrams_of_one_flow_and_size_join() {
        let mut tcp = udp(100);
        tcp[9] = 6;
        let mut other_port = udp(100);
        other_port[20..22].copy_from_slice(&1234u16.to_be_bytes());
        let packets = [udp(100), udp(100), udp(60), udp(100), other_port, tcp.clone(), tcp];
        let want = vec![
            (GSO_UDP_L4, 100, 28 + 100 + 100 + 60),
            (GSO_NONE, 0, 128),
            (GSO_NONE, 0, 128),
            (GSO_NONE, 0, 128),
            (GSO_NONE, 0, 128),
        ];
        assert_eq!(writes(&packets), want);
        let many: Vec<Vec<u8>> = (0..100).map(|_| udp(1000)).collect();
        let sizes: Vec<usize> = writes(&many).iter().map(|w| w.2).collect();
        assert_eq!(sizes, vec![28 + 64 * 1000, 28 + 36 * 1000], "at most 64 segments");
    }

    #[test]
    fn a_coalesced_packet_has_consistent_headers_for_the_kernel() {
        let mut c = Coalescer::new(VNET_HDR);
        let first = udp(100);
        c.buf[VNET_HDR..VNET_HDR + first.len()].copy_from_slice(&first);
        c.len = first.len();
        c.size = 100;
        let second = udp(100);
        c.buf[VNET_HDR + c.len..VNET_HDR + c.len + 100].copy_from_slice(&second[28..]);
        c.len += 100;
        c.finish(2);
        let (hdr, pkt) = (&c.buf[..VNET_HDR], &c.buf[VNET_HDR..VNET_HDR + c.len]);
        assert_eq!((hdr[0], hdr[1]), (NEEDS_CSUM, GSO_UDP_L4));
        assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 100, "gso_size is one payload");
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), 20 + 8 + 200);
        assert_eq!(usize::from(u16::from_be_bytes([pkt[24], pkt[25]])), 8 + 200);
        assert_eq!(fold(sum(&pkt[..20], 0)), 0xffff, "a valid IPv4 header checksum");
        let single = udp(50);
        let mut c = Coalescer::new(VNET_HDR);
        c.buf[VNET_HDR..VNET_HDR + single.len()].copy_from_slice(&single);
        c.len = single.len();
        c.finish(1);
        assert!(c.buf[..VNET_HDR].iter().all(|b| *b == 0));
        assert_eq!(&c.buf[VNET_HDR..VNET_HDR + c.len], &single[..]);
    }
}
