//! Keys, peers and their links: which boringtun `Tunn` a packet goes through.
//!
//! The control side ([`Control`], behind the tunnel's mutex) owns the key and peer lists and
//! rebuilds an immutable [`Registry`] (the lookup maps the packet threads read) after every
//! change. A peer's links live in its [`PeerState`], under its own short mutex; a link's
//! `Tunn` is created on first use, its index when the pair first appears.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};

use super::Peer;

/// Handshake initiations a local key answers per second before asking for cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// An endpoint not known yet (sends to it fail).
const UNSET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
/// Link indices have 24 bits (boringtun keeps the low 8 for the session).
const INDEX_MASK: u32 = 0x00ff_ffff;

/// One of this node's static keys, with the rate limiter of handshakes addressed to it.
pub(super) struct LocalKey {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub limiter: Arc<RateLimiter>,
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKey(<redacted>)")
    }
}

/// One (local key, peer key) pair and, once used, its boringtun state machine.
pub(super) struct Link {
    pub local: Arc<LocalKey>,
    pub peer_key: PublicKey,
    /// Positions of the two keys in their lists (0 is the newest), for the stats.
    pub rank: (usize, usize),
    pub index: u32,
    pub tunn: Option<Box<Tunn>>,
}

impl Link {
    /// The link's `Tunn`, created now if it has none yet.
    pub fn tunn(&mut self) -> &mut Tunn {
        let (local, peer, index) = (&self.local, self.peer_key, self.index);
        self.tunn.get_or_insert_with(|| {
            let limiter = Some(local.limiter.clone());
            Box::new(Tunn::new(local.secret.clone(), peer, None, None, index, limiter))
        })
    }

    /// Whether the link has a session data can be sent with.
    pub fn established(&self) -> bool {
        self.tunn.as_ref().is_some_and(|t| t.time_since_last_handshake().is_some())
    }
}

/// What the packet threads and the timers share about one peer.
#[derive(Debug)]
pub(super) struct PeerState {
    pub node_id: String,
    inner: Mutex<PeerLinks>,
}

impl PeerState {
    pub fn lock(&self) -> MutexGuard<'_, PeerLinks> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A peer's mutable state: where it is and its links, newest pair first.
pub(super) struct PeerLinks {
    pub addr: Ipv4Addr,
    /// Where packets to it go: the configured endpoint, or where it last spoke from.
    pub endpoint: SocketAddrV4,
    /// The endpoint the control plane last gave (a new one overrides roaming).
    configured: SocketAddrV4,
    keys: Vec<PublicKey>,
    pub links: Vec<Link>,
    /// Set when the peer is removed: threads holding an older registry drop its packets.
    pub removed: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("addr", &self.addr)
            .field("endpoint", &self.endpoint)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// How a packet to a peer is sent, from which of its links have a session (newest pair
/// first): through the newest established link; when that is not the newest, the newest is
/// asked to handshake so traffic moves to it once it is up; when none is, through the newest
/// (which queues the packet and handshakes) while the others handshake too, in case the
/// peer does not know this node's newest key yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Choice {
    pub send: usize,
    pub kick_newest: bool,
    pub kick_others: bool,
}

pub(super) fn choose(established: impl IntoIterator<Item = bool>) -> Choice {
    match established.into_iter().position(|e| e) {
        Some(0) => Choice { send: 0, kick_newest: false, kick_others: false },
        Some(i) => Choice { send: i, kick_newest: true, kick_others: false },
        None => Choice { send: 0, kick_newest: false, kick_others: true },
    }
}

/// The pairs of `local` × `peer` keys, newest first: both newest, then the newest local
/// key with older peer keys, then older local keys.
pub(super) fn ranked_pairs(local: usize, peer: usize) -> Vec<(usize, usize)> {
    (0..local).flat_map(|l| (0..peer).map(move |p| (l, p))).collect()
}

/// The lookup maps the packet threads use; rebuilt (never changed) on every key or peer
/// change.
#[derive(Default)]
pub(super) struct Registry {
    pub keys: Vec<Arc<LocalKey>>,
    pub peers: Vec<Arc<PeerState>>,
    by_addr: HashMap<Ipv4Addr, usize>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("keys", &self.keys.len())
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The peer whose data-plane address is `addr`.
    pub fn by_addr(&self, addr: Ipv4Addr) -> Option<&Arc<PeerState>> {
        self.by_addr.get(&addr).map(|&i| &self.peers[i])
    }

    /// The peer owning the link with index `index`.
    pub fn by_index(&self, index: u32) -> Option<&Arc<PeerState>> {
        self.by_index.get(&index).map(|&i| &self.peers[i])
    }

    /// The peer one of whose keys is `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<PeerState>> {
        self.by_key.get(key).map(|&i| &self.peers[i])
    }
}

