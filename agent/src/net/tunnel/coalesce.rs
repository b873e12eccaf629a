//! Writes to the device in bulk. With tunnel offloads, consecutive segments of one TCP flow
//! inside VXLAN become one UDP-tunnel GSO packet ([`merge`]), which the VXLAN device and TCP
//! take whole. Otherwise consecutive VXLAN datagrams of one flow and size become one UDP
//! GSO packet, which the kernel splits again at the VXLAN socket; the VXLAN device then
//! receives the inner frames in one go and GRO merges them. Either way the inner TCP stack
//! sees a few large segments instead of one wake-up per packet, for one system call.

use std::io::Write;

use super::merge::{self, TcpSegment};
use super::segment::{fold, sum, TUNNEL_VNET_HDR};

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

/// What the packets waiting to be written are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// One packet that takes no others.
    Single,
    /// UDP datagrams of one flow (source, destination, ports, TOS) of `size` payload bytes
    /// each (the last may be shorter; then the run is closed).
    Udp { flow: [u8; 13], size: usize, closed: bool },
    /// TCP segments of one flow inside VXLAN, of `mss` payload bytes each (the last may be
    /// shorter, or have PSH; then the run is closed).
    Tcp { payload: usize, mss: usize, next_seq: u32, psh: bool, closed: bool },
}

/// The packets waiting to be written: one, or several of one flow.
pub(super) struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes in `buf` after the vnet header.
    len: usize,
    segments: usize,
    run: Run,
    /// UDP GSO writes; off once the kernel refused one (no USO on TUN before Linux 6.2).
    udp: bool,
    /// UDP-tunnel TCP GSO writes: with tunnel offloads, until the kernel refuses one.
    tcp: bool,
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
            run: Run::Single,
            udp: true,
            tcp: hdr >= TUNNEL_VNET_HDR,
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
        let tcp = merge::segment(pkt).filter(|_| self.tcp);
        let udp = flow(pkt).filter(|_| self.udp && tcp.is_none());
        if self.joins(pkt, tcp, udp) {
            let at = self.hdr + self.len;
            let (from, run) = (tcp.map_or(HEADERS, |t| t.payload), &mut self.run);
            let size = pkt.len() - from;
            self.buf[at..at + size].copy_from_slice(&pkt[from..]);
            self.len += size;
            self.segments += 1;
            match (run, tcp) {
                (Run::Tcp { mss, next_seq, psh, closed, .. }, Some(t)) => {
                    *next_seq = t.seq.wrapping_add(size as u32);
                    *psh = t.psh;
                    *closed = t.psh || size < *mss;
                }
                (Run::Udp { size: full, closed, .. }, _) => *closed = size < *full,
                _ => {}
            }
            return 0;
        }
        let dropped = self.flush(tun);
        self.buf[self.hdr..self.hdr + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.segments = 1;
        self.run = match (tcp, udp) {
            (Some(t), _) => {
                let mss = pkt.len() - t.payload;
                let next_seq = t.seq.wrapping_add(mss as u32);
                Run::Tcp { payload: t.payload, mss, next_seq, psh: t.psh, closed: t.psh }
            }
            (None, Some((flow, size))) => Run::Udp { flow, size, closed: false },
            (None, None) => Run::Single,
        };
        dropped
    }

    /// Whether `pkt` can join the packets waiting.
    fn joins(&self, pkt: &[u8], tcp: Option<TcpSegment>, udp: Option<([u8; 13], usize)>) -> bool {
        // Nothing waiting (the run was written by `flush`): a packet starts a run of its own.
        let room = self.segments > 0 && self.segments < MAX_SEGMENTS;
        match (self.run, tcp, udp) {
            (Run::Tcp { payload, mss, next_seq, closed, .. }, Some(t), _) => {
                let size = pkt.len() - t.payload;
                let first = &self.buf[self.hdr..self.hdr + payload];
                room && !closed
                    && t.payload == payload
                    && t.seq == next_seq
                    && size <= mss
                    && self.len + size <= MAX_PACKET
                    && merge::same_flow(first, pkt, payload)
            }
            (Run::Udp { flow, size: full, closed }, None, Some((key, size))) => {
                room && !closed && key == flow && size <= full && self.len + size <= MAX_PACKET
            }
            _ => false,
        }
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
                tracing::debug!(error = %e, run = ?self.run, "the device refused a GSO packet; no more of the kind");
                match self.run {
                    Run::Tcp { .. } => self.tcp = false,
                    _ => self.udp = false,
                }
                segments
            }
            Err(_) => segments,
        }
    }

    /// Fills in the vnet header and, for several packets, the headers of the whole.
    fn finish(&mut self, segments: usize) {
        let (hdr, pkt) = self.buf.split_at_mut(self.hdr);
        let pkt = &mut pkt[..self.len];
        hdr.fill(0);
        match self.run {
            _ if segments == 1 => hdr[1] = GSO_NONE,
            Run::Tcp { payload, mss, psh, .. } => merge::finish(hdr, pkt, payload, mss, psh),
            Run::Udp { size, .. } => finish_udp(hdr, pkt, size),
            Run::Single => {}
        }
    }
}

