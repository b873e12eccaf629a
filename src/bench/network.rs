//! `shoal-bench network` (root): the data plane across two hosts, beside Docker Swarm's overlay
//! and the bare path. Each system gets two network-namespace hosts joined by veth on a bridge
//! (the test kit's [`Net`]): Shoal as two `shoald`s, Docker as two `dockerd`s started in those
//! namespaces with roots of their own. Both run an iperf3 server service on host 1 and an idle
//! client task on host 2, on an overlay network; the bench then measures from inside the
//! client task's network namespace (a thread that `setns`es into it, or `nsenter` for iperf3),
//! so the packets take exactly the path the task's own would. The bare figures run in the two
//! host namespaces themselves.
//!
//! The figures: iperf3 throughput to the server service's virtual IP and to its task's own
//! address; a 64-byte TCP request/response loop; DNS lookups of the service's name at the
//! task's resolver (127.0.0.11); and how long a virtual IP (and DNS round robin) keeps
//! sending new connections to a task after its processes are SIGKILLed. Docker's virtual IPs
//! need IPVS; on a kernel without it their rows say so and Docker is measured to the task.
//!
//! Owns everything it creates (namespaces, veths, bridges, the FORWARD rules for them,
//! `dockerd`s and their directories) and removes it on the way out, also after a failure;
//! never touches a Docker or a namespace it did not start.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{parse_ps, wait_running};
use shoal_testkit::netns::{all_ready, panic_text, stdout, text, DockerSwarm, Net, Node};
use shoal_testkit::poll::blocking::try_eventually;

use crate::common::{load_note, median, percentile};

/// The image both systems run: iperf3 from this host with its libraries, and busybox.
const IMAGE: &str = "shoal-bench/iperf3:net";
/// The overlay network both systems create.
const NETWORK: &str = "benchnet";
/// The iperf3 server service (one task on host 1); its name is what the lookups ask for.
const SERVER: &str = "iperf";
/// The idle client service (one task on host 2) whose namespace the bench measures from.
const CLIENT: &str = "client";
/// iperf3's port, also what the removal probe dials (an iperf3 server listens there).
const IPERF_PORT: u16 = 5201;
/// Where the bench's own echo server listens (inside the server task's namespace).
const ECHO_PORT: u16 = 7777;
/// Bytes of each request and each response of the request/response loop.
const ECHO_SIZE: usize = 64;
/// Gaps between connection attempts of the removal probe.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long an attempt may take before it counts as sent to a dead task.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Success only for this long after the last failure means the dead task is out.
const PROBE_QUIET: Duration = Duration::from_secs(3);

/// Set by Ctrl-C: the bench stops at the next step and cleans up.
static STOP: AtomicBool = AtomicBool::new(false);

/// `shoal-bench network`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkArgs {
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of each iperf3 run
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Round trips of the request/response loop per run
    #[arg(long, default_value_t = 10_000)]
    pub pings: usize,
    /// Service-name lookups per run
    #[arg(long, default_value_t = 5_000)]
    pub lookups: usize,
    /// The shoald binary (default: the one next to this shoal-bench)
    #[arg(long)]
    pub shoald: Option<PathBuf>,
    /// The docker CLI; its daemons are Debian's dockerd, started here in the hosts' namespaces
    #[arg(long, default_value = "docker")]
    pub docker: PathBuf,
    /// The dockerd binary
    #[arg(long, default_value = "dockerd")]
    pub dockerd: PathBuf,
    /// Measure Shoal (and the bare path) only
    #[arg(long)]
    pub skip_docker: bool,
    /// Measure Docker Swarm (and the bare path) only
    #[arg(long)]
    pub skip_shoal: bool,
}

pub(crate) async fn network(args: NetworkArgs) -> Result<()> {
    if !shoal_testkit::netns::is_root() {
        bail!("the network bench needs root (network namespaces, veth, dockerd)");
    }
    let mut work = tokio::task::spawn_blocking(move || bench(&args));
    tokio::select! {
        r = &mut work => return r?,
        _ = tokio::signal::ctrl_c() => {
            println!("interrupted: cleaning up (this can take a minute)...");
            STOP.store(true, Ordering::SeqCst);
        }
    }
    work.await?
}

/// Fails once Ctrl-C was pressed, so the caller unwinds and cleans up.
fn go_on() -> Result<()> {
    match STOP.load(Ordering::SeqCst) {
        true => bail!("interrupted"),
        false => Ok(()),
    }
}

/// Runs `f`, turning a panic of the test kit's fixtures into an error.
fn caught<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(p) => Err(anyhow!("{what}: {}", panic_text(p.as_ref()))),
    }
}

fn bench(args: &NetworkArgs) -> Result<()> {
    check_tools()?;
    let dir = tempfile::Builder::new().prefix("sbn").tempdir()?;
    let tar = iperf3_image(dir.path())?;
    let subnet = (std::process::id() % 200 + 20) as u8;
    let shoal = match args.skip_shoal {
        true => None,
        false => start_side("shoal", || ShoalSide::start(args, subnet, &tar)),
    };
    let docker = match args.skip_docker || go_on().is_err() {
        true => None,
        false => start_side("docker swarm", || DockerSide::start(args, subnet, &tar)),
    };
    let sides: [Option<&dyn Cluster>; 2] =
        [shoal.as_ref().map(|s| s as &dyn Cluster), docker.as_ref().map(|d| d as &dyn Cluster)];
    // The bare path runs between the hosts of the first system up: the overlay's underlay.
    let Some(first) = sides.iter().flatten().next() else {
        bail!("neither Shoal nor Docker Swarm came up: nothing to measure");
    };
    let bare = caught("bare path", || Bare::start(first.net()))
        .map_err(|e| println!("bare veth: skipped: {e:#}"))
        .ok();
    let mut figures = [Figures::default(), Figures::default(), Figures::default()];
    let mut result = Ok(());
    for run in 0..args.runs.max(1) {
        println!("run {}:", run + 1);
        result = measure_run(args, run, &sides, bare.as_ref().map(|b| &b.route), &mut figures);
        if result.is_err() {
            break;
        }
    }
    let docker_version = docker.as_ref().map(|d| d.swarm.version.clone());
    let no_vip = docker.as_ref().and_then(|d| d.no_vip());
    drop(bare);
    drop(shoal);
    drop(docker);
    print_table(args, &figures, docker_version.as_deref(), no_vip);
    result
}

