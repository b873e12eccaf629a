//! The packet threads: device → peers (seal), network → device (open), and the timers.
//!
//! Each thread owns its file descriptors (duplicates of the device's and the socket's), so
//! the device disappears when the last thread ends. Threads read the registry through a
//! [`View`], refreshed only when its generation changes; a peer's lock is held for one
//! packet's crypto, never while writing to the device.

use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;

use super::coalesce::Coalescer;
use super::links::{self, Link, Registry};
use super::packet;
use super::receive;
use super::segment::{self, VnetHdr};
use super::stats::{Counters, DropReason};
use super::udp::{self, Batch, RecvBatch, SLOT};
use super::TunnelConfig;

/// How long an idle thread waits before looking at the stop flag again.
const IDLE: Duration = Duration::from_millis(100);
/// How long a packet thread keeps trying before it sleeps.
const LINGER: Duration = Duration::from_micros(30);
/// How often boringtun's timers run (retransmissions, keepalives, rekeying).
const TICK: Duration = Duration::from_millis(100);
/// The largest packet the device hands over (a GSO packet; one packet is at most its MTU).
const MAX_READ: usize = 1 << 16;
/// WireGuard's overhead on a data packet.
const SEAL_OVERHEAD: usize = 32;

/// What the tunnel's threads and its handle share.
#[derive(Debug)]
pub(super) struct Shared {
    pub cfg: TunnelConfig,
    pub stop: AtomicBool,
    pub counters: Counters,
    generation: AtomicU64,
    registry: Mutex<Arc<Registry>>,
}

impl Shared {
    pub fn new(cfg: TunnelConfig) -> Shared {
        Shared {
            cfg,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            generation: AtomicU64::new(0),
            registry: Mutex::new(Arc::default()),
        }
    }

