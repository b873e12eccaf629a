//! Packets the device hands over unfinished, with offloads on (Linux 6.17 and later can pass
//! TCP-over-VXLAN GSO packets to a TUN device): a checksum left to us is completed, and a
//! GSO packet of up to 64 KiB is cut here into the packets it stands for, each with its own
//! headers and checksums, before they are sealed. One read then brings ~45 packets, and the
//! kernel no longer splits them one by one on its way to the device.

use super::stats::DropReason;

/// The `virtio_net_hdr_v1_hash_tunnel` the device prefixes with offloads on.
pub(super) const TUNNEL_VNET_HDR: usize = 24;
const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
const TCP: u8 = 6;

/// The fields of a vnet header that matter here (little-endian, as the device writes them
/// on the little-endian hosts offloads are enabled on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub inner_nh: u16,
}

impl VnetHdr {
    /// Reads a header of `len` bytes (10, or [`TUNNEL_VNET_HDR`] with the tunnel fields).
    pub fn parse(h: &[u8]) -> VnetHdr {
        let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        VnetHdr {
            flags: h[0],
            gso_type: h[1],
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            inner_nh: if h.len() >= TUNNEL_VNET_HDR { u16_at(22) } else { 0 },
        }
    }
}

/// Calls `each` with every packet `pkt` stands for: itself (its checksum completed when the
/// kernel left it to us), or the segments of a TCP-over-VXLAN GSO packet, built in `seg`.
pub(super) fn packets(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    seg: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> Result<(), DropReason> {
    match hdr.gso_type {
        GSO_NONE => {
            if hdr.flags & NEEDS_CSUM != 0 {
                complete_checksum(pkt, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            each(pkt);
            Ok(())
        }
        t if t == GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4 => segment(hdr, pkt, seg, each),
        _ => Err(DropReason::Oversize),
    }
}

/// Stores the checksum of `pkt[start..]` (whose field at `start + offset` holds the
/// pseudo-header's sum) in that field.
fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), DropReason> {
    if start + offset + 2 > pkt.len() {
        return Err(DropReason::NotVxlan);
    }
    let sum = !fold(sum(&pkt[start..], 0));
    pkt[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Where the headers of a TCP-over-VXLAN packet are.
struct Layout {
    udp: usize,
    inner: usize,
    tcp: usize,
    payload: usize,
}

fn layout(hdr: &VnetHdr, pkt: &[u8]) -> Option<Layout> {
    let udp = usize::from(pkt.first()? & 0x0f) * 4;
    let inner = usize::from(hdr.inner_nh);
    let tcp = inner + usize::from(pkt.get(inner)? & 0x0f) * 4;
    let payload = tcp + usize::from(pkt.get(tcp + 12)? >> 4) * 4;
    let sane = pkt[0] >> 4 == 4
        && pkt[9] == 17
        && inner >= udp + 8 + 8 + 14
        && pkt[inner] >> 4 == 4
        && pkt[inner + 9] == TCP
        && tcp == usize::from(hdr.csum_start)
        && payload <= pkt.len()
        && hdr.gso_size > 0;
    sane.then_some(Layout { udp, inner, tcp, payload })
}

/// Cuts a TCP-over-VXLAN GSO packet into packets of `gso_size` bytes of TCP payload, as the
/// kernel would: lengths, IP IDs, sequence numbers, flags and checksums per segment (the
/// outer UDP checksum left out, as VXLAN over IPv4 does).
fn segment(
    hdr: &VnetHdr,
    pkt: &[u8],
    seg: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> Result<(), DropReason> {
    let Layout { udp, inner, tcp, payload } = layout(hdr, pkt).ok_or(DropReason::NotVxlan)?;
    let mss = usize::from(hdr.gso_size);
    if payload + mss > seg.len() {
        return Err(DropReason::Oversize);
    }
    let be16 = |at: usize| u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    let (outer_id, inner_id) = (be16(4), be16(inner + 4));
    let seq = u32::from_be_bytes([pkt[tcp + 4], pkt[tcp + 5], pkt[tcp + 6], pkt[tcp + 7]]);
    let chunks = pkt[payload..].chunks(mss);
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let total = payload + chunk.len();
        seg[..payload].copy_from_slice(&pkt[..payload]);
        seg[payload..total].copy_from_slice(chunk);
        let s = &mut seg[..total];
        let n = i as u16;
        set_ipv4(s, 0, total, outer_id.wrapping_add(n));
        put16(s, udp + 4, (total - udp) as u16);
        put16(s, udp + 6, 0);
        set_ipv4(s, inner, total - inner, inner_id.wrapping_add(n));
        let seq = seq.wrapping_add((i * mss) as u32);
        s[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        if i != last {
            s[tcp + 13] &= !0x09; // FIN and PSH only on the last
        }
        if i != 0 {
            s[tcp + 13] &= !0x80; // CWR only on the first
        }
        put16(s, tcp + 16, 0);
        let pseudo = sum(&s[inner + 12..inner + 20], u64::from(TCP) + (total - tcp) as u64);
        let check = !fold(sum(&s[tcp..], pseudo));
        put16(s, tcp + 16, check);
        each(s);
    }
    Ok(())
}

/// Sets an IPv4 header's total length and ID and recomputes its checksum.
fn set_ipv4(pkt: &mut [u8], at: usize, len: usize, id: u16) {
    let ihl = usize::from(pkt[at] & 0x0f) * 4;
    put16(pkt, at + 2, len as u16);
    put16(pkt, at + 4, id);
    put16(pkt, at + 10, 0);
    let check = !fold(sum(&pkt[at..at + ihl], 0));
    put16(pkt, at + 10, check);
}

fn put16(pkt: &mut [u8], at: usize, v: u16) {
    pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The ones'-complement sum of `data` as big-endian 16-bit words, plus `initial`, unfolded
/// (added up 32 bits at a time: the same sum once folded, in half the steps).
pub(super) fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a sum to 16 bits.
pub(super) fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outer IPv4 + UDP + VXLAN + Ethernet + inner IPv4 + TCP (20 bytes) around `payload`.
    fn vxlan_tcp(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 8 + 14 + 20 + 20];
        p[0] = 0x45;
        p[9] = 17;
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[22..24].copy_from_slice(&4790u16.to_be_bytes());
        p[28] = 0x08;
        p[48..50].copy_from_slice(&0x0800u16.to_be_bytes());
        let inner = 50;
        p[inner] = 0x45;
        p[inner + 9] = TCP;
        p[inner + 4..inner + 6].copy_from_slice(&7u16.to_be_bytes());
        p[inner + 12..inner + 16].copy_from_slice(&[172, 16, 0, 1]);
        p[inner + 16..inner + 20].copy_from_slice(&[172, 16, 0, 2]);
        let tcp = inner + 20;
        p[tcp + 4..tcp + 8].copy_from_slice(&1000u32.to_be_bytes());
        p[tcp + 12] = 5 << 4;
        p[tcp + 13] = 0x80 | 0x10 | 0x08 | 0x01; // CWR, ACK, PSH, FIN
        p.extend_from_slice(payload);
        p
    }

    fn gso(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4,
            gso_size: mss,
            csum_start: 70,
            csum_offset: 16,
            inner_nh: 50,
        }
    }

    fn segments(hdr: &VnetHdr, pkt: &mut [u8]) -> Vec<Vec<u8>> {
        let mut seg = vec![0u8; 1 << 16];
        let mut out = Vec::new();
        packets(hdr, pkt, &mut seg, |s| out.push(s.to_vec())).unwrap();
        out
    }

    /// Whether the IPv4 header at `at` and the TCP segment after it have valid checksums.
    fn valid(p: &[u8], at: usize) -> bool {
        let tcp = at + 20;
        let pseudo = sum(&p[at + 12..at + 20], 6 + (p.len() - tcp) as u64);
        fold(sum(&p[at..tcp], 0)) == 0xffff && fold(sum(&p[tcp..], pseudo)) == 0xffff
    }

    #[test]
    fn a_gso_packet_becomes_the_segments_the_kernel_would_send() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut pkt = vxlan_tcp(&payload);
        let segs = segments(&gso(1000), &mut pkt);
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), vec![1090, 1090, 590]);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let be16 = |at: usize| u16::from_be_bytes([s[at], s[at + 1]]);
            assert_eq!(usize::from(be16(2)), s.len(), "outer length");
            assert_eq!(usize::from(be16(24)), s.len() - 20, "UDP length");
            assert_eq!(usize::from(be16(52)), s.len() - 50, "inner length");
            assert_eq!((be16(4), be16(54)), (100 + i as u16, 7 + i as u16), "IP IDs");
            let seq = u32::from_be_bytes([s[74], s[75], s[76], s[77]]);
            assert_eq!(seq, 1000 + 1000 * i as u32);
            let flags = s[83];
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first");
            assert_eq!(flags & 0x09 != 0, i == 2, "FIN and PSH on the last");
            assert_eq!(flags & 0x10, 0x10, "ACK on all");
            assert_eq!(fold(sum(&s[..20], 0)), 0xffff, "outer header checksum");
            assert!(valid(s, 50), "segment {i}: inner checksums");
            joined.extend_from_slice(&s[90..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut pkt = vxlan_tcp(b"hello, world");
        let tcp_len = (pkt.len() - 70) as u64;
        let pseudo = fold(sum(&pkt[62..70], 6 + tcp_len));
        pkt[86..88].copy_from_slice(&pseudo.to_be_bytes());
        let hdr =
            VnetHdr { flags: NEEDS_CSUM, csum_start: 70, csum_offset: 16, ..Default::default() };
        let out = segments(&hdr, &mut pkt);
        assert_eq!(out.len(), 1);
        let check = fold(sum(&out[0][62..70], 6 + tcp_len) + sum(&out[0][70..], 0));
        assert_eq!(check, 0xffff, "the TCP checksum verifies");
    }

    #[test]
    fn other_gso_kinds_and_bad_layouts_are_refused() {
        let mut pkt = vxlan_tcp(&[0; 100]);
        let mut seg = vec![0u8; 1 << 16];
        let udp_gso = VnetHdr { gso_type: 5, ..gso(50) };
        assert_eq!(packets(&udp_gso, &mut pkt, &mut seg, |_| {}), Err(DropReason::Oversize));
        let wrong_start = VnetHdr { csum_start: 60, ..gso(50) };
        assert_eq!(packets(&wrong_start, &mut pkt, &mut seg, |_| {}), Err(DropReason::NotVxlan));
    }

    #[test]
    fn sums_agree_with_16_bit_words() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let by16 =
            data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])));
        assert_eq!(fold(sum(&data, 5)), fold(by16.sum::<u64>() + 5));
    }
}