fn start_side<T>(who: &str, start: impl FnOnce() -> Result<T>) -> Option<T> {
    println!("{who}: starting two hosts...");
    let t = Instant::now();
    match caught(&format!("{who} setup"), start) {
        Ok(side) => {
            println!("{who}: ready in {:.1} s", t.elapsed().as_secs_f64());
            Some(side)
        }
        Err(e) => {
            println!("{who}: skipped: {e:#}");
            None
        }
    }
}

fn check_tools() -> Result<()> {
    let tools = ["ip", "nsenter", "iperf3", "nft", "tar", "ldd", "busybox"];
    let missing: Vec<&str> = tools.into_iter().filter(|t| !shoal_testkit::netns::have(t)).collect();
    if !missing.is_empty() {
        bail!(
            "missing {} (apt-get install iproute2 util-linux iperf3 nftables busybox-static)",
            missing.join(", ")
        );
    }
    Ok(())
}

// --- the image ------------------------------------------------------------------------------

/// A rootfs tarball of busybox (sh, sleep) and this host's `/usr/bin/iperf3` with the shared
/// libraries `ldd` names for it (at the same paths), and a world-writable `/tmp`, which
/// iperf3 needs for its buffers.
fn iperf3_image(dir: &Path) -> Result<PathBuf> {
    busybox_tar(dir, &["sh", "sleep"]).map_err(anyhow::Error::msg)?;
    let root = dir.join("rootfs");
    let iperf3 = Path::new("/usr/bin/iperf3");
    let ldd = Command::new("ldd").arg(iperf3).output().context("running ldd")?;
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    for file in std::iter::once(iperf3.to_path_buf()).chain(libs) {
        let to = root.join(file.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().context("a file has a parent")?)?;
        // `copy` follows symlinks: the library lands under the name the loader asks for.
        std::fs::copy(&file, &to).with_context(|| format!("copying {}", file.display()))?;
    }
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    let tar = dir.join("iperf3.tar");
    let out = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output()?;
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(tar)
}

// --- what a system under test offers ---------------------------------------------------------

/// The path one measurement takes: from the client's network namespace to the server's.
#[derive(Debug, Clone)]
struct Route {
    /// `/run/netns/…` or `/proc/PID/ns/net`.
    client: PathBuf,
    server: PathBuf,
    /// The server service's virtual IP, where the system can balance one here.
    vip: Option<Ipv4Addr>,
    /// The server task's own address on the overlay (host 1's address, bare).
    direct: Ipv4Addr,
}

/// How a service is reached: a virtual IP, or DNS round robin over its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Vip,
    Dnsrr,
}

/// A two-host cluster with the server and client services running.
trait Cluster {
    fn label(&self) -> &'static str;
    /// Its two hosts.
    fn net(&self) -> &Net;
    /// From the client task to the server service.
    fn route(&self) -> Result<Route>;
    /// Why this system's virtual IPs cannot work on this machine, if they cannot.
    fn no_vip(&self) -> Option<&'static str>;
    /// Creates service `name`: 2 iperf3 servers on host 1, never restarted, on the overlay,
    /// reached as `mode` says; returns once both tasks run.
    fn start_pair(&self, name: &str, mode: Mode) -> Result<()>;
    fn vip(&self, service: &str) -> Result<Ipv4Addr>;
    /// Host PIDs of every process of one running task of `name`.
    fn victim(&self, name: &str) -> Result<Vec<i32>>;
    /// Removes service `name` and waits until its tasks are gone.
    fn remove(&self, name: &str) -> Result<()>;
}

/// The bare path: iperf3's server in host 1's own namespace, dialled from host 2's.
struct Bare {
    route: Route,
    server: Child,
}