    /// Makes `registry` the one every thread uses from its next packet on.
    pub fn publish(&self, registry: Registry) {
        *self.registry.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A thread's copy of the registry.
struct View {
    generation: u64,
    registry: Arc<Registry>,
}

impl View {
    fn new(shared: &Shared) -> View {
        let generation = shared.generation.load(Ordering::Acquire);
        View { generation, registry: shared.registry() }
    }

    /// The current registry (re-read only when it changed).
    fn get(&mut self, shared: &Shared) -> Arc<Registry> {
        let now = shared.generation.load(Ordering::Acquire);
        if now != self.generation {
            self.generation = now;
            self.registry = shared.registry();
        }
        self.registry.clone()
    }
}

/// Trying again for a moment before sleeping when there is nothing to read: waking a
/// sleeping thread (on a VM, an interrupt to a halted CPU) costs more than the wait, and
/// under load the next packet is microseconds away.
#[derive(Default)]
struct Linger {
    idle_since: Option<Instant>,
}

impl Linger {
    fn busy(&mut self) {
        self.idle_since = None;
    }

    /// Whether to try again at once rather than sleep.
    fn spin(&mut self) -> bool {
        let now = Instant::now();
        if now - *self.idle_since.get_or_insert(now) < LINGER {
            std::hint::spin_loop();
            return true;
        }
        self.idle_since = None;
        false
    }
}

/// The device and the socket, with what they can do.
#[derive(Debug)]
pub(super) struct Io {
    pub tun: File,
    /// Size of the device's vnet header (with tunnel offloads when 24).
    pub hdr: usize,
    pub socket: UdpSocket,
    /// Whether the socket sends with UDP GSO.
    pub gso: bool,
}

/// Starts the three threads; on failure, stops those already started.
pub(super) fn spawn(shared: Arc<Shared>, io: Io) -> io::Result<Vec<JoinHandle<()>>> {
    let Io { tun, hdr, socket, gso } = io;
    let mut threads = Vec::new();
    let mut start = |name: &str, f: Box<dyn FnOnce() + Send>| -> io::Result<()> {
        threads.push(std::thread::Builder::new().name(name.into()).spawn(f)?);
        Ok(())
    };
    let started = (|| {
        let (s, t, u) = (shared.clone(), tun.try_clone()?, socket.try_clone()?);
        start("shoal-tun-seal", Box::new(move || seal_loop(&s, t, hdr, u, gso)))?;
        let (s, u) = (shared.clone(), socket.try_clone()?);
        start("shoal-tun-open", Box::new(move || open_loop(&s, tun, hdr, u)))?;
        let s = shared.clone();
        start("shoal-tun-timer", Box::new(move || timer_loop(&s, socket)))
    })();
    if let Err(e) = started {
        shared.stop.store(true, Ordering::Release);
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    Ok(threads)
}

/// Device → network: reads packets (whole GSO packets with offloads), seals each packet
/// for its peer, sends them in batches.
fn seal_loop(shared: &Shared, mut tun: File, hdr: usize, socket: UdpSocket, gso: bool) {
    let mut view = View::new(shared);
    let mut batch = Batch::new(gso);
    let mut packet = vec![0u8; hdr + MAX_READ];
    let mut segment = vec![0u8; MAX_READ];
    let mut scratch = vec![0u8; SLOT];
    let mut linger = Linger::default();
    while !shared.stopped() {
        match tun.read(&mut packet) {
            Ok(n) if n > hdr => {
                linger.busy();
                let registry = view.get(shared);
                let (vnet, pkt) = packet[..n].split_at_mut(hdr);
                let vnet = VnetHdr::parse(vnet);
                let cut = segment::packets(&vnet, pkt, &mut segment, |pkt| {
                    let sealed = seal(shared, &registry, pkt, &mut batch, &mut scratch, &socket);
                    if let Err(why) = sealed {
                        shared.counters.drop(why);
                    }
                    if batch.is_full() {
                        flush(shared, &mut batch, &socket);
                    }
                });
                if let Err(why) = cut {
                    shared.counters.drop(why);
                }
            }
            Ok(_) => shared.counters.drop(DropReason::NotVxlan),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                flush(shared, &mut batch, &socket);
                if linger.spin() {
                    continue;
                }
                if let Err(e) = udp::wait_readable(&tun, IDLE) {
                    tracing::error!(error = %e, "waiting on the tunnel device");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The device was deleted under us: routing fails closed from now on.
                tracing::error!(error = %e, device = %shared.cfg.device, "the tunnel device failed; no more packets go out");
                return;
            }
        }
    }
}

fn flush(shared: &Shared, batch: &mut Batch, socket: &UdpSocket) {
    for _ in 0..batch.send(socket) {
        shared.counters.drop(DropReason::Io);
    }
}

/// Seals one packet from the device into the batch (see [`links::choose`] for the link).
fn seal(
    shared: &Shared,
    registry: &Registry,
    pkt: &[u8],
    batch: &mut Batch,
    scratch: &mut [u8],
    socket: &UdpSocket,
) -> Result<(), DropReason> {
    let cfg = &shared.cfg;
    let dst = packet::outbound(pkt, cfg.local_addr, cfg.vxlan_port)?;
    if pkt.len() + SEAL_OVERHEAD > SLOT {
        return Err(DropReason::Oversize);
    }
    let state = registry.by_addr(dst).ok_or(DropReason::NoPeer)?;
    let mut peer = state.lock();
    if peer.removed || peer.links.is_empty() {
        return Err(DropReason::NoPeer);
    }
    let endpoint = peer.endpoint;
    let choice = links::choose(peer.links.iter().map(Link::established));
    if choice.kick_newest {
        kick(shared, &mut peer.links[0], scratch, socket, endpoint);
    }
    if choice.kick_others {
        for link in &mut peer.links[1..] {
            kick(shared, link, scratch, socket, endpoint);
        }
    }
    let sealed = match peer.links[choice.send].tunn().encapsulate(pkt, batch.free_slot()) {
        TunnResult::WriteToNetwork(out) => Some(out.len()),
        _ => None,
    };
    if let Some(len) = sealed {
        peer.tx_bytes += pkt.len() as u64;
        batch.push(len, endpoint);
    }
    Ok(())
}

/// Starts a handshake on `link` unless one is under way.
fn kick(shared: &Shared, link: &mut Link, buf: &mut [u8], socket: &UdpSocket, to: SocketAddrV4) {
    if let TunnResult::WriteToNetwork(init) = link.tunn().format_handshake_initiation(buf, false) {
        send(shared, socket, init, to);
    }
}

pub(super) fn send(shared: &Shared, socket: &UdpSocket, datagram: &[u8], to: SocketAddrV4) {
    if socket.send_to(datagram, to).is_err() {
        shared.counters.drop(DropReason::Io);
    }
}

/// Network → device: receives datagrams in batches, opens each, writes what may enter.
fn open_loop(shared: &Shared, mut tun: File, hdr: usize, socket: UdpSocket) {
    let mut view = View::new(shared);
    let mut batch = RecvBatch::default();
    let mut out = vec![0u8; SLOT];
    let mut pending = Coalescer::new(hdr);
    let mut linger = Linger::default();
    while !shared.stopped() {
        match batch.recv(&socket) {
            Ok(n) => {
                linger.busy();
                let registry = view.get(shared);
                for i in 0..n {
                    let (datagrams, from) = batch.get(i);
                    for datagram in datagrams {
                        let opened =
                            receive::open(shared, &registry, datagram, from, &mut out, &socket);
                        let Some(range) = opened else { continue };
                        for _ in 0..pending.push(&out[range], &mut tun) {
                            shared.counters.drop(DropReason::Io);
                        }
                    }
                }
                for _ in 0..pending.flush(&mut tun) {
                    shared.counters.drop(DropReason::Io);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if linger.spin() {
                    continue;
                }
                if let Err(e) = udp::wait_readable(&socket, IDLE) {
                    tracing::error!(error = %e, "waiting on the tunnel socket");
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "tunnel socket receive"),
        }
    }
}

/// Runs every link's timers (handshake retries, keepalives, rekeying, expiry) and resets
/// the handshake rate limiters once a second.
fn timer_loop(shared: &Shared, socket: UdpSocket) {
    let mut view = View::new(shared);
    let mut buf = vec![0u8; SLOT];
    let mut last_reset = Instant::now();
    while !shared.stopped() {
        std::thread::park_timeout(TICK);
        let registry = view.get(shared);
        if last_reset.elapsed() >= Duration::from_secs(1) {
            for key in &registry.keys {
                key.limiter.reset_count();
            }
            last_reset = Instant::now();
        }
        for state in &registry.peers {
            let mut peer = state.lock();
            let endpoint = peer.endpoint;
            for link in &mut peer.links {
                let Some(tunn) = link.tunn.as_mut() else { continue };
                if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut buf) {
                    send(shared, &socket, p, endpoint);
                }
            }
        }
    }
}
