//! What comes in from the network: a datagram goes to its link (initiations by their keys,
//! the rest by link index), is opened by that link's `Tunn`, and what it holds enters the
//! node only if WireGuard's cryptokey routing allows it. Replies go out at once.

use std::net::{IpAddr, SocketAddrV4, UdpSocket};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::engine::{send, Shared};
use super::links::{PeerLinks, Registry};
use super::packet::{self, Route};
use super::stats::DropReason;

/// Opens one datagram; the range of `out` holding a packet for the device, if any.
pub(super) fn open(
    shared: &Shared,
    registry: &Registry,
    datagram: &[u8],
    from: SocketAddrV4,
    out: &mut [u8],
    socket: &UdpSocket,
) -> Option<std::ops::Range<usize>> {
    let index = match packet::route(datagram) {
        Route::Link(index) => index,
        Route::Init => return accept(shared, registry, datagram, from, out, socket),
        Route::Invalid => {
            shared.counters.drop(DropReason::Invalid);
            return None;
        }
    };
    let Some(state) = registry.by_index(index) else {
        shared.counters.drop(DropReason::UnknownLink);
        return None;
    };
    let mut peer = state.lock();
    let Some(at) = peer.links.iter().position(|l| l.index == index) else {
        shared.counters.drop(DropReason::UnknownLink);
        return None;
    };
    decapsulate(shared, &mut peer, at, datagram, from, out, socket)
}

/// A handshake initiation: the local key it is for (by its MAC, no Diffie-Hellman), then
/// the initiator's static key, which must be one of a peer's; anything else is refused.
fn accept(
    shared: &Shared,
    registry: &Registry,
    datagram: &[u8],
    from: SocketAddrV4,
    out: &mut [u8],
    socket: &UdpSocket,
) -> Option<std::ops::Range<usize>> {
    let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
        shared.counters.drop(DropReason::Invalid);
        return None;
    };
    let src = Some(IpAddr::V4(*from.ip()));
    for key in &registry.keys {
        match key.limiter.verify_packet(src, datagram, out) {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load: the initiator must prove its address first.
                send(shared, socket, cookie, from);
                return None;
            }
            Err(_) => continue,
        }
        let Ok(half) = parse_handshake_anon(&key.secret, &key.public, &init) else {
            shared.counters.drop(DropReason::Invalid);
            return None;
        };
        let initiator = half.peer_static_public;
        let Some(state) = registry.by_key(&initiator) else { break };
        let mut peer = state.lock();
        let Some(at) = peer
            .links
            .iter()
            .position(|l| l.local.public == key.public && *l.peer_key.as_bytes() == initiator)
        else {
            break;
        };
        return decapsulate(shared, &mut peer, at, datagram, from, out, socket);
    }
    shared.counters.refuse();
    None
}