impl Bare {
    fn start(net: &Net) -> Result<Bare> {
        let (ns1, ns2) =
            (Path::new("/run/netns").join(net.ns(1)), Path::new("/run/netns").join(net.ns(2)));
        let server = Command::new("nsenter")
            .arg(format!("--net={}", ns1.display()))
            .args(["iperf3", "-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s on host 1")?;
        let direct = net.ip(1).parse()?;
        Ok(Bare { route: Route { client: ns2, server: ns1, vip: None, direct }, server })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

// --- one run ---------------------------------------------------------------------------------

/// Every figure of one system, one entry per run that produced it.
#[derive(Debug, Default)]
struct Figures {
    /// iperf3's received rate to the service's virtual IP, Gbit/s.
    vip_gbits: Vec<f64>,
    /// The same to the server task's own address (host 1's, bare).
    direct_gbits: Vec<f64>,
    /// Per run, the rate to the virtual IP over the bare path's in the same run.
    vip_of_bare: Vec<f64>,
    /// Per run, the rate to the task over the bare path's in the same run.
    direct_of_bare: Vec<f64>,
    /// Per run (Shoal's column only), Shoal's rate over Docker's on the same kind of path:
    /// both through their virtual IPs if Docker's was measured, else both to the task.
    of_docker: Vec<f64>,
    rr_p50: Vec<Duration>,
    rr_p99: Vec<Duration>,
    dns_p50: Vec<Duration>,
    dns_p99: Vec<Duration>,
    dns_lost: usize,
    /// Kill → the virtual IP sends nothing more to the dead task.
    out_of_vip: Vec<Duration>,
    /// Kill → DNS round robin answers nothing more with it.
    out_of_dns: Vec<Duration>,
}

/// Column names, in the order of the figures: the two systems, then the bare path.
const WHO: [&str; 3] = ["shoal", "docker swarm", "bare veth"];

/// One run of every measurement on every system up, printing each figure as it comes.
fn measure_run(
    args: &NetworkArgs,
    run: usize,
    sides: &[Option<&dyn Cluster>; 2],
    bare: Option<&Route>,
    figures: &mut [Figures; 3],
) -> Result<()> {
    let mut routes: Vec<Option<Route>> = sides
        .iter()
        .map(|s| s.and_then(|s| s.route().map_err(|e| println!("  {}: {e:#}", s.label())).ok()))
        .collect();
    routes.push(bare.cloned());
    throughput(args.duration, run, &routes, figures)?;
    for (i, route) in routes.iter().enumerate() {
        let Some(route) = route else { continue };
        if let Some(rtts) = report("request/response", i, tcp_rr(route, args.pings)) {
            figures[i].rr_p50.push(percentile(&rtts, 0.5));
            figures[i].rr_p99.push(percentile(&rtts, 0.99));
        }
    }
    for (i, route) in routes.iter().take(2).enumerate() {
        let Some(route) = route else { continue };
        let asked = lookups(&route.client, SERVER, args.lookups);
        if let Some((times, lost)) = report("lookups", i, asked) {
            figures[i].dns_p50.push(percentile(&times, 0.5));
            figures[i].dns_p99.push(percentile(&times, 0.99));
            figures[i].dns_lost += lost;
        }
    }
    for (i, side) in sides.iter().enumerate() {
        if let (Some(side), Some(route)) = (side, &routes[i]) {
            removals(run, *side, &route.client, &mut figures[i])?;
        }
    }
    Ok(())
}

/// iperf3 to the virtual IP (where there is one) and to the server task's own address.
/// Which system goes first turns with the run, so no one always meets the machine in the
/// same state.
fn throughput(
    secs: u64,
    run: usize,
    routes: &[Option<Route>],
    figures: &mut [Figures; 3],
) -> Result<()> {
    // Per column: [to the virtual IP, to the task].
    let mut rates = [[None; 2]; 3];
    for i in (0..3).map(|k| (k + run) % 3) {
        let Some(route) = &routes[i] else { continue };
        if let Some(vip) = route.vip {
            go_on()?;
            rates[i][0] = report("iperf3 to the VIP", i, iperf3(&route.client, vip, secs));
        }
        go_on()?;
        rates[i][1] = report("iperf3 to the task", i, iperf3(&route.client, route.direct, secs));
    }
    for (f, [vip, direct]) in figures.iter_mut().zip(rates) {
        f.vip_gbits.extend(vip);
        f.direct_gbits.extend(direct);
        if let Some(bare) = rates[2][1] {
            f.vip_of_bare.extend(vip.map(|v| v / bare));
            f.direct_of_bare.extend(direct.map(|d| d / bare));
        }
    }
    let [shoal, docker, _] = rates;
    let like = match (shoal[0], docker[0]) {
        (Some(s), Some(d)) => Some(s / d),
        _ => shoal[1].zip(docker[1]).map(|(s, d)| s / d),
    };
    figures[0].of_docker.extend(like);
    Ok(())
}

/// A task's death, timed through the virtual IP (where the system has one here) and through
/// DNS round robin, each on a fresh 2-task service removed afterwards.
fn removals(run: usize, side: &dyn Cluster, client: &Path, figures: &mut Figures) -> Result<()> {
    let i = WHO.iter().position(|w| *w == side.label()).unwrap_or(0);
    for mode in [Mode::Vip, Mode::Dnsrr] {
        go_on()?;
        if mode == Mode::Vip && side.no_vip().is_some() {
            continue;
        }
        let name = format!("pair-{}-{}", if mode == Mode::Vip { "vip" } else { "dns" }, run + 1);
        let r = caught("removal", || removal(side, client, &name, mode));
        if let Err(e) = caught("service rm", || side.remove(&name)) {
            println!("  {:<13} {e:#}", side.label());
        }
        let what = match mode {
            Mode::Vip => "task killed, out of the VIP after",
            Mode::Dnsrr => "task killed, out of DNS answers after",
        };
        match (mode, report(what, i, r)) {
            (Mode::Vip, Some(r)) => figures.out_of_vip.push(r.after),
            (Mode::Dnsrr, Some(r)) => figures.out_of_dns.push(r.after),
            (_, None) => {}
        }
    }
    Ok(())
}

/// Prints one measurement's outcome for column `i`; the value if there is one.
fn report<T: Shown>(what: &str, i: usize, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => {
            println!("  {:<13} {what}: {}", WHO[i], v.shown());
            Some(v)
        }
        Err(e) => {
            println!("  {:<13} {what}: failed: {e:#}", WHO[i]);
            None
        }
    }
}

/// How a measurement reads in a run's report.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for f64 {
    fn shown(&self) -> String {
        format!("{self:.2} Gbit/s")
    }
}

impl Shown for Removal {
    fn shown(&self) -> String {
        let ms = self.after.as_secs_f64() * 1e3;
        match self.failed {
            // Then the figure is only when the first attempt after the kill started.
            0 => format!("{ms:.0} ms (no attempt reached the dead task)"),
            n => format!("{ms:.0} ms ({n} attempts reached the dead task)"),
        }
    }
}

impl Shown for Vec<Duration> {
    fn shown(&self) -> String {
        format!("p50 {} p99 {}", us(percentile(self, 0.5)), us(percentile(self, 0.99)))
    }
}

impl Shown for (Vec<Duration>, usize) {
    fn shown(&self) -> String {
        format!("{} ({} lost)", self.0.shown(), self.1)
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

// --- measurements -----------------------------------------------------------------------------

/// Runs `job` on a thread of its own inside the network namespace at `ns`: every socket it
/// opens belongs to that namespace (the rest of the process stays where it is).
fn in_netns<T, F>(ns: &Path, job: F) -> JoinHandle<Result<T>>
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
fn iperf3(client: &Path, target: Ipv4Addr, secs: u64) -> Result<f64> {
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

/// `n` round trips of `ECHO_SIZE` bytes over one TCP connection from the client's namespace
/// to an echo server the bench runs in the server's namespace (port `ECHO_PORT` of the
/// server task's own address): each round trip's time, after 200 untimed ones.
fn tcp_rr(route: &Route, n: usize) -> Result<Vec<Duration>> {
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
fn a_query(name: &str) -> Result<Vec<u8>> {
    let mut query = Message::new();
    query.set_id(0).set_message_type(MessageType::Query).set_recursion_desired(true);
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(query.to_vec()?)
}

/// The first A record of a DNS answer.
fn first_a(answer: &[u8]) -> Result<Ipv4Addr> {
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
fn lookups(ns: &Path, name: &str, n: usize) -> Result<(Vec<Duration>, usize)> {
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
const RESOLVER: (&str, u16) = ("127.0.0.11", 53);

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

// --- a task's death ---------------------------------------------------------------------------

/// What the probe saw after the kill.
#[derive(Debug)]
struct Removal {
    /// From the kill to the first attempt after which every one reached a live task.
    after: Duration,
    /// Attempts after the kill that failed (sent to the dead task).
    failed: usize,
}

/// Starts 2-task service `name`, probes it from the client's namespace with new connections
/// (one every `PROBE_EVERY`: to its virtual IP, or to the first address DNS gives for its
/// name), waits until every attempt succeeds, SIGKILLs one task's processes, and times until
/// the attempts succeed again for good: from the kill to the first attempt after which every
/// one reached a live task.
fn removal(side: &dyn Cluster, client: &Path, name: &str, mode: Mode) -> Result<Removal> {
    side.start_pair(name, mode)?;
    let dial = match mode {
        Mode::Vip => Dial::Addr(SocketAddr::from((side.vip(name)?, IPERF_PORT))),
        Mode::Dnsrr => Dial::Name(a_query(name)?),
    };
    let probe = Probe::start(client, dial);
    let result = probe_removal(side, &probe, name);
    probe.stop();
    result
}

fn probe_removal(side: &dyn Cluster, probe: &Probe, name: &str) -> Result<Removal> {
    let steady = Duration::from_secs(2);
    try_eventually("every attempt to reach the service", Duration::from_secs(60), || {
        let seen = probe.since(Instant::now() - steady - PROBE_TIMEOUT);
        let enough = seen.len() as u128 >= steady.as_millis() / PROBE_EVERY.as_millis() / 2;
        let failed = seen.iter().filter(|(_, ok)| !ok).count();
        (enough && failed == 0).then_some(()).ok_or(format!("{failed} of {} failed", seen.len()))
    })
    .map_err(anyhow::Error::msg)?;
    let pids = side.victim(name)?;
    let killed = Instant::now();
    for pid in &pids {
        let pid = rustix::process::Pid::from_raw(*pid).context("a task PID")?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .with_context(|| format!("killing {pid:?}"))?;
    }
    loop {
        go_on()?;
        std::thread::sleep(Duration::from_millis(100));
        // Only attempts surely finished count: those started more than a timeout ago.
        let settled = Instant::now() - PROBE_TIMEOUT;
        if let Some(r) = judge(&probe.since(killed), killed, settled) {
            return Ok(r);
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("attempts still reached the dead task a minute after the kill");
        }
    }
}

/// The removal the attempts `seen` since `killed` show, once the ones started before
/// `settled` have been all successes for `PROBE_QUIET`; `None` while that is not so.
fn judge(seen: &[(Instant, bool)], killed: Instant, settled: Instant) -> Option<Removal> {
    let seen: Vec<&(Instant, bool)> = seen.iter().filter(|(t, _)| *t < settled).collect();
    let quiet_since = seen.iter().rev().find(|(_, ok)| !ok).map_or(killed, |(t, _)| *t);
    if settled.saturating_duration_since(quiet_since) < PROBE_QUIET {
        return None;
    }
    let first_good = seen.iter().find(|(t, ok)| *ok && *t > quiet_since)?;
    let failed = seen.iter().filter(|(_, ok)| !ok).count();
    Some(Removal { after: first_good.0.duration_since(killed), failed })
}

/// What a probe attempt dials.
#[derive(Debug, Clone)]
enum Dial {
    Addr(SocketAddr),
    /// The first address the resolver answers this query with (sent with a random ID each
    /// time, so a resolver that rotates its answers by ID rotates them here too).
    Name(Vec<u8>),
}

impl Dial {
    async fn attempt(&self) -> Result<()> {
        let to = match self {
            Dial::Addr(a) => *a,
            Dial::Name(query) => {
                let mut query = query.clone();
                query[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
                let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
                socket.connect(RESOLVER).await?;
                socket.send(&query).await?;
                let mut buf = [0u8; 1500];
                let len = socket.recv(&mut buf).await?;
                SocketAddr::from((first_a(&buf[..len])?, IPERF_PORT))
            }
        };
        tokio::net::TcpStream::connect(to).await?;
        Ok(())
    }
}

/// New connections from inside a namespace, one every `PROBE_EVERY` whether or not earlier
/// ones finished: when each started and whether it connected within `PROBE_TIMEOUT`.
struct Probe {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: JoinHandle<Result<()>>,
}

impl Probe {
    fn start(ns: &Path, dial: Dial) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = in_netns(ns, move || {
            // A runtime on this thread alone: every socket its tasks open is opened here.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let dial = Arc::new(dial);
                while !stop2.load(Ordering::SeqCst) {
                    let (seen, dial) = (seen2.clone(), dial.clone());
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let ok = matches!(
                            tokio::time::timeout(PROBE_TIMEOUT, dial.attempt()).await,
                            Ok(Ok(()))
                        );
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((t, ok));
                    });
                    tokio::time::sleep(PROBE_EVERY).await;
                }
                tokio::time::sleep(PROBE_TIMEOUT).await;
            });
            Ok(())
        });
        Probe { stop, seen, thread }
    }

    /// Finished attempts that started at `t` or later, in the order they started.
    fn since(&self, t: Instant) -> Vec<(Instant, bool)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(Instant, bool)> = seen.iter().filter(|(s, _)| *s >= t).copied().collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

// --- Shoal: two shoalds ------------------------------------------------------------------------

/// Two `shoald`s (the product binary) on two namespace hosts, in one swarm, with the overlay
/// network, the iperf3 server on n1 and the client on n2. Dropping it kills the nodes, deletes
/// their containers and task namespaces, then the hosts.
struct ShoalSide {
    nodes: Vec<Node>,
    net: Net,
    _dir: tempfile::TempDir,
}

impl ShoalSide {
    fn start(args: &NetworkArgs, subnet: u8, tar: &Path) -> Result<ShoalSide> {
        let shoald = match &args.shoald {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("shoald"),
        };
        if !shoald.exists() {
            bail!("no shoald at {} (cargo build --release, or --shoald PATH)", shoald.display());
        }
        let dir = tempfile::Builder::new().prefix("sbn-shoal").tempdir()?;
        let net = Net::with("nb", 246, subnet, 2);
        let nodes = (1..=2).map(|i| Node::new(&net, i, dir.path()).with_product_shoald(&shoald));
        let mut side = ShoalSide { nodes: nodes.collect(), net, _dir: dir };
        side.form_swarm(tar)?;
        side.nodes[0].must_shoal(&["network", "create", "-d", "overlay", NETWORK]);
        side.create(SERVER, 1, "n1", &["/usr/bin/iperf3", "-s"], &[])?;
        side.create(CLIENT, 1, "n2", &["/bin/sleep", "100000000"], &[])?;
        Ok(side)
    }

    fn form_swarm(&mut self, tar: &Path) -> Result<()> {
        for n in self.nodes.iter_mut() {
            n.start();
            n.must_shoal(&["image", "import", &tar.to_string_lossy(), IMAGE]);
        }
        let (n1, ip1, listen) = (&self.nodes[0], self.net.ip(1), self.net.addr(1));
        n1.must_shoal(&["swarm", "init", "--advertise-addr", &ip1, "--listen-addr", &listen]);
        let token = n1.must_shoal(&["swarm", "join-token", "-q", "worker"]);
        let out = self.nodes[1].join(token.trim(), &listen);
        if !out.status.success() {
            bail!("n2 could not join: {}", text(&out));
        }
        try_eventually("2 nodes Ready", Duration::from_secs(30), || {
            all_ready(&self.nodes[0], &["n1", "n2"])
        })
        .map_err(anyhow::Error::msg)
    }

    /// `service create` on the overlay, every task on `node`, and waits for them to run.
    fn create(&self, name: &str, n: usize, node: &str, cmd: &[&str], extra: &[&str]) -> Result<()> {
        let n1 = &self.nodes[0];
        let (replicas, constraint) = (n.to_string(), format!("node.hostname=={node}"));
        let mut args = vec!["service", "create", "--detach", "--name", name, "--replicas"];
        args.extend([replicas.as_str(), "--network", NETWORK, "--constraint", &constraint]);
        args.extend(extra);
        args.push(IMAGE);
        args.extend(cmd);
        n1.must_shoal(&args);
        wait_running(n1, name, n, Duration::from_secs(60));
        Ok(())
    }

    /// The full IDs of the running tasks of `service`.
    fn task_ids(&self, service: &str) -> Result<Vec<String>> {
        let out = self.nodes[0].must_shoal(&["service", "ps", "--no-trunc", service]);
        let rows = if out.trim().is_empty() { Vec::new() } else { parse_ps(&out) };
        let ids: Vec<String> = rows
            .into_iter()
            .filter(|r| r.desired == "Running" && r.state == "Running")
            .map(|r| r.id)
            .collect();
        match ids.is_empty() {
            true => bail!("no running task of {service}:\n{out}"),
            false => Ok(ids),
        }
    }
}

/// `/run/netns/shoal-<node tag>-<task>`, where the agent put the task's namespace.
fn shoal_task_netns(task: &str) -> Result<PathBuf> {
    let suffix = format!("-{task}");
    for e in std::fs::read_dir("/run/netns")?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("shoal-") && name.ends_with(&suffix) {
            return Ok(e.path());
        }
    }
    bail!("no namespace of task {task} under /run/netns")
}

/// The IPv4 address of `eth0` inside the namespace at `ns`.
fn eth0_addr(ns: &Path) -> Result<Ipv4Addr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()?;
    let words: Vec<String> = stdout(&out).split_whitespace().map(str::to_string).collect();
    let addr = words.iter().skip_while(|w| *w != "inet").nth(1);
    let addr =
        addr.with_context(|| format!("no address on eth0 in {}: {}", ns.display(), text(&out)))?;
    Ok(addr.split('/').next().unwrap_or_default().parse()?)
}

impl Cluster for ShoalSide {
    fn label(&self) -> &'static str {
        "shoal"
    }