/// The headers of a UDP GSO packet of `size`-byte datagrams.
fn finish_udp(hdr: &mut [u8], pkt: &mut [u8], size: usize) {
    let total = pkt.len() as u16;
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
    hdr[4..6].copy_from_slice(&(size as u16).to_ne_bytes());
    hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
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

    /// (gso_type, gso_size, bytes after the vnet header) of each write, through a device
    /// with a vnet header of `hdr` bytes.
    fn writes_with(hdr: usize, packets: &[Vec<u8>]) -> Vec<(u8, u16, usize)> {
        let (mut c, mut dev) = (Coalescer::new(hdr), Device::default());
        for p in packets {
            assert_eq!(c.push(p, &mut dev), 0);
        }
        assert_eq!(c.flush(&mut dev), 0);
        dev.0.iter().map(|w| (w[1], u16::from_ne_bytes([w[4], w[5]]), w.len() - hdr)).collect()
    }

    fn writes(packets: &[Vec<u8>]) -> Vec<(u8, u16, usize)> {
        writes_with(VNET_HDR, packets)
    }

    #[test]
    fn with_tunnel_offloads_consecutive_tcp_segments_merge() {
        use super::super::merge::tests::vxlan_tcp;
        const ACK: u8 = 0x10;
        let seg = |seq: u32, flags: u8, len: usize| vxlan_tcp(seq, flags, len);
        let packets = [
            seg(0, ACK, 100),
            seg(100, ACK, 100),
            seg(200, ACK | 0x08, 100), // PSH closes the run
            seg(300, ACK, 100),
            seg(500, ACK, 100), // a gap
            seg(600, ACK, 0),   // a pure ACK
        ];
        let header = 90;
        let tunnel = 0x21;
        let want = vec![
            (tunnel, 100, header + 300),
            (GSO_NONE, 0, header + 100),
            (GSO_NONE, 0, header + 100),
            (GSO_NONE, 0, header),
        ];
        assert_eq!(writes_with(TUNNEL_VNET_HDR, &packets), want);
        let plain = writes_with(VNET_HDR, &packets[..2]);
        assert_eq!(plain, vec![(GSO_UDP_L4, 162, 28 + 2 * 162)], "without offloads: UDP GSO");
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
    fn a_packet_after_a_flush_is_written_as_itself() {
        // Every receive batch ends in a flush: the next batch's first packet of the same flow
        // must start a run of its own, not be appended to the run already written.
        use super::super::merge::tests::vxlan_tcp;
        let mut second_udp = udp(60);
        second_udp[40] = 0xaa;
        let mut second_tcp = vxlan_tcp(100, 0x10, 100);
        second_tcp[120] = 0xaa;
        let cases = [
            (VNET_HDR, udp(100), second_udp),
            (TUNNEL_VNET_HDR, vxlan_tcp(0, 0x10, 100), second_tcp),
        ];
        for (hdr, first, second) in cases {
            let (mut c, mut dev) = (Coalescer::new(hdr), Device::default());
            assert_eq!(c.push(&first, &mut dev), 0);
            assert_eq!(c.flush(&mut dev), 0);
            assert_eq!(c.push(&second, &mut dev), 0);
            assert_eq!(c.flush(&mut dev), 0);
            assert_eq!(dev.0.len(), 2, "hdr {hdr}");
            assert_eq!(&dev.0[0][hdr..], &first[..], "hdr {hdr}");
            assert_eq!(&dev.0[1][hdr..], &second[..], "hdr {hdr}: the second packet as sent");
        }
    }

    #[test]
    fn a_coalesced_packet_has_consistent_headers_for_the_kernel() {
        let mut c = Coalescer::new(VNET_HDR);
        let first = udp(100);
        c.buf[VNET_HDR..VNET_HDR + first.len()].copy_from_slice(&first);
        c.len = first.len();
        c.run = Run::Udp { flow: [0; 13], size: 100, closed: false };
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