/// The control side: this node's keys and its peers.
#[derive(Debug, Default)]
pub(super) struct Control {
    pub keys: Vec<Arc<LocalKey>>,
    peers: BTreeMap<String, Arc<PeerState>>,
}

impl Control {
    /// `secret` as a local key, keeping the rate limiter it had if it is already one.
    pub fn local_key(&self, secret: StaticSecret) -> Arc<LocalKey> {
        let public = PublicKey::from(&secret);
        if let Some(k) = self.keys.iter().find(|k| k.public == public) {
            return k.clone();
        }
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Arc::new(LocalKey { secret, public, limiter })
    }

    /// Replaces the peers with `wanted` (by node ID): peers that are gone lose their links
    /// now; the others keep the links whose keys they still have.
    pub fn set_peers(&mut self, mut wanted: BTreeMap<String, Peer>) {
        let old = std::mem::take(&mut self.peers);
        for (id, state) in old {
            match wanted.remove(&id) {
                Some(p) => {
                    state.lock().update(&p);
                    self.peers.insert(id, state);
                }
                None => {
                    let mut links = state.lock();
                    links.links.clear();
                    links.removed = true;
                }
            }
        }
        for (id, p) in wanted {
            let links = PeerLinks {
                addr: p.addr,
                endpoint: UNSET,
                configured: UNSET,
                keys: Vec::new(),
                links: Vec::new(),
                removed: false,
                rx_bytes: 0,
                tx_bytes: 0,
            };
            let state = Arc::new(PeerState { node_id: id.clone(), inner: Mutex::new(links) });
            state.lock().update(&p);
            self.peers.insert(id, state);
        }
    }

    /// Gives every peer one link per key pair (dropping those of keys that are gone) and
    /// builds the registry the packet threads will use.
    pub fn rebuild(&mut self) -> Registry {
        let mut used: HashSet<u32> = HashSet::new();
        for state in self.peers.values() {
            used.extend(state.lock().links.iter().map(|l| l.index));
        }
        let mut registry = Registry { keys: self.keys.clone(), ..Registry::default() };
        for (i, state) in self.peers.values().enumerate() {
            let mut links = state.lock();
            let old = std::mem::take(&mut links.links);
            links.links = relink(old, &self.keys, &links.keys, &mut used);
            if registry.by_addr.insert(links.addr, i).is_some() {
                tracing::warn!(node = %state.node_id, addr = %links.addr, "two peers have the same address; the later one is used");
            }
            registry.by_index.extend(links.links.iter().map(|l| (l.index, i)));
            registry.by_key.extend(links.keys.iter().map(|k| (*k.as_bytes(), i)));
            drop(links);
            registry.peers.push(state.clone());
        }
        registry
    }
}

impl PeerLinks {
    /// Takes what the control plane says of the peer (its endpoint must be IPv4).
    fn update(&mut self, p: &Peer) {
        self.addr = p.addr;
        let endpoint = match p.endpoint {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => UNSET,
        };
        if endpoint != self.configured {
            self.endpoint = endpoint;
            self.configured = endpoint;
        }
        self.keys = p.keys.iter().map(|k| PublicKey::from(*k)).collect();
    }
}

/// The links for `local` × `peer` keys: those of `old` whose pair is still wanted (with
/// their sessions), and new ones (with fresh indices not in `used`) for new pairs.
fn relink(
    mut old: Vec<Link>,
    local: &[Arc<LocalKey>],
    peer: &[PublicKey],
    used: &mut HashSet<u32>,
) -> Vec<Link> {
    let mut links = Vec::new();
    for (l, p) in ranked_pairs(local.len(), peer.len()) {
        let (lk, pk) = (&local[l], peer[p]);
        let kept = old.iter().position(|x| x.local.public == lk.public && x.peer_key == pk);
        let mut link = match kept {
            Some(at) => old.swap_remove(at),
            None => Link {
                local: lk.clone(),
                peer_key: pk,
                rank: (l, p),
                index: fresh_index(used),
                tunn: None,
            },
        };
        link.rank = (l, p);
        links.push(link);
    }
    for gone in old {
        used.remove(&gone.index);
    }
    links
}