    fn net(&self) -> &Net {
        &self.net
    }

    fn route(&self) -> Result<Route> {
        let client = shoal_task_netns(&self.task_ids(CLIENT)?[0])?;
        let server = shoal_task_netns(&self.task_ids(SERVER)?[0])?;
        let direct = eth0_addr(&server)?;
        Ok(Route { client, server, vip: Some(self.vip(SERVER)?), direct })
    }

    fn no_vip(&self) -> Option<&'static str> {
        None
    }

    fn start_pair(&self, name: &str, mode: Mode) -> Result<()> {
        let mut extra = vec!["--restart-condition", "none"];
        if mode == Mode::Dnsrr {
            extra.extend(["--endpoint-mode", "dnsrr"]);
        }
        self.create(name, 2, "n1", &["/usr/bin/iperf3", "-s"], &extra)
    }

    fn vip(&self, service: &str) -> Result<Ipv4Addr> {
        let out = self.nodes[0].must_shoal(&["service", "inspect", service]);
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let addr = v[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str();
        let addr = addr.with_context(|| format!("no virtual IP in {out}"))?;
        Ok(addr.split('/').next().unwrap_or_default().parse()?)
    }

    fn victim(&self, name: &str) -> Result<Vec<i32>> {
        let ns = shoal_task_netns(&self.task_ids(name)?[0])?;
        let ns = ns.file_name().context("a namespace name")?.to_string_lossy().into_owned();
        let out = Command::new("ip").args(["netns", "pids", &ns]).output()?;
        let pids: Vec<i32> =
            stdout(&out).split_whitespace().filter_map(|p| p.parse().ok()).collect();
        match pids.is_empty() {
            true => bail!("no process in {ns}"),
            false => Ok(pids),
        }
    }

    fn remove(&self, name: &str) -> Result<()> {
        let n1 = &self.nodes[0];
        n1.must_shoal(&["service", "rm", name]);
        try_eventually(&format!("{name}'s tasks gone"), Duration::from_secs(60), || {
            let out = n1.shoal(&["service", "ps", name]);
            let gone = !out.status.success() || stdout(&out).lines().count() <= 1;
            gone.then_some(()).ok_or_else(|| stdout(&out))
        })
        .map_err(anyhow::Error::msg)
    }
}

// --- Docker Swarm: two dockerds ----------------------------------------------------------------

/// Two `dockerd`s on two namespace hosts, in one swarm (host 1 the manager), with an
/// attachable overlay network, the iperf3 server on host 1 and the client on host 2.
struct DockerSide {
    swarm: DockerSwarm,
    net: Net,
}

impl DockerSide {
    fn start(args: &NetworkArgs, subnet: u8, tar: &Path) -> Result<DockerSide> {
        let net = Net::with("nd", 246, subnet, 2);
        let swarm = DockerSwarm::start(&net, &args.docker, &args.dockerd)?;
        let side = DockerSide { swarm, net };
        for i in 0..2 {
            side.swarm.docker(i, &["import", &tar.to_string_lossy(), IMAGE])?;
        }
        let overlay = ["network", "create", "-d", "overlay", "--attachable", NETWORK];
        side.swarm.docker(0, &overlay)?;
        side.create(SERVER, 1, "manager", &["/usr/bin/iperf3", "-s"], &[])?;
        side.create(CLIENT, 1, "worker", &["/bin/sleep", "100000000"], &[])?;
        Ok(side)
    }