/// Runs one datagram through link `at` of `peer`: replies go out (with what boringtun
/// queued during a handshake), a decrypted packet passes cryptokey routing, and the peer's
/// endpoint follows authenticated messages.
fn decapsulate(
    shared: &Shared,
    peer: &mut PeerLinks,
    at: usize,
    datagram: &[u8],
    from: SocketAddrV4,
    out: &mut [u8],
    socket: &UdpSocket,
) -> Option<std::ops::Range<usize>> {
    const COOKIE_REPLY: u8 = 3;
    const DATA: u8 = 4;
    let cfg = &shared.cfg;
    let base = out.as_ptr() as usize;
    let tunn = peer.links[at].tunn();
    match tunn.decapsulate(Some(IpAddr::V4(*from.ip())), datagram, out) {
        TunnResult::WriteToNetwork(reply) => {
            let authentic = reply[0] != COOKIE_REPLY;
            send(shared, socket, reply, from);
            if authentic {
                peer.endpoint = from;
            }
            let tunn = peer.links[at].tunn();
            while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], out) {
                send(shared, socket, queued, peer.endpoint);
            }
            None
        }
        TunnResult::WriteToTunnelV4(pkt, _) => {
            peer.endpoint = from;
            if !packet::inbound_allowed(pkt, peer.addr, cfg.local_addr, cfg.vxlan_port) {
                shared.counters.drop(DropReason::Cryptokey);
                return None;
            }
            peer.rx_bytes += pkt.len() as u64;
            let start = pkt.as_ptr() as usize - base;
            Some(start..start + pkt.len())
        }
        TunnResult::WriteToTunnelV6(..) => {
            peer.endpoint = from;
            shared.counters.drop(DropReason::Cryptokey);
            None
        }
        TunnResult::Done => {
            // A keepalive (authentic) or a cookie reply (not proof of the peer's address).
            if datagram[0] == DATA {
                peer.endpoint = from;
            }
            None
        }
        TunnResult::Err(e) => {
            tracing::trace!(error = ?e, "tunnel datagram refused");
            shared.counters.drop(DropReason::Invalid);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use boringtun::x25519::{PublicKey, StaticSecret};

    use std::time::Duration;

    use super::super::links::Control;
    use super::super::packet::tests::ipv4;
    use super::super::stats;
    use super::super::udp::SLOT;
    use super::super::{Peer, TunnelConfig};
    use super::*;

    const ME: [u8; 4] = [10, 0, 0, 1];
    const PEER: [u8; 4] = [10, 0, 0, 2];

    fn secret() -> StaticSecret {
        StaticSecret::random_from_rng(rand::rngs::OsRng)
    }

    fn v4(s: &UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    /// This node (keys `[newest, older]`) knowing one peer whose key is `peer`.
    fn node(keys: &[&StaticSecret], peer: &StaticSecret) -> (Shared, Registry) {
        let cfg = TunnelConfig {
            device: "t".into(),
            listen_port: 1,
            local_addr: ME.into(),
            vxlan_port: 4790,
            table: 1,
        };
        let mut c = Control::default();
        c.keys = keys.iter().map(|k| c.local_key((*k).clone())).collect();
        let p = Peer {
            node_id: "p".into(),
            addr: PEER.into(),
            endpoint: "127.0.0.1:9".parse().unwrap(),
            keys: vec![*PublicKey::from(peer).as_bytes()],
        };
        c.set_peers(BTreeMap::from([("p".to_string(), p)]));
        (Shared::new(cfg), c.rebuild())
    }

    /// What `from` received, within a second.
    fn received(from: &UdpSocket) -> Vec<u8> {
        from.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = vec![0u8; SLOT];
        let n = from.recv(&mut buf).expect("a reply");
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_handshake_to_an_older_key_finds_its_link_and_unknown_initiators_are_refused() {
        let (newest, older, peer) = (secret(), secret(), secret());
        let (shared, registry) = node(&[&newest, &older], &peer);
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        let theirs = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = vec![0u8; SLOT];

        // The peer still knows only this node's older key.
        let mut initiator = Tunn::new(peer.clone(), PublicKey::from(&older), None, None, 7, None);
        let mut buf = vec![0u8; SLOT];
        let TunnResult::WriteToNetwork(init) =
            initiator.format_handshake_initiation(&mut buf, false)
        else {
            panic!("no initiation")
        };
        assert!(open(&shared, &registry, init, v4(&theirs), &mut out, &ours).is_none());
        let response = received(&theirs);
        let TunnResult::WriteToNetwork(keepalive) =
            initiator.decapsulate(None, &response, &mut buf)
        else {
            panic!("the response did not complete the handshake")
        };
        let keepalive = keepalive.to_vec();
        assert!(open(&shared, &registry, &keepalive, v4(&theirs), &mut out, &ours).is_none());
        let peer_state = &registry.peers[0];
        {
            let links = peer_state.lock();
            let established: Vec<_> =
                links.links.iter().map(|l| (l.rank, l.established())).collect();
            assert_eq!(established, vec![((0, 0), false), ((1, 0), true)]);
            assert_eq!(links.endpoint, v4(&theirs), "the endpoint follows the peer");
        }

        // Its encrypted VXLAN comes through; anything else it sends is dropped.
        let vxlan = ipv4(PEER, ME, 17, 4790, 100);
        let TunnResult::WriteToNetwork(sealed) = initiator.encapsulate(&vxlan, &mut buf) else {
            panic!("not sealed")
        };
        let sealed = sealed.to_vec();
        let range = open(&shared, &registry, &sealed, v4(&theirs), &mut out, &ours).unwrap();
        assert_eq!(&out[range], &vxlan[..]);
        let spoofed = ipv4([10, 0, 0, 3], ME, 17, 4790, 100);
        let TunnResult::WriteToNetwork(sealed) = initiator.encapsulate(&spoofed, &mut buf) else {
            panic!("not sealed")
        };
        let sealed = sealed.to_vec();
        assert!(open(&shared, &registry, &sealed, v4(&theirs), &mut out, &ours).is_none());
        assert_eq!(stats::collect(&registry, &shared.counters).dropped.cryptokey, 1);

        // A stranger's initiation is refused, and so is one to a key this node does not have.
        for (from, to) in
            [(secret(), PublicKey::from(&newest)), (peer.clone(), PublicKey::from(&secret()))]
        {
            let mut stranger = Tunn::new(from, to, None, None, 8, None);
            let TunnResult::WriteToNetwork(init) =
                stranger.format_handshake_initiation(&mut buf, false)
            else {
                panic!("no initiation")
            };
            assert!(open(&shared, &registry, init, v4(&theirs), &mut out, &ours).is_none());
        }
        let stats = stats::collect(&registry, &shared.counters);
        assert_eq!(stats.refused_handshakes, 2);
        assert_eq!(stats.peers[0].rx_bytes, vxlan.len() as u64);
    }

    #[test]
    fn packets_for_unknown_links_or_not_wireguard_are_dropped() {
        let (shared, registry) = node(&[&secret()], &secret());
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = vec![0u8; SLOT];
        let mut data = vec![0u8; 64];
        data[0] = 4;
        let from = v4(&ours);
        assert!(open(&shared, &registry, &data, from, &mut out, &ours).is_none());
        assert!(open(&shared, &registry, b"hello", from, &mut out, &ours).is_none());
        let d = stats::collect(&registry, &shared.counters).dropped;
        assert_eq!((d.unknown_link, d.invalid), (1, 1));
    }
}
