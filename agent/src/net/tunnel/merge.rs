//! TCP over VXLAN merged as GRO would (pure functions, no IO): consecutive segments of one
//! inner TCP flow become one UDP-tunnel GSO packet for a device with tunnel offloads, which
//! the VXLAN device and TCP then take in one piece.

use super::segment::{fold, sum};

/// Offsets in a VXLAN packet over IPv4: outer UDP, inner IPv4 and TCP (no IP options).
const UDP: usize = 20;
const INNER: usize = 20 + 8 + 8 + 14;
const TCP: usize = INNER + 20;
const GSO_TCPV4: u8 = 1;
const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
const NEEDS_CSUM: u8 = 1;
/// TCP flags: a segment with any but ACK and PSH is never merged.
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// A TCP segment in a VXLAN packet that may merge with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TcpSegment {
    /// Where the TCP payload starts.
    pub payload: usize,
    pub seq: u32,
    pub psh: bool,
}

/// The TCP segment `pkt` carries, if it is one that can merge: VXLAN over IPv4 without
/// options or fragments, an IPv4 TCP segment with data and only ACK (and PSH) set.
pub(super) fn segment(pkt: &[u8]) -> Option<TcpSegment> {
    let be16 = |at: usize| usize::from(u16::from_be_bytes([pkt[at], pkt[at + 1]]));
    if pkt.len() <= TCP + 20 || pkt[0] != 0x45 || pkt[9] != 17 || be16(6) & 0x3fff != 0 {
        return None;
    }
    let inner_ok = be16(INNER - 2) == 0x0800
        && pkt[INNER] == 0x45
        && pkt[INNER + 9] == 6
        && be16(INNER + 6) & 0x3fff == 0
        && be16(2) == pkt.len()
        && be16(UDP + 4) == pkt.len() - UDP
        && be16(INNER + 2) == pkt.len() - INNER;
    let payload = TCP + usize::from(pkt[TCP + 12] >> 4) * 4;
    let flags = pkt[TCP + 13];
    if !inner_ok || payload >= pkt.len() || flags & !PSH != ACK {
        return None;
    }
    let seq = u32::from_be_bytes([pkt[TCP + 4], pkt[TCP + 5], pkt[TCP + 6], pkt[TCP + 7]]);
    Some(TcpSegment { payload, seq, psh: flags & PSH != 0 })
}

/// Whether `b` is of the same flow as `a` with the same headers but for what changes from
/// one segment to the next (lengths, IDs, checksums, sequence number, PSH), as GRO asks:
/// outer addresses and ports, VXLAN and Ethernet headers, inner TOS, TTL, addresses,
/// ports, acknowledgement, window and options.
pub(super) fn same_flow(a: &[u8], b: &[u8], payload: usize) -> bool {
    let same = |from: usize, to: usize| a[from..to] == b[from..to];
    same(1, 2)
        && same(8, 9)
        && same(12, 24)
        && same(UDP + 8, INNER + 2)
        && same(INNER + 8, INNER + 9)
        && same(INNER + 12, TCP + 4)
        && same(TCP + 8, TCP + 13)
        && same(TCP + 14, TCP + 16)
        && same(TCP + 18, payload)
}