    /// `service create` on the overlay with every task on the node of `role`, and waits until
    /// that node runs `n` containers of it.
    fn create(&self, name: &str, n: usize, role: &str, cmd: &[&str], extra: &[&str]) -> Result<()> {
        let (replicas, constraint) = (n.to_string(), format!("node.role=={role}"));
        let mut args = vec!["service", "create", "--detach", "--quiet", "--no-resolve-image"];
        args.extend(["--name", name, "--replicas", &replicas, "--network", NETWORK]);
        args.extend(["--constraint", &constraint]);
        args.extend(extra);
        args.push(IMAGE);
        args.extend(cmd);
        self.swarm.docker(0, &args)?;
        let node = if role == "manager" { 0 } else { 1 };
        try_eventually(&format!("{n} containers of {name}"), Duration::from_secs(60), || {
            let ids = self.swarm.containers(node, name).map_err(|e| format!("{e:#}"))?;
            (ids.len() == n).then_some(()).ok_or(format!("{} running", ids.len()))
        })
        .map_err(anyhow::Error::msg)
    }

    /// The first running container of `service` on daemon `i`.
    fn container(&self, i: usize, service: &str) -> Result<String> {
        let id = self.swarm.containers(i, service)?.into_iter().next();
        id.with_context(|| format!("no running container of {service}"))
    }
}

impl Cluster for DockerSide {
    fn label(&self) -> &'static str {
        "docker swarm"
    }

