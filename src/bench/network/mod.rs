//! `shoal-bench network` (root): the data plane across two hosts, beside Docker Swarm's overlay and
//! the bare path. Each system gets two network-namespace hosts joined by veth on a bridge (the test
//! kit's [`Net`](shoal_testkit::netns::Net)): Shoal as two `shoald`s, Docker as two `dockerd`s
//! started in those namespaces with roots of their own. Both run an iperf3 server service on host 1
//! and an idle client task on host 2, on an overlay network; the bench then measures from inside
//! the client task's network namespace (a thread that `setns`es into it, or `nsenter` for iperf3),
//! so the packets take exactly the path the task's own would. The bare figures run in the two host
//! namespaces themselves.
//!
//! The figures: iperf3 throughput to the server service's virtual IP and to its task's own
//! address; a 64-byte TCP request/response loop; DNS lookups of the service's name at the
//! task's resolver (127.0.0.11); and how long a virtual IP (and DNS round robin) keeps
//! sending new connections to a task after its processes are SIGKILLed. Docker's virtual IPs
//! need IPVS; on a kernel without it their rows say so and Docker is measured to the task.
//!
//! With `--encrypted` ([`encrypted`]) both systems also create an encrypted overlay and put
//! both services on it as well; the bench then measures task to task only (throughput and
//! the request/response loop) on each system's encrypted and plain overlays and the bare path,
//! and reports encrypted over plain. A path that passes no TCP connection is said so.
//!
//! Owns everything it creates (namespaces, veths, bridges, the FORWARD rules for them,
//! `dockerd`s and their directories) and removes it on the way out, also after a failure;
//! never touches a Docker or a namespace it did not start.

mod cluster;
mod docker;
mod encrypted;
mod measure;
mod removal;
mod run;
mod shoal;
mod table;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::panic_text;

use cluster::{Bare, Cluster};
use docker::DockerSide;
use run::{measure_run, Figures};
use shoal::ShoalSide;
use table::print_table;

/// The image both systems run: iperf3 from this host with its libraries, and busybox.
const IMAGE: &str = "shoal-bench/iperf3:net";
/// The overlay network both systems create.
const NETWORK: &str = "benchnet";
/// The encrypted overlay both systems create too with `--encrypted`.
const ENCRYPTED: &str = "benchenc";
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
/// Connection attempts, each given `REACH_TIMEOUT`, before a path is said to pass no traffic.
const REACH_TRIES: u32 = 5;
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Task to task on an encrypted overlay beside the plain one and the bare path:
    /// throughput and request/response only (no virtual IP, lookups or removal)
    #[arg(long)]
    pub encrypted: bool,
}

/// The overlay networks a system creates; every service joins all of them.
fn overlays(args: &NetworkArgs) -> &'static [&'static str] {
    match args.encrypted {
        true => &[NETWORK, ENCRYPTED],
        false => &[NETWORK],
    }
}

/// `network create -d overlay [--opt encrypted] NAME`, the same for both systems.
fn network_create(name: &'static str) -> Vec<&'static str> {
    let mut args = vec!["network", "create", "-d", "overlay"];
    if name == ENCRYPTED {
        args.extend(["--opt", "encrypted"]);
    }
    args.push(name);
    args
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
    let bare_route = bare.as_ref().map(|b| &b.route);
    let mut figures = [Figures::default(), Figures::default(), Figures::default()];
    let mut columns = encrypted::Columns::default();
    let mut result = Ok(());
    for run in 0..args.runs.max(1) {
        println!("run {}:", run + 1);
        result = match args.encrypted {
            false => measure_run(args, run, &sides, bare_route, &mut figures),
            true => encrypted::measure_run(args, run, &sides, bare_route, &mut columns),
        };
        if result.is_err() {
            break;
        }
    }
    let docker_version = docker.as_ref().map(|d| d.swarm.version.clone());
    let no_vip = docker.as_ref().and_then(|d| d.no_vip());
    drop(bare);
    drop(shoal);
    drop(docker);
    match args.encrypted {
        false => print_table(args, &figures, docker_version.as_deref(), no_vip),
        true => encrypted::print_table(args, &columns, docker_version.as_deref()),
    }
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
