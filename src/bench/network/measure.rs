//! The measurements from inside a namespace: iperf3, the TCP request/response loop and the
//! service-name lookups, and the thread in a namespace they (and the removal probe) run on.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use shoal_testkit::netns::{panic_text, text};

use super::cluster::Route;
use super::{go_on, ECHO_PORT, ECHO_SIZE, IPERF_PORT, REACH_TIMEOUT, REACH_TRIES};

/// Runs `job` on a thread of its own inside the network namespace at `ns`: every socket it
/// opens belongs to that namespace (the rest of the process stays where it is).
pub(super) fn in_netns<T, F>(ns: &Path, job: F) -> JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("entering {}", ns.display()))?;
        job()
    })
}

fn joined<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|p| anyhow!("a measuring thread panicked: {}", panic_text(p.as_ref())))?
}

/// iperf3 (this host's binary) run in the namespace `client`, to `target` for `secs`
/// seconds: the rate received, Gbit/s. A refused connection (the server between two tests)
/// is tried again.
pub(super) fn iperf3(client: &Path, target: Ipv4Addr, secs: u64) -> Result<f64> {
    let ns = format!("--net={}", client.display());
    let target = target.to_string();
    let (secs, limit) = (secs.max(1).to_string(), (secs.max(1) + 30).to_string());
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("timeout")
            .args([limit.as_str(), "nsenter", &ns, "iperf3", "-J"])
            .args(["-c", &target, "-p", &IPERF_PORT.to_string(), "-t", &secs])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bits) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bits / 1e9);
        }
        last = json["error"].as_str().map(str::to_string).unwrap_or_else(|| text(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{last}")
}

/// Whether a TCP connection from the client's namespace reaches the iperf3 server at the
/// server task's own address: up to `REACH_TRIES` attempts of `REACH_TIMEOUT` each, so a path
/// that passes nothing is known in bounded time. The error says what the last attempt got.
pub(super) fn connects(route: &Route) -> Result<()> {
    let target = SocketAddr::from((route.direct, IPERF_PORT));
    joined(in_netns(&route.client, move || {
        let mut last = String::new();
        for _ in 0..REACH_TRIES {
            let t = Instant::now();
            match TcpStream::connect_timeout(&target, REACH_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            // A quick failure (unreachable) waits out its attempt's time.
            std::thread::sleep(REACH_TIMEOUT.saturating_sub(t.elapsed()));
        }
        let each = REACH_TIMEOUT.as_secs_f64();
        bail!("no TCP connection to {target} in {REACH_TRIES} attempts of {each} s (last: {last})")
    }))
}

/// `n` round trips of `ECHO_SIZE` bytes over one TCP connection from the client's namespace
/// to an echo server the bench runs in the server's namespace (port `ECHO_PORT` of the
/// server task's own address): each round trip's time, after 200 untimed ones. Ctrl-C stops
/// it between round trips.
pub(super) fn tcp_rr(route: &Route, n: usize) -> Result<Vec<Duration>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&route.server, move || {
        let listener = TcpListener::bind(("0.0.0.0", ECHO_PORT))?;
        let _ = ready_tx.send(());
        echo_one(listener)
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let why = joined(server).err().unwrap_or_else(|| anyhow!("it never bound"));
        return Err(why.context("the echo server did not start"));
    }
    let target = SocketAddr::from((route.direct, ECHO_PORT));
    let times = joined(in_netns(&route.client, move || {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [7u8; ECHO_SIZE];
        let mut times = Vec::with_capacity(n);
        for i in 0..n + 200 {
            go_on()?;
            let t = Instant::now();
            stream.write_all(&buf)?;
            stream.read_exact(&mut buf)?;
            if i >= 200 {
                times.push(t.elapsed());
            }
        }
        Ok(times)
    }));
    if times.is_err() {
        // Nothing may have reached the server: unblock its accept.
        let local = SocketAddr::from(([127, 0, 0, 1], ECHO_PORT));
        let _ = joined(in_netns(&route.server, move || {
            TcpStream::connect_timeout(&local, Duration::from_secs(1))?;
            Ok(())
        }));
    }
    let served = joined(server);
    let times = times?;
    served?;
    Ok(times)
}

/// Accepts one connection (within 15 s) and echoes it `ECHO_SIZE` bytes at a time until it
/// closes.
fn echo_one(listener: TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(anyhow!(e).context("no connection reached the echo server")),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; ECHO_SIZE];
    while stream.read_exact(&mut buf).is_ok() {
        stream.write_all(&buf)?;
    }
    Ok(())
}

/// A DNS query for `name`'s A records, with ID 0.
pub(super) fn a_query(name: &str) -> Result<Vec<u8>> {
    let mut query = Message::new();
    query.set_id(0).set_message_type(MessageType::Query).set_recursion_desired(true);
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(query.to_vec()?)
}

/// The first A record of a DNS answer.
pub(super) fn first_a(answer: &[u8]) -> Result<Ipv4Addr> {
    let msg = Message::from_vec(answer)?;
    let first = msg.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    });
    first.with_context(|| format!("no A record in the answer ({})", msg.response_code()))
}

/// `n` DNS A queries for `name`, one at a time, to 127.0.0.11:53 from inside `ns` (the
/// cluster's resolver for that task), after 100 untimed ones: each answer's time (send to
/// receive), and how many queries got none within a second. Every answer must hold an A
/// record.
pub(super) fn lookups(ns: &Path, name: &str, n: usize) -> Result<(Vec<Duration>, usize)> {
    let mut bytes = a_query(name)?;
    joined(in_netns(ns, move || {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.connect(RESOLVER)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let (mut times, mut lost) = (Vec::with_capacity(n), 0);
        let mut buf = [0u8; 1500];
        for i in 0..n + 100 {
            let id = (i % 65_536) as u16;
            bytes[..2].copy_from_slice(&id.to_be_bytes());
            let sent = Instant::now();
            socket.send(&bytes)?;
            match answer(&socket, &mut buf, id, sent)? {
                Some(took) if i >= 100 => times.push(took),
                Some(_) => {}
                None => lost += 1,
            }
        }
        if times.is_empty() {
            bail!("no lookup was answered");
        }
        Ok((times, lost))
    }))
}

/// Where every task's resolver listens.
pub(super) const RESOLVER: (&str, u16) = ("127.0.0.11", 53);

/// Waits for the answer to query `id` (skipping late answers to earlier ones): the time from
/// `sent` to its arrival, once checked to hold an address; `None` when none comes in time.
fn answer(socket: &UdpSocket, buf: &mut [u8], id: u16, sent: Instant) -> Result<Option<Duration>> {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    loop {
        let len = match socket.recv(buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let took = sent.elapsed();
        if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            first_a(&buf[..len])?;
            return Ok(Some(took));
        }
    }
}