    fn net(&self) -> &Net {
        &self.net
    }

    fn route(&self) -> Result<Route> {
        let netns = |pid: i32| PathBuf::from(format!("/proc/{pid}/ns/net"));
        let client = netns(self.swarm.pid(1, &self.container(1, CLIENT)?)?);
        let server_id = self.container(0, SERVER)?;
        let server = netns(self.swarm.pid(0, &server_id)?);
        let f = format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}");
        let direct = self.swarm.docker(0, &["inspect", "-f", &f, &server_id])?.trim().parse()?;
        let vip = match self.no_vip() {
            None => Some(self.vip(SERVER)?),
            Some(_) => None,
        };
        Ok(Route { client, server, vip, direct })
    }

    fn no_vip(&self) -> Option<&'static str> {
        // Swarm balances a virtual IP with IPVS in each container's namespace; dockerd loads
        // the module when it can. Its table shows in the namespace of host 1's dockerd.
        let dockerd = self.swarm.dockerd_pid(0);
        let ipvs = Path::new(&format!("/proc/{dockerd}/net/ip_vs")).exists();
        (!ipvs).then_some("no IPVS in this kernel")
    }

    fn start_pair(&self, name: &str, mode: Mode) -> Result<()> {
        let mut extra = vec!["--restart-condition", "none"];
        if mode == Mode::Dnsrr {
            extra.extend(["--endpoint-mode", "dnsrr"]);
        }
        self.create(name, 2, "manager", &["/usr/bin/iperf3", "-s"], &extra)
    }

    fn vip(&self, service: &str) -> Result<Ipv4Addr> {
        let f = "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}";
        let out = self.swarm.docker(0, &["service", "inspect", "-f", f, service])?;
        let addr = out.split_whitespace().next();
        let addr = addr.with_context(|| format!("no virtual IP of {service}"))?;
        Ok(addr.split('/').next().unwrap_or_default().parse()?)
    }

    fn victim(&self, name: &str) -> Result<Vec<i32>> {
        Ok(vec![self.swarm.pid(0, &self.container(0, name)?)?])
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.swarm.docker(0, &["service", "rm", name])?;
        let label = format!("label=com.docker.swarm.service.name={name}");
        try_eventually(&format!("{name}'s containers gone"), Duration::from_secs(60), || {
            let out = self.swarm.docker_text(0, &["ps", "-aq", "--filter", &label])?;
            out.trim().is_empty().then_some(()).ok_or(out)
        })
        .map_err(anyhow::Error::msg)
    }
}

