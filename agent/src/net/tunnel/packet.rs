//! What may enter and leave the tunnel, and where a datagram goes: pure checks on IPv4
//! headers and WireGuard messages (no IO, no state).

use std::net::Ipv4Addr;

use boringtun::noise::{Packet, Tunn};

use super::stats::DropReason;

const UDP: u8 = 17;

/// Where a datagram from the network is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// A handshake initiation: the local key and peer are found by decrypting it.
    Init,
    /// A message for the link with this (24-bit) index.
    Link(u32),
    /// Not a WireGuard message.
    Invalid,
}

/// Where `datagram` goes: initiations by their keys, other messages by the index of the link
/// they are for (a link's index is the receiver index without boringtun's 8 session bits).
pub(super) fn route(datagram: &[u8]) -> Route {
    match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::HandshakeInit(_)) => Route::Init,
        Ok(Packet::HandshakeResponse(p)) => Route::Link(p.receiver_idx >> 8),
        Ok(Packet::PacketCookieReply(p)) => Route::Link(p.receiver_idx >> 8),
        Ok(Packet::PacketData(p)) => Route::Link(p.receiver_idx >> 8),
        Err(_) => Route::Invalid,
    }
}

/// The IPv4 header fields the checks look at.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    /// The UDP destination port, on a packet that is UDP and not a later fragment.
    dport: Option<u16>,
    /// A fragment other than the first (no UDP header to check).
    later_fragment: bool,
}

fn header(pkt: &[u8]) -> Option<Header> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return None;
    }
    let proto = pkt[9];
    let later_fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff != 0;
    let dport = (proto == UDP && !later_fragment && total >= ihl + 8)
        .then(|| u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]));
    let addr = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
    Some(Header { src: addr(12), dst: addr(16), proto, dport, later_fragment })
}

/// Whether `h` is encrypted VXLAN from `src` to `dst` (a later fragment of a UDP packet
/// passes: its first fragment carried the port).
fn is_vxlan(h: &Header, src: Ipv4Addr, dst: Option<Ipv4Addr>, port: u16) -> bool {
    h.src == src
        && dst.is_none_or(|d| h.dst == d)
        && h.proto == UDP
        && (h.later_fragment || h.dport == Some(port))
}

/// Checks a packet read from the TUN device (this node's encrypted VXLAN, from `local`) and
/// says which peer address it is for.
pub(super) fn outbound(pkt: &[u8], local: Ipv4Addr, port: u16) -> Result<Ipv4Addr, DropReason> {
    match header(pkt) {
        Some(h) if is_vxlan(&h, local, None, port) => Ok(h.dst),
        _ => Err(DropReason::NotVxlan),
    }
}

/// WireGuard's cryptokey routing: a packet decrypted from a peer enters the node only if it
/// is encrypted VXLAN from that peer's address to this node's.
pub(super) fn inbound_allowed(pkt: &[u8], peer: Ipv4Addr, local: Ipv4Addr, port: u16) -> bool {
    header(pkt).is_some_and(|h| is_vxlan(&h, peer, Some(local), port))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An IPv4 packet of `payload` bytes (after the IP header) from `src` to `dst`.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, dport: u16, payload: usize) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        if payload >= 8 {
            p[20..22].copy_from_slice(&40000u16.to_be_bytes());
            p[22..24].copy_from_slice(&dport.to_be_bytes());
            p[24..26].copy_from_slice(&((payload) as u16).to_be_bytes());
        }
        p
    }

    const ME: [u8; 4] = [10, 0, 0, 1];
    const PEER: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn only_this_nodes_encrypted_vxlan_enters_the_tunnel() {
        let ok = ipv4(ME, PEER, UDP, 4790, 100);
        assert_eq!(outbound(&ok, ME.into(), 4790), Ok(PEER.into()));
        let rows: [(&str, Vec<u8>); 6] = [
            ("plain VXLAN port", ipv4(ME, PEER, UDP, 4789, 100)),
            ("TCP", ipv4(ME, PEER, 6, 4790, 100)),
            ("another source", ipv4([10, 0, 0, 3], PEER, UDP, 4790, 100)),
            ("truncated", ipv4(ME, PEER, UDP, 4790, 100)[..30].to_vec()),
            ("no UDP header", ipv4(ME, PEER, UDP, 4790, 4)),
            ("IPv6", {
                let mut p = ipv4(ME, PEER, UDP, 4790, 100);
                p[0] = 0x60;
                p
            }),
        ];
        for (what, p) in rows {
            assert_eq!(outbound(&p, ME.into(), 4790), Err(DropReason::NotVxlan), "{what}");
        }
    }

    #[test]
    fn decrypted_packets_must_come_from_the_peers_address_to_ours_and_port() {
        let (peer, me) = (PEER.into(), ME.into());
        assert!(inbound_allowed(&ipv4(PEER, ME, UDP, 4790, 100), peer, me, 4790));
        let rows = [
            ("another peer's address", ipv4([10, 0, 0, 3], ME, UDP, 4790, 100)),
            ("to another address", ipv4(PEER, [10, 0, 0, 4], UDP, 4790, 100)),
            ("to another port", ipv4(PEER, ME, UDP, 22, 100)),
            ("TCP", ipv4(PEER, ME, 6, 4790, 100)),
            ("ICMP", ipv4(PEER, ME, 1, 0, 100)),
        ];
        for (what, p) in rows {
            assert!(!inbound_allowed(&p, peer, me, 4790), "{what}");
        }
    }

    #[test]
    fn later_fragments_of_vxlan_pass_and_first_fragments_are_checked() {
        let mut later = ipv4(PEER, ME, UDP, 0, 100);
        later[6..8].copy_from_slice(&0x00b9u16.to_be_bytes()); // offset 185 × 8
        assert!(inbound_allowed(&later, PEER.into(), ME.into(), 4790));
        let mut first = ipv4(PEER, ME, UDP, 22, 100);
        first[6..8].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments, offset 0
        assert!(!inbound_allowed(&first, PEER.into(), ME.into(), 4790));
    }

    #[test]
    fn datagrams_go_by_message_type_and_link_index() {
        let mut data = vec![0u8; 32 + 16];
        data[0] = 4;
        data[4..8].copy_from_slice(&((0x00ab_cdefu32 << 8) | 7).to_le_bytes());
        assert_eq!(route(&data), Route::Link(0x00ab_cdef));
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(route(&init), Route::Init);
        init.push(0);
        assert_eq!(route(&init), Route::Invalid, "a wrong size is no message");
        let mut resp = vec![0u8; 92];
        resp[0] = 2;
        resp[8..12].copy_from_slice(&(0x0000_0100u32).to_le_bytes());
        assert_eq!(route(&resp), Route::Link(1));
        assert_eq!(route(b"\x05\0\0\0garbage"), Route::Invalid);
        assert_eq!(route(&[]), Route::Invalid);
    }
}