/// Makes the merged packet `pkt` (headers of the first segment, then every payload) and
/// its vnet header `hdr` (24 bytes) say what the kernel needs: one UDP-tunnel TCP GSO
/// packet of `mss`-byte segments, its inner checksum left to the kernel, no outer one.
pub(super) fn finish(hdr: &mut [u8], pkt: &mut [u8], payload: usize, mss: usize, psh: bool) {
    let len = pkt.len();
    put16(pkt, 2, len);
    set_checksum(pkt, 0, 10);
    put16(pkt, UDP + 4, len - UDP);
    put16(pkt, UDP + 6, 0);
    put16(pkt, INNER + 2, len - INNER);
    set_checksum(pkt, INNER, INNER + 10);
    if psh {
        pkt[TCP + 13] |= PSH;
    }
    let pseudo = sum(&pkt[INNER + 12..INNER + 20], 6 + (len - TCP) as u64);
    put16(pkt, TCP + 16, usize::from(fold(pseudo)));
    hdr.fill(0);
    hdr[0] = NEEDS_CSUM;
    hdr[1] = GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4;
    let fields = [(2, payload), (4, mss), (6, TCP), (8, 16), (20, UDP), (22, INNER)];
    for (at, v) in fields {
        hdr[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
    }
}

fn put16(pkt: &mut [u8], at: usize, v: usize) {
    pkt[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
}

/// Recomputes the checksum (at `field`) of the IPv4 header at `at`.
fn set_checksum(pkt: &mut [u8], at: usize, field: usize) {
    put16(pkt, field, 0);
    let check = !fold(sum(&pkt[at..at + 20], 0));
    put16(pkt, field, usize::from(check));
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A VXLAN packet carrying a TCP segment of `payload` bytes at `seq`, with `flags`.
    pub fn vxlan_tcp(seq: u32, flags: u8, payload: usize) -> Vec<u8> {
        let len = TCP + 20 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&4790u16.to_be_bytes());
        p[24..26].copy_from_slice(&((len - UDP) as u16).to_be_bytes());
        p[28] = 0x08;
        p[INNER - 2..INNER].copy_from_slice(&0x0800u16.to_be_bytes());
        p[INNER] = 0x45;
        p[INNER + 2..INNER + 4].copy_from_slice(&((len - INNER) as u16).to_be_bytes());
        p[INNER + 6] = 0x40;
        p[INNER + 8] = 64;
        p[INNER + 9] = 6;
        p[INNER + 12..INNER + 16].copy_from_slice(&[172, 16, 0, 2]);
        p[INNER + 16..INNER + 20].copy_from_slice(&[172, 16, 0, 1]);
        p[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
        p[TCP + 12] = 5 << 4;
        p[TCP + 13] = flags;
        p[TCP + 20..].fill(seq as u8);
        p
    }

    #[test]
    fn only_plain_data_segments_merge() {
        let seg = segment(&vxlan_tcp(7, ACK, 100)).unwrap();
        assert_eq!(seg, TcpSegment { payload: TCP + 20, seq: 7, psh: false });
        assert!(segment(&vxlan_tcp(7, ACK | PSH, 100)).unwrap().psh);
        for flags in [ACK | 0x01, ACK | 0x02, ACK | 0x04, 0x02, ACK | 0x80] {
            assert_eq!(segment(&vxlan_tcp(7, flags, 100)), None, "flags {flags:#x}");
        }
        assert_eq!(segment(&vxlan_tcp(7, ACK, 0)), None, "a pure ACK");
        let mut fragment = vxlan_tcp(7, ACK, 100);
        fragment[INNER + 6] = 0x20;
        assert_eq!(segment(&fragment), None);
    }

    #[test]
    fn segments_of_one_flow_differ_only_where_segments_do() {
        let (a, b) = (vxlan_tcp(0, ACK, 100), vxlan_tcp(100, ACK | PSH, 50));
        assert!(same_flow(&a, &b, TCP + 20));
        let rows = [
            (TCP + 2, "port"),
            (TCP + 8, "ack"),
            (INNER + 15, "address"),
            (TCP + 14, "window"),
            (UDP + 12, "VNI"),
            (INNER + 8, "TTL"),
        ];
        for (at, what) in rows {
            let mut c = b.clone();
            c[at] ^= 1;
            assert!(!same_flow(&a, &c, TCP + 20), "{what}");
        }
    }

    #[test]
    fn a_merged_packet_has_consistent_headers_for_the_kernel() {
        let mut merged = vxlan_tcp(0, ACK, 100);
        merged.extend_from_slice(&vxlan_tcp(100, ACK | PSH, 60)[TCP + 20..]);
        let mut hdr = [0u8; 24];
        finish(&mut hdr, &mut merged, TCP + 20, 100, true);
        let be16 = |p: &[u8], at: usize| usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
        assert_eq!(be16(&merged, 2), merged.len());
        assert_eq!(be16(&merged, INNER + 2), merged.len() - INNER);
        assert_eq!(be16(&merged, UDP + 4), merged.len() - UDP);
        assert_eq!(fold(sum(&merged[..20], 0)), 0xffff);
        assert_eq!(fold(sum(&merged[INNER..TCP], 0)), 0xffff);
        assert_eq!(merged[TCP + 13], ACK | PSH);
        assert_eq!((hdr[0], hdr[1]), (NEEDS_CSUM, GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4));
        let le16 = |at: usize| usize::from(u16::from_le_bytes([hdr[at], hdr[at + 1]]));
        assert_eq!(
            [le16(2), le16(4), le16(6), le16(8), le16(20), le16(22)],
            [TCP + 20, 100, TCP, 16, UDP, INNER]
        );
    }
}