// --- the table -------------------------------------------------------------------------------

/// The median of some durations, in seconds.
fn med(v: &[Duration]) -> f64 {
    median(v.iter().map(Duration::as_secs_f64).collect())
}

fn print_table(args: &NetworkArgs, f: &[Figures; 3], docker: Option<&str>, no_vip: Option<&str>) {
    println!();
    println!(
        "network: per system two netns hosts on a veth bridge, a 2-node swarm, an overlay network; \
         medians of {} runs; Docker {}",
        args.runs.max(1),
        docker.unwrap_or("not measured")
    );
    print_rows(&rows(args.duration, f, no_vip));
    if let Some(note) = ratios_note(f) {
        for line in wrapped(&format!("({note})"), 100) {
            println!("  {line}");
        }
    }
    println!(
        "  (lookups unanswered within 1 s: shoal {}, docker {}; {}; 2 shared cores: read ratios)",
        f[0].dns_lost,
        f[1].dns_lost,
        load_note()
    );
    for line in wrapped(METHOD, 100) {
        println!("  {line}");
    }
}

/// The table's rows: the figures' medians, and the goals they are held to.
fn rows(secs: u64, f: &[Figures; 3], no_vip: Option<&str>) -> Vec<[String; 5]> {
    let gbits = |v: &[f64], of_bare: &[f64]| match (v.is_empty(), of_bare.is_empty()) {
        (true, _) => "-".to_string(),
        (false, true) => format!("{:.2} Gbit/s", median(v.to_vec())),
        (false, false) => {
            let (g, r) = (median(v.to_vec()), median(of_bare.to_vec()));
            format!("{g:.2} Gbit/s ({:.0}% of bare)", 100.0 * r)
        }
    };
    let pair = |p50: &[Duration], p99: &[Duration]| match p50.is_empty() {
        true => "-".to_string(),
        false => format!("{:.0} / {:.0} µs", med(p50) * 1e6, med(p99) * 1e6),
    };
    let ms = |v: &[Duration]| match v.is_empty() {
        true => "-".to_string(),
        false => format!("{:.0} ms", med(v) * 1e3),
    };
    let docker_vip = |cell: String| match no_vip {
        Some(why) if cell == "-" => format!("n/a: {why}"),
        _ => cell,
    };
    let bare_gbits = gbits(&f[2].direct_gbits, &[]);
    vec![
        [
            format!("TCP throughput to the service VIP (iperf3, {secs} s)"),
            gbits(&f[0].vip_gbits, &f[0].vip_of_bare),
            docker_vip(gbits(&f[1].vip_gbits, &f[1].vip_of_bare)),
            bare_gbits.clone(),
            format!(">= 90% of bare and >= Docker: {}", throughput_goal(f)),
        ],
        [
            "TCP throughput to the server task's address".into(),
            gbits(&f[0].direct_gbits, &f[0].direct_of_bare),
            gbits(&f[1].direct_gbits, &f[1].direct_of_bare),
            bare_gbits,
            "-".into(),
        ],
        [
            format!("TCP request/response p50 / p99 ({ECHO_SIZE} B, to the task)"),
            pair(&f[0].rr_p50, &f[0].rr_p99),
            pair(&f[1].rr_p50, &f[1].rr_p99),
            pair(&f[2].rr_p50, &f[2].rr_p99),
            "-".into(),
        ],
        [
            "service-name lookup p50 / p99 (127.0.0.11)".into(),
            pair(&f[0].dns_p50, &f[0].dns_p99),
            pair(&f[1].dns_p50, &f[1].dns_p99),
            "-".into(),
            format!("p99 < 1 ms: {}", goal(&f[0].dns_p99, |s| s < 1e-3)),
        ],
        [
            "task SIGKILLed -> out of the VIP".into(),
            ms(&f[0].out_of_vip),
            docker_vip(ms(&f[1].out_of_vip)),
            "-".into(),
            format!("<= 1 s: {}", goal(&f[0].out_of_vip, |s| s <= 1.0)),
        ],
        [
            "task SIGKILLed -> out of DNS answers (dnsrr)".into(),
            ms(&f[0].out_of_dns),
            ms(&f[1].out_of_dns),
            "-".into(),
            "-".into(),
        ],
    ]
}