/// A random 24-bit link index that no link has.
fn fresh_index(used: &mut HashSet<u32>) -> u32 {
    loop {
        let index = rand::random::<u32>() & INDEX_MASK;
        if used.insert(index) {
            return index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use boringtun::x25519::PublicKey as Pk;

    fn secret() -> StaticSecret {
        StaticSecret::random_from_rng(rand::rngs::OsRng)
    }

    fn peer(id: &str, keys: &[&StaticSecret]) -> Peer {
        Peer {
            node_id: id.into(),
            addr: Ipv4Addr::new(10, 0, 0, id.len() as u8),
            endpoint: "10.0.0.9:51820".parse().unwrap(),
            keys: keys.iter().map(|k| *Pk::from(*k).as_bytes()).collect(),
        }
    }

    #[test]
    fn the_newest_established_link_carries_the_traffic() {
        let table = [
            (vec![true, true], Choice { send: 0, kick_newest: false, kick_others: false }),
            (vec![true, false], Choice { send: 0, kick_newest: false, kick_others: false }),
            (vec![false, true], Choice { send: 1, kick_newest: true, kick_others: false }),
            (
                vec![false, false, false, true],
                Choice { send: 3, kick_newest: true, kick_others: false },
            ),
            (vec![false, false], Choice { send: 0, kick_newest: false, kick_others: true }),
            (vec![false], Choice { send: 0, kick_newest: false, kick_others: true }),
        ];
        for (established, want) in table {
            assert_eq!(choose(established.iter().copied()), want, "{established:?}");
        }
    }

    #[test]
    fn pairs_are_ranked_newest_first() {
        assert_eq!(ranked_pairs(1, 1), vec![(0, 0)]);
        assert_eq!(ranked_pairs(2, 2), vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(ranked_pairs(1, 2), vec![(0, 0), (0, 1)]);
        assert!(ranked_pairs(0, 2).is_empty());
    }

    #[test]
    fn a_rotation_keeps_the_links_of_keys_that_stay_and_drops_the_others_at_once() {
        let (old, new) = (secret(), secret());
        let (pa, pb) = (secret(), secret());
        let mut c = Control::default();
        c.keys = vec![c.local_key(old.clone())];
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pa]))]));
        let r = c.rebuild();
        let a = r.by_key(Pk::from(&pa).as_bytes()).unwrap().clone();
        let first = a.lock().links[0].index;
        assert!(r.by_index(first).is_some());
        assert!(r.by_addr(Ipv4Addr::new(10, 0, 0, 1)).is_some());

        // New local key, the peer told of a new key too: four links, the old pair kept.
        c.keys = vec![c.local_key(new.clone()), c.local_key(old.clone())];
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pb, &pa]))]));
        let r = c.rebuild();
        let links = a.lock();
        let ranks: Vec<_> = links.links.iter().map(|l| l.rank).collect();
        assert_eq!(ranks, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(links.links[3].index, first, "the old pair keeps its link");
        let indices: HashSet<u32> = links.links.iter().map(|l| l.index).collect();
        assert_eq!(indices.len(), 4);
        assert!(indices.iter().all(|i| *i <= INDEX_MASK && r.by_index(*i).is_some()));
        drop(links);

        // The overlap ends: only the newest pair is left; the dropped indices are unknown.
        c.keys = vec![c.local_key(new)];
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pb]))]));
        let r = c.rebuild();
        assert_eq!(a.lock().links.len(), 1);
        assert!(r.by_index(first).is_none());
        assert!(r.by_key(Pk::from(&pa).as_bytes()).is_none());
    }

    #[test]
    fn a_removed_peer_loses_its_links_even_for_threads_with_an_old_registry() {
        let mut c = Control::default();
        c.keys = vec![c.local_key(secret())];
        let pa = secret();
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pa]))]));
        let old = c.rebuild();
        let a = old.by_key(Pk::from(&pa).as_bytes()).unwrap().clone();
        c.set_peers(BTreeMap::new());
        let new = c.rebuild();
        assert!(new.by_key(Pk::from(&pa).as_bytes()).is_none());
        let links = a.lock();
        assert!(links.removed && links.links.is_empty());
    }

    #[test]
    fn a_new_endpoint_from_the_control_plane_overrides_roaming() {
        let mut c = Control::default();
        c.keys = vec![c.local_key(secret())];
        let pa = secret();
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pa]))]));
        let a = c.rebuild().peers[0].clone();
        let roamed: SocketAddrV4 = "10.0.0.77:40000".parse().unwrap();
        a.lock().endpoint = roamed;
        c.set_peers(BTreeMap::from([("a".into(), peer("a", &[&pa]))]));
        assert_eq!(a.lock().endpoint, roamed, "same configured endpoint: roaming kept");
        let mut moved = peer("a", &[&pa]);
        moved.endpoint = "10.0.0.8:51820".parse().unwrap();
        c.set_peers(BTreeMap::from([("a".into(), moved.clone())]));
        assert_eq!(SocketAddr::V4(a.lock().endpoint), moved.endpoint);
    }

    #[test]
    fn local_keys_never_show_their_secret() {
        let c = Control::default();
        let k = c.local_key(secret());
        assert_eq!(format!("{k:?}"), "LocalKey(<redacted>)");
    }
}