/// `text`'s words in lines of at most `width` characters.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// How each figure is taken, printed under the table.
const METHOD: &str =
    "how: iperf3 runs inside the client task's network namespace (nsenter) against the \
iperf3 service's task on the other host; request/response is a 64-byte ping-pong on one TCP \
connection between two bench threads setns'd into the client's and the server task's \
namespaces; lookups are A queries for the server service's name sent one at a time to \
127.0.0.11:53 from the client task's namespace; removal: a fresh 2-task service (restart \
condition none) probed with a new connection every 10 ms (500 ms timeout) from the client \
task's namespace, one task's processes SIGKILLed from the host, then the time to the first \
attempt after which every attempt for 3 s connects.";

/// Shoal through its virtual IP against the bare path, and against Docker on the same kind
/// of path: each the median of the ratios of figures taken back to back in one run.
fn throughput_goal(f: &[Figures; 3]) -> &'static str {
    if f[0].vip_of_bare.is_empty() {
        return "-";
    }
    let vs_bare = median(f[0].vip_of_bare.clone()) >= 0.9;
    let vs_docker = f[0].of_docker.is_empty() || median(f[0].of_docker.clone()) >= 1.0;
    verdict(vs_bare && vs_docker)
}

/// Shoal's throughput over Docker's, run by run.
fn ratios_note(f: &[Figures; 3]) -> Option<String> {
    let runs = &f[0].of_docker;
    if runs.is_empty() {
        return None;
    }
    let path = if f[1].vip_gbits.is_empty() { "both to the task" } else { "both via VIP" };
    let each: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
    Some(format!(
        "shoal / docker throughput ({path}), per run: {}; median {:.3}; % of bare: median of \
         per-run ratios to the bare path in the same run",
        each.join(", "),
        median(runs.clone())
    ))
}

fn goal(v: &[Duration], met: impl Fn(f64) -> bool) -> &'static str {
    match v.is_empty() {
        true => "-",
        false => verdict(met(med(v))),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// A table with `|` between columns as wide as their widest cell, the first row the header.
fn print_rows(rows: &[[String; 5]]) {
    let header = ["metric", "Shoal", "Docker Swarm", "bare veth", "goal"].map(String::from);
    let all: Vec<&[String; 5]> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> =
        (0..5).map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in all {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        println!("| {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts every 10 ms from `start`, failing at the given indexes.
    fn attempts(start: Instant, n: usize, failing: &[usize]) -> Vec<(Instant, bool)> {
        let at = |i: usize| start + PROBE_EVERY * i as u32;
        (0..n).map(|i| (at(i), !failing.contains(&i))).collect()
    }

    #[test]
    fn removal_is_the_first_attempt_after_the_last_failure() {
        let killed = Instant::now();
        let seen = attempts(killed, 400, &[1, 2, 5, 9]);
        let settled = killed + Duration::from_secs(4);
        let r = judge(&seen, killed, settled).expect("3 s of successes after the last failure");
        assert_eq!((r.after, r.failed), (PROBE_EVERY * 10, 4));
    }

    #[test]
    fn no_verdict_until_the_successes_last() {
        let killed = Instant::now();
        let seen = attempts(killed, 400, &[1, 250]);
        assert!(judge(&seen, killed, killed + Duration::from_secs(4)).is_none());
        // Attempts not yet settled do not count, failed or not.
        assert!(judge(&seen, killed, killed + Duration::from_millis(2_000)).is_none());
    }

    #[test]
    fn without_failures_the_first_attempt_is_the_figure() {
        let killed = Instant::now();
        let seen = attempts(killed + Duration::from_millis(3), 400, &[]);
        let r = judge(&seen, killed, killed + Duration::from_secs(4)).unwrap();
        assert_eq!((r.after, r.failed), (Duration::from_millis(3), 0));
    }

    #[test]
    fn words_wrap_at_the_width() {
        assert_eq!(wrapped("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrapped("abcdefgh ij", 5), ["abcdefgh", "ij"]);
    }
}
