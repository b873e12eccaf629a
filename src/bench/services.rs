//! Owns `shoal bench convergence` and `shoal bench e2e`: how fast services reach their replica
//! count. Convergence runs one real node (shoald, tasks in runc) beside Docker Swarm on the same
//! machine; e2e drives three managers with 1,000 simulated agents that speak the real protocol.
//! Never changes cluster state it did not create, and never leaves containers behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use shoal_agent::{JoinParams, Joined};
use shoal_manager::server::Serving;
use shoal_manager::{Identity, Manager};
use shoal_pki::{ReloadableCert, Role};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::*;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::bench::raft::{init_manager, join_manager, temp_dir};
use crate::cli::client::{self, Host, TlsFiles};

/// Every `shoal bench` subcommand: the older ones and the services benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    #[command(flatten)]
    Base(crate::bench::BenchCmd),
    /// service create --replicas N -> N tasks running on one node, beside Docker Swarm (root)
    Convergence(ConvergenceArgs),
    /// 3 managers, 1,000 simulated agents, 100 services x 100 replicas: tasks/s to ASSIGNED
    E2e(E2eArgs),
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Base(cmd) => crate::bench::run(cmd).await,
        BenchCmd::Convergence(args) => convergence(args).await,
        BenchCmd::E2e(args) => e2e(args).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64()).collect()
}

/// The 1-minute load average and the CPU count: figures from a busy machine read differently.
fn load_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = load.split_whitespace().next().unwrap_or("?").to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("load average {one} on {cpus} CPUs")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Polls `check` every `every` until it yields a value or `limit` passes.
async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
            bail!("timed out after {limit:?} waiting for {what}{why}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A rootfs tarball: busybox-static with the applets the tasks use.
fn rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let tar = dir.join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar")?;
    anyhow::ensure!(status.success(), "tar failed ({status})");
    Ok(tar)
}

// ---------------------------------------------------------------------------------------------
// convergence: one node, N replicas of `sleep 3600`

/// Image name both systems import the rootfs as.
const CONV_IMAGE: &str = "shoal-bench/busybox:convergence";
/// How often each side's state is polled while timing.
const POLL: Duration = Duration::from_millis(20);

/// `shoal bench convergence`.
#[derive(Debug, clap::Args)]
pub struct ConvergenceArgs {
    /// Replicas of the service
    #[arg(long, default_value_t = 50)]
    pub replicas: u64,
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The shoald binary (default: the one next to this shoal)
    #[arg(long)]
    pub shoald: Option<PathBuf>,
    /// The docker CLI (Debian's docker.io; the daemon must be running)
    #[arg(long, default_value = "docker")]
    pub docker: PathBuf,
    /// Measure Shoal only
    #[arg(long)]
    pub skip_docker: bool,
    /// Measure Docker Swarm only
    #[arg(long)]
    pub skip_shoal: bool,
    /// Seconds one run may take before it is given up
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// What one convergence run measured.
#[derive(Debug, Clone, Copy)]
struct ConvRun {
    /// Create call to N tasks running.
    running: Duration,
    /// Remove call to no container left.
    removed: Duration,
}

async fn convergence(args: ConvergenceArgs) -> Result<()> {
    let runs = args.runs.max(1);
    let limit = Duration::from_secs(args.timeout.max(10));
    let n = args.replicas.max(1);
    let dir = temp_dir("shoal-bench-conv-")?;
    let tar = rootfs_tar(dir.path())?;
    let mut shoal = match args.skip_shoal {
        true => None,
        false => start_shoal_side(&args, &tar).await,
    };
    let mut docker = match args.skip_docker {
        true => None,
        false => Docker::start(&args.docker, &tar).await,
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        if let Some(node) = &shoal {
            match node.converge(run, n, limit).await {
                Ok(r) => {
                    report_conv_run(run, "shoal", n, &r);
                    ours.push(r);
                }
                Err(e) => {
                    println!("run {}: shoal failed: {e:#}", run + 1);
                    println!("  (shoald log: {})", log_tail(&node.log));
                    if let Some(node) = shoal.take() {
                        node.stop().await;
                    }
                }
            }
        }
        if let Some(d) = &docker {
            match d.converge(run, n, limit).await {
                Ok(r) => {
                    report_conv_run(run, "docker swarm", n, &r);
                    theirs.push(r);
                }
                Err(e) => {
                    println!("run {}: docker swarm failed: {e:#}", run + 1);
                    if let Some(d) = docker.take() {
                        d.stop().await;
                    }
                }
            }
        }
    }
    if let Some(node) = shoal {
        node.stop().await;
    }
    let docker_version = docker.as_ref().map(|d| d.version.clone());
    if let Some(d) = docker {
        d.stop().await;
    }
    print_convergence(n, runs, &ours, &theirs, docker_version.as_deref());
    println!("  ({})", load_note());
    Ok(())
}

fn report_conv_run(run: usize, who: &str, n: u64, r: &ConvRun) {
    println!(
        "run {}: {who:<12} {n} replicas running in {:>7.3} s; removed (no container left) in {:>6.3} s",
        run + 1,
        r.running.as_secs_f64(),
        r.removed.as_secs_f64()
    );
}

fn print_convergence(
    n: u64,
    runs: usize,
    ours: &[ConvRun],
    theirs: &[ConvRun],
    docker: Option<&str>,
) {
    let figure = |v: &[ConvRun], f: fn(&ConvRun) -> Duration| -> String {
        match v.is_empty() {
            true => "-".into(),
            false => format!("{:.3} s", median(secs(&v.iter().map(f).collect::<Vec<_>>()))),
        }
    };
    let each = |v: &[ConvRun]| -> String {
        let all: Vec<String> =
            v.iter().map(|r| format!("{:.2}", r.running.as_secs_f64())).collect();
        all.join(", ")
    };
    println!();
    println!(
        "convergence: one node, `service create --replicas {n}` of `/bin/sleep 3600` (busybox-static \
         rootfs imported into each) -> {n} tasks running; medians of {runs} runs"
    );
    println!("  {:<40} {:>12} {:>14}  runs (s)", "", "to running", "rm -> gone");
    println!(
        "  {:<40} {:>12} {:>14}  {}",
        "shoal (shoald, runc)",
        figure(ours, |r| r.running),
        figure(ours, |r| r.removed),
        each(ours)
    );
    let name = format!("docker swarm {}", docker.unwrap_or("(not measured)"));
    println!(
        "  {:<40} {:>12} {:>14}  {}",
        name,
        figure(theirs, |r| r.running),
        figure(theirs, |r| r.removed),
        each(theirs)
    );
    if !ours.is_empty() && !theirs.is_empty() {
        let s = median(secs(&ours.iter().map(|r| r.running).collect::<Vec<_>>()));
        let d = median(secs(&theirs.iter().map(|r| r.running).collect::<Vec<_>>()));
        println!("  shoal / docker swarm (time to running): {:.3} ({:.1}x faster)", s / d, d / s);
        println!(
            "  goal: shoal <= 1/10 of Docker Swarm's time: {}",
            if s * 10.0 <= d { "met" } else { "NOT met" }
        );
    } else {
        println!("  goal: shoal <= 1/10 of Docker Swarm's time");
    }
    println!(
        "  (both poll their own API every {} ms: shoal ListServices over the local socket, docker \
         `service ls`; docker gets the image by ID and --no-resolve-image, so it pulls nothing)",
        POLL.as_millis()
    );
}

// --- the Shoal side: one shoald process -------------------------------------------------------

/// One shoald in a temp dir, a one-node swarm, the bench image imported.
#[derive(Debug)]
struct ShoalNode {
    child: std::process::Child,
    data: PathBuf,
    log: PathBuf,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn start_shoal_side(args: &ConvergenceArgs, tar: &Path) -> Option<ShoalNode> {
    let shoald = match &args.shoald {
        Some(p) => p.clone(),
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("shoald"),
            Err(e) => {
                println!("shoal: skipped: cannot find shoald ({e}); pass --shoald PATH");
                return None;
            }
        },
    };
    println!("starting shoald ({}) and a one-node swarm...", shoald.display());
    match ShoalNode::start(&shoald, tar).await {
        Ok(node) => Some(node),
        Err(e) => {
            println!("shoal: skipped: {e:#}");
            None
        }
    }
}

impl ShoalNode {
    async fn start(shoald: &Path, tar: &Path) -> Result<ShoalNode> {
        let dir = temp_dir("shoal-bench-node-")?;
        let (data, socket, log) = (
            dir.path().join("data"),
            dir.path().join("shoald.sock"),
            dir.path().join("shoald.log"),
        );
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(shoald)
            .arg("--data-root")
            .arg(&data)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--hostname", "bench-node", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("running {}", shoald.display()))?;
        let host = Host::Unix(socket.clone());
        let channel = wait_for("shoald's socket", Duration::from_secs(20), POLL, || async {
            match socket.exists() {
                true => client::connect(&host, &TlsFiles::default()).await.map(Some),
                false => Ok(None),
            }
        })
        .await
        .with_context(|| format!("shoald did not come up: {}", log_tail(&log)))?;
        let node = ShoalNode { child, data, log, channel, _dir: dir };
        node.init_swarm().await?;
        node.import(tar).await?;
        Ok(node)
    }

    async fn init_swarm(&self) -> Result<()> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let req =
            InitRequest { listen_addr: addr.clone(), advertise_addr: addr, ..Default::default() };
        let mut daemon = DaemonClient::new(self.channel.clone());
        daemon.init(req).await.map_err(client::status).context("swarm init")?;
        let mut control = ControlClient::new(self.channel.clone());
        wait_for("the node to be Ready", Duration::from_secs(30), POLL, || {
            let mut control = control.clone();
            async move {
                let nodes = control.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
                Ok(nodes.iter().any(|n| n.state() == NodeState::Ready).then_some(()))
            }
        })
        .await?;
        control.get_cluster_info(GetClusterInfoRequest {}).await.map_err(client::status)?;
        Ok(())
    }

    async fn import(&self, tar: &Path) -> Result<()> {
        let req = ImageImportRequest {
            path: tar.display().to_string(),
            reference: CONV_IMAGE.to_string(),
        };
        let mut daemon = DaemonClient::new(self.channel.clone());
        daemon.image_import(req).await.map_err(client::status).context("image import")?;
        Ok(())
    }

    fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
    }

    async fn converge(&self, run: usize, n: u64, limit: Duration) -> Result<ConvRun> {
        let spec = sleep_service(&format!("bench-conv-{run}"), CONV_IMAGE, n);
        let mut control = self.control();
        let start = Instant::now();
        let created = control
            .create_service(CreateServiceRequest { spec: Some(spec) })
            .await
            .map_err(client::status)
            .context("service create")?;
        let id = created.into_inner().service.context("no service in the answer")?.id;
        let result = wait_for(&format!("{n} running tasks"), limit, POLL, || {
            let (mut control, id) = (control.clone(), id.clone());
            async move {
                let list = control.list_services(ListServicesRequest {}).await?.into_inner();
                let mine =
                    list.services.iter().find(|s| s.service.as_ref().map(|s| &s.id) == Some(&id));
                Ok(mine.filter(|s| s.running >= n).map(|_| ()))
            }
        })
        .await;
        let running = start.elapsed();
        let check = match &result {
            Ok(()) => self.check_running(&id, n).await,
            Err(_) => Ok(()),
        };
        let removed = self.remove(&id, limit).await;
        result?;
        check?;
        Ok(ConvRun { running, removed: removed? })
    }

    /// Cross-checks ListServices with ListTasks and with the containers runc knows.
    async fn check_running(&self, id: &str, n: u64) -> Result<()> {
        let req = ListTasksRequest { service: id.to_string(), ..Default::default() };
        let tasks =
            self.control().list_tasks(req).await.map_err(client::status)?.into_inner().tasks;
        let running = tasks
            .iter()
            .filter(|t| t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running))
            .count();
        let containers = runc_containers(&self.data).len();
        if running as u64 != n || (containers as u64) < n {
            println!(
                "  note: ListServices said {n} running; ListTasks shows {running} RUNNING, runc {containers} containers"
            );
        }
        Ok(())
    }

    /// Removes the service and waits until no task of it and no container is left.
    async fn remove(&self, id: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let req = RemoveServiceRequest { reference: id.to_string() };
        self.control().remove_service(req).await.map_err(client::status).context("service rm")?;
        wait_for("the service's tasks and containers to go", limit, POLL, || async {
            let tasks = self.control().list_tasks(ListTasksRequest::default()).await?.into_inner();
            let left = tasks.tasks.iter().any(|t| t.service_id == id);
            Ok((!left && runc_containers(&self.data).is_empty()).then_some(()))
        })
        .await?;
        Ok(start.elapsed())
    }

    /// Removes every service, stops shoald (SIGTERM, then SIGKILL), and deletes any container
    /// it left behind.
    async fn stop(mut self) {
        if let Ok(list) = self.control().list_services(ListServicesRequest {}).await {
            for s in list.into_inner().services.into_iter().filter_map(|s| s.service) {
                let _ = self.remove(&s.id, Duration::from_secs(60)).await;
            }
        }
        let pid = self.child.id().to_string();
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (root, id) in runc_containers(&self.data) {
            println!("  deleting container {id} that shoald left behind");
            let _ = tokio::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .status()
                .await;
        }
    }
}

/// A replicated service of `n` × `/bin/sleep 3600`.
fn sleep_service(name: &str, image: &str, n: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        container: Some(ContainerSpec {
            image: image.to_string(),
            command: vec!["/bin/sleep".into(), "3600".into()],
            ..Default::default()
        }),
        mode: ServiceMode::Replicated as i32,
        replicas: n,
        ..Default::default()
    }
}

/// Containers runc keeps state for anywhere under `dir`: (runc root, container ID).
fn runc_containers(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    find_runc_states(dir, 8, &mut found);
    found
}

fn find_runc_states(dir: &Path, depth: usize, found: &mut Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && depth > 0 {
            find_runc_states(&path, depth - 1, found);
        } else if kind.is_file() && entry.file_name() == "state.json" {
            let is_runc = std::fs::read_to_string(&path)
                .map(|s| s.contains("\"init_process_pid\""))
                .unwrap_or(false);
            if let (true, Some(id), Some(root)) =
                (is_runc, dir.file_name(), dir.parent().map(Path::to_path_buf))
            {
                found.push((root, id.to_string_lossy().into_owned()));
            }
        }
    }
}

// --- the peer: Docker Swarm --------------------------------------------------------------------

/// Docker Swarm on this machine, left as it was found.
#[derive(Debug)]
struct Docker {
    cli: PathBuf,
    version: String,
    image_id: String,
    /// We ran `swarm init`, so we leave the swarm at the end.
    inited: bool,
}

impl Docker {
    async fn run(&self, args: &[&str]) -> Result<String> {
        docker_run(&self.cli, args).await
    }

    /// Docker ready for the benchmark, or `None` with a line saying why the peer is skipped.
    async fn start(cli: &Path, tar: &Path) -> Option<Docker> {
        match Docker::prepare(cli, tar).await {
            Ok(d) => Some(d),
            Err(e) => {
                println!("docker swarm: skipped: {e:#}");
                None
            }
        }
    }

    async fn prepare(cli: &Path, tar: &Path) -> Result<Docker> {
        let version = match docker_run(cli, &["version", "--format", "{{.Server.Version}}"]).await {
            Ok(v) => v.trim().to_string(),
            Err(e) if format!("{e:#}").contains("No such file") => bail!(
                "{} not found (apt-get install docker.io, start dockerd, or pass --docker PATH)",
                cli.display()
            ),
            Err(e) => bail!("the docker daemon does not answer ({e:#}); start dockerd"),
        };
        let state = docker_run(cli, &["info", "--format", "{{.Swarm.LocalNodeState}}"]).await?;
        let mut docker =
            Docker { cli: cli.to_path_buf(), version, image_id: String::new(), inited: false };
        match state.trim() {
            "inactive" => {
                println!(
                    "docker swarm init (this machine's docker was not in a swarm; left after)..."
                );
                docker.run(&["swarm", "init"]).await.context("docker swarm init")?;
                docker.inited = true;
            }
            "active" => {
                let manager =
                    docker.run(&["info", "--format", "{{.Swarm.ControlAvailable}}"]).await?;
                if manager.trim() != "true" {
                    bail!(
                        "this docker is a swarm worker; services can only be created on a manager"
                    );
                }
            }
            other => bail!("docker's swarm state is {other:?}; expected active or inactive"),
        }
        let tar = tar.display().to_string();
        match docker.run(&["import", &tar, CONV_IMAGE]).await {
            Ok(id) => docker.image_id = id.trim().to_string(),
            Err(e) => {
                docker.stop().await;
                return Err(e.context("docker import"));
            }
        }
        Ok(docker)
    }

    async fn converge(&self, run: usize, n: u64, limit: Duration) -> Result<ConvRun> {
        let name = format!("shoal-bench-conv-{run}");
        let replicas = n.to_string();
        let start = Instant::now();
        let id = self
            .run(&[
                "service",
                "create",
                "--detach",
                "--quiet",
                "--no-resolve-image",
                "--name",
                &name,
                "--replicas",
                &replicas,
                &self.image_id,
                "/bin/sleep",
                "3600",
            ])
            .await?
            .trim()
            .to_string();
        let filter = format!("id={id}");
        let result = wait_for(&format!("{n} running replicas"), limit, POLL, || async {
            let out = self
                .run(&["service", "ls", "--filter", &filter, "--format", "{{.Replicas}}"])
                .await?;
            let running = out.trim().split('/').next().and_then(|r| r.parse::<u64>().ok());
            Ok(running.filter(|r| *r >= n).map(|_| ()))
        })
        .await;
        let running = start.elapsed();
        let removed = self.remove(&id, limit).await;
        result?;
        Ok(ConvRun { running, removed: removed? })
    }

    async fn remove(&self, id: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.run(&["service", "rm", id]).await?;
        let label = format!("label=com.docker.swarm.service.id={id}");
        wait_for("docker's containers to go", limit, POLL, || async {
            let out = self.run(&["ps", "-aq", "--filter", &label]).await?;
            Ok(out.trim().is_empty().then_some(()))
        })
        .await?;
        Ok(start.elapsed())
    }

    /// Removes the image and, if we made the swarm, leaves it.
    async fn stop(self) {
        if !self.image_id.is_empty() {
            let _ = self.run(&["image", "rm", "--force", &self.image_id]).await;
        }
        if self.inited {
            if let Err(e) = self.run(&["swarm", "leave", "--force"]).await {
                println!("docker swarm leave --force failed: {e:#}");
            }
        }
    }
}

async fn docker_run(cli: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", cli.display()))?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// e2e: three managers, simulated agents

/// `shoal bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Managers (in-process, mTLS on loopback)
    #[arg(long, default_value_t = 3)]
    pub managers: usize,
    /// Simulated agents (one process; each its own key, certificate and connection)
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Services created at once
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Replicas of each service
    #[arg(long, default_value_t = 100)]
    pub replicas: u64,
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Joins in flight at once while the agents join
    #[arg(long, default_value_t = 64)]
    pub join_concurrency: usize,
    /// Seconds one run may take before it is given up
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Nomad's C1M (2016): one million containers on 5,000 hosts, ~3,750 placements/s. Published,
/// not run here.
const NOMAD_C1M_TASKS_PER_S: f64 = 3_750.0;
/// The goal for submit -> ASSIGNED.
const GOAL_TASKS_PER_S: f64 = 5_000.0;
/// How long the managers may take to form and the agents to join and open sessions.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads one milestone of a run.
type Milestone = fn(&E2eRun) -> Duration;

/// What one e2e run measured, from the first CreateService call.
#[derive(Debug, Clone, Copy)]
struct E2eRun {
    submitted: Duration,
    created: Duration,
    assigned: Duration,
    seen: Duration,
    running: Duration,
}

async fn e2e(args: E2eArgs) -> Result<()> {
    let total = args.services as u64 * args.replicas;
    anyhow::ensure!(args.managers >= 1 && args.agents >= 1 && total >= 1, "nothing to measure");
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // The managers' own logs (elections, nodes marked down), for looking into odd numbers.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    raise_nofile(2 * args.agents + 1024).await?;
    println!("starting {} managers (in-process, Raft over mTLS on loopback)...", args.managers);
    let cluster = E2eCluster::start(args.managers).await.context("starting the managers")?;
    let tracker = TaskTracker::spawn(cluster.observer());
    let start = Instant::now();
    let agents = SimAgents::start(&cluster, args.agents, args.join_concurrency.max(1)).await?;
    println!(
        "{} simulated agents joined and in session in {:.2} s",
        args.agents,
        start.elapsed().as_secs_f64()
    );
    let mut control = cluster.control().await?;
    let limit = Duration::from_secs(args.timeout.max(10));
    let mut results = Vec::new();
    for run in 0..args.runs.max(1) {
        let (before, lagged) = (cluster.health(&agents.stats), tracker.lagged());
        let r = e2e_run(&mut control, &tracker, &agents, &args, run, limit).await;
        cluster.health(&agents.stats).note_changes(&before);
        if tracker.lagged() > lagged {
            println!(
                "  note: the leader's store change feed dropped events {} times during the run \
                 (seen by this bench's own watcher, which then rescanned the store)",
                tracker.lagged() - lagged
            );
        }
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                println!("run {}: failed: {e:#}", run + 1);
                println!("  agents: {}", agents.stats.summary());
                break;
            }
        };
        println!(
            "run {}: submitted {:.3} s; all {total} created {:.3} s; ASSIGNED {:.3} s ({:.0} \
             tasks/s); seen by agents {:.3} s; RUNNING {:.3} s ({:.0} tasks/s)",
            run + 1,
            r.submitted.as_secs_f64(),
            r.created.as_secs_f64(),
            r.assigned.as_secs_f64(),
            total as f64 / r.assigned.as_secs_f64(),
            r.seen.as_secs_f64(),
            r.running.as_secs_f64(),
            total as f64 / r.running.as_secs_f64(),
        );
        results.push(r);
        if let Err(e) = remove_run(&mut control, &tracker, &args, run, limit).await {
            println!("run {}: removing its services failed: {e:#}; no further runs", run + 1);
            break;
        }
    }
    agents.stop();
    print_e2e(&args, &results, &agents.stats);
    println!("  ({})", load_note());
    // Let the agents' connections close before the managers go, so the last reference to each
    // store is not dropped while the runtime shuts down (sled's flush on drop once hung there).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn run_prefix(run: usize) -> String {
    format!("e2e-r{run}-")
}

async fn e2e_run(
    control: &mut ControlClient<Channel>,
    tracker: &TaskTracker,
    agents: &SimAgents,
    args: &E2eArgs,
    run: usize,
    limit: Duration,
) -> Result<E2eRun> {
    let total = args.services as u64 * args.replicas;
    let seen_before = agents.stats.seen.load(Ordering::Relaxed) as u64;
    let start = Instant::now();
    let mut calls = Vec::with_capacity(args.services);
    for i in 0..args.services {
        let spec = sleep_service(&format!("{}s{i}", run_prefix(run)), "busybox:e2e", args.replicas);
        let mut control = control.clone();
        calls.push(tokio::spawn(async move {
            control.create_service(CreateServiceRequest { spec: Some(spec) }).await
        }));
    }
    for call in calls {
        call.await?.map_err(client::status).context("CreateService")?;
    }
    let submitted = start.elapsed();
    // When all tasks were created (any state), ASSIGNED, seen by agents, and RUNNING.
    let mut at: [Option<Duration>; 4] = [None; 4];
    let deadline = start + limit;
    while at.iter().any(Option::is_none) {
        let c = tracker.counts(run);
        let seen = agents.stats.seen.load(Ordering::Relaxed) as u64 - seen_before;
        for (slot, count) in at.iter_mut().zip([c.created, c.assigned, seen, c.running]) {
            if count >= total && slot.is_none() {
                *slot = Some(start.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "after {limit:?}: of {total} tasks, {} created, {} ASSIGNED, {seen} seen by \
                 agents, {} RUNNING",
                c.created,
                c.assigned,
                c.running
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listed = control.list_services(ListServicesRequest {}).await.map_err(client::status)?;
    let prefix = run_prefix(run);
    let running_listed: u64 = listed
        .into_inner()
        .services
        .iter()
        .filter(|s| {
            s.service
                .as_ref()
                .is_some_and(|s| s.spec.as_ref().is_some_and(|p| p.name.starts_with(&prefix)))
        })
        .map(|s| s.running)
        .sum();
    if running_listed != total {
        println!("  note: ListServices reports {running_listed} of {total} running");
    }
    let [created, assigned, seen, running] = at.map(Option::unwrap_or_default);
    Ok(E2eRun { submitted, created, assigned, seen, running })
}

/// Removes the run's services and waits until their tasks are gone from the store.
async fn remove_run(
    control: &mut ControlClient<Channel>,
    tracker: &TaskTracker,
    args: &E2eArgs,
    run: usize,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    for i in 0..args.services {
        let reference = format!("{}s{i}", run_prefix(run));
        control.remove_service(RemoveServiceRequest { reference }).await.map_err(client::status)?;
    }
    wait_for("the removed services' tasks to go", limit, Duration::from_millis(20), || async {
        Ok((tracker.live(run) == 0).then_some(()))
    })
    .await?;
    println!(
        "  removed {} services and their tasks in {:.2} s",
        args.services,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_e2e(args: &E2eArgs, results: &[E2eRun], stats: &SimStats) {
    let total = args.services as u64 * args.replicas;
    println!();
    println!(
        "e2e: {} managers (in-process, Raft over gRPC mTLS on loopback, fsync on), {} simulated \
         agents in this process (each its own key, certificate and TLS connection; session, \
         heartbeats, assignments stream; reports ACCEPTED then RUNNING, batched per agent); {} \
         services x {} replicas = {total} tasks created at once through the Control API; medians \
         of {} runs; ASSIGNED and RUNNING are counted as the leader applies them (committed)",
        args.managers,
        args.agents,
        args.services,
        args.replicas,
        results.len()
    );
    if results.is_empty() {
        println!("  no run completed; agents: {}", stats.summary());
        return;
    }
    let med =
        |f: fn(&E2eRun) -> Duration| median(results.iter().map(|r| f(r).as_secs_f64()).collect());
    let rate = |s: f64| total as f64 / s;
    let assigned = med(|r| r.assigned);
    println!("  {:<44} {:>9} {:>12}", "", "seconds", "tasks/s");
    println!("  {:<44} {:>9.3}", "submit (all CreateService calls answered)", med(|r| r.submitted));
    let rows: [(&str, Milestone); 4] = [
        ("submit -> all tasks created (any state)", |r| r.created),
        ("submit -> all ASSIGNED (shoal)", |r| r.assigned),
        ("submit -> all seen by agents", |r| r.seen),
        ("submit -> all RUNNING", |r| r.running),
    ];
    for (what, f) in rows {
        println!("  {what:<44} {:>9.3} {:>12.0}", med(f), rate(med(f)));
    }
    println!(
        "  {:<44} {:>9} {:>12.0}",
        "Nomad C1M (published, not run here)", "", NOMAD_C1M_TASKS_PER_S
    );
    println!(
        "  shoal / Nomad C1M (to ASSIGNED): {:.2}x; goal >= {GOAL_TASKS_PER_S:.0} tasks/s: {}",
        rate(assigned) / NOMAD_C1M_TASKS_PER_S,
        if rate(assigned) >= GOAL_TASKS_PER_S { "met" } else { "NOT met" }
    );
    println!("  agents: {}", stats.summary());
}

/// Raises the soft open-files limit to the hard one (with util-linux `prlimit`) when below
/// `need`: every agent holds a connection, and the managers in this process hold the other end.
async fn raise_nofile(need: usize) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (soft, hard) = match nums.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => return Ok(()),
    };
    if soft >= need as u64 {
        return Ok(());
    }
    if hard < need as u64 {
        bail!("this needs about {need} open files, the hard limit is {hard}: raise it (ulimit -Hn) or use fewer --agents");
    }
    let pid = std::process::id().to_string();
    let limit = format!("--nofile={hard}:{hard}");
    let ok = tokio::process::Command::new("prlimit").args(["--pid", &pid, &limit]).status().await;
    anyhow::ensure!(
        ok.is_ok_and(|s| s.success()),
        "the open-files limit is {soft} and prlimit could not raise it; run `ulimit -n {need}` first"
    );
    Ok(())
}

// --- the managers --------------------------------------------------------------------------------

/// One manager serving its cluster port, as the daemon serves it.
#[derive(Debug)]
struct E2eMember {
    manager: Manager,
    addr: String,
    _serving: Serving,
    _dir: tempfile::TempDir,
}

/// The managers: `swarm init` on the first, manager-token joins for the others.
#[derive(Debug)]
struct E2eCluster {
    members: Vec<E2eMember>,
    /// The first manager's identity, used as the Control API client's certificate.
    admin: Identity,
    worker_token: String,
}

impl E2eCluster {
    async fn start(managers: usize) -> Result<E2eCluster> {
        let (m, admin) = init_manager("shoal-bench-e2e-", "e2e-manager-0").await?;
        let first = m.addr.clone();
        let serving = m.manager.serve(m.listener, m.cert);
        let manager_token = m.manager.join_token(Role::Manager)?;
        let worker_token = m.manager.join_token(Role::Worker)?;
        let member =
            E2eMember { manager: m.manager, addr: first.clone(), _serving: serving, _dir: m.dir };
        let mut cluster = E2eCluster { members: vec![member], admin, worker_token };
        for i in 1..managers {
            cluster.add_manager(i, &first, &manager_token).await?;
        }
        wait_for("the managers to form", SETUP_TIMEOUT, Duration::from_millis(20), || async {
            let leader = cluster.leader();
            let voters = leader.map(|l| cluster.members[l].manager.raft().status().voters.len());
            Ok((voters == Some(managers)).then_some(()))
        })
        .await?;
        Ok(cluster)
    }

    async fn add_manager(&mut self, i: usize, first: &str, token: &str) -> Result<()> {
        let hostname = format!("e2e-manager-{i}");
        let m = join_manager("shoal-bench-e2e-", &hostname, token, first).await?;
        self.members.push(E2eMember {
            manager: m.manager.clone(),
            addr: m.addr.clone(),
            _serving: m.manager.serve(m.listener, m.cert),
            _dir: m.dir,
        });
        m.manager.join_raft(first, &m.addr).await.context("joining the raft group")?;
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.manager.raft().status().is_leader)
    }

    fn leader_addr(&self) -> Result<String> {
        let leader = self.leader().context("no manager is leader")?;
        Ok(self.members[leader].addr.clone())
    }

    /// The leader: its store applies an entry once a quorum has it, so what it shows is
    /// committed, with no follower's lag added.
    fn observer(&self) -> Manager {
        self.members[self.leader().unwrap_or(0)].manager.clone()
    }

    /// A Control API client on the leader, with the first manager's certificate.
    async fn control(&self) -> Result<ControlClient<Channel>> {
        let config =
            shoal_pki::tls::client_config(&self.admin.root_ca_pem, Some(self.admin.cert.clone()))?;
        let channel = shoal_proto::dial::connect(&self.leader_addr()?, Arc::new(config))
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(ControlClient::new(channel))
    }

    /// The Raft term, workers not Ready, and agent errors: what should not change under load.
    fn health(&self, stats: &SimStats) -> Health {
        let term = self.members.iter().map(|m| m.manager.raft().status().term).max();
        let workers =
            self.leader().and_then(|l| self.members[l].manager.store().list::<Node>().ok());
        let not_ready = workers
            .unwrap_or_default()
            .iter()
            .filter(|n| n.role() == NodeRole::Worker && n.state() != NodeState::Ready)
            .count();
        Health {
            term: term.unwrap_or(0),
            not_ready,
            errors: stats.errors.load(Ordering::Relaxed),
            sessions: stats.sessions.load(Ordering::Relaxed),
        }
    }

    fn ready_workers(&self) -> Result<usize> {
        let leader = self.leader().context("no manager is leader")?;
        let nodes = self.members[leader].manager.store().list::<Node>()?;
        Ok(nodes
            .iter()
            .filter(|n| n.role() == NodeRole::Worker && n.state() == NodeState::Ready)
            .count())
    }
}

/// See [`E2eCluster::health`].
#[derive(Debug, Clone, Copy)]
struct Health {
    term: u64,
    not_ready: usize,
    errors: usize,
    sessions: usize,
}

impl Health {
    /// Prints what changed since `before` (elections, nodes down, sessions reopened).
    fn note_changes(&self, before: &Health) {
        if self.term != before.term {
            println!("  note: elections during the run: term {} -> {}", before.term, self.term);
        }
        if self.not_ready > 0 {
            println!("  note: {} workers not Ready after the run", self.not_ready);
        }
        if self.errors != before.errors || self.sessions != before.sessions {
            println!(
                "  note: {} agent errors and {} sessions reopened during the run",
                self.errors - before.errors,
                self.sessions - before.sessions
            );
        }
    }
}

// --- counting committed task states ------------------------------------------------------------

#[derive(Debug, Default)]
struct Tracked {
    /// Task ID -> (run, highest state seen).
    tasks: HashMap<String, (usize, i32)>,
    /// Per run: tasks seen at all, at ASSIGNED or later, and at RUNNING or later.
    created: HashMap<usize, u64>,
    assigned: HashMap<usize, u64>,
    running: HashMap<usize, u64>,
    lagged: u64,
}

impl Tracked {
    fn apply(&mut self, task: &Task) {
        let Some(run) = task_run(task) else { return };
        let state = task.status.as_ref().map(|s| s.state).unwrap_or(0);
        let before = self.tasks.get(&task.id).map(|t| t.1).unwrap_or(-1);
        if state <= before {
            return;
        }
        self.tasks.insert(task.id.clone(), (run, state));
        if before < 0 {
            *self.created.entry(run).or_default() += 1;
        }
        let crossed = |level: TaskState| before < level as i32 && state >= level as i32;
        if crossed(TaskState::Assigned) {
            *self.assigned.entry(run).or_default() += 1;
        }
        if crossed(TaskState::Running) {
            *self.running.entry(run).or_default() += 1;
        }
    }
}

/// Tasks of one run that reached each point.
#[derive(Debug, Clone, Copy)]
struct Counts {
    created: u64,
    assigned: u64,
    running: u64,
}

/// The run a task belongs to, from its service's name.
fn task_run(task: &Task) -> Option<usize> {
    let rest = task.service_name.strip_prefix("e2e-r")?;
    rest.split('-').next()?.parse().ok()
}

/// Follows one manager's store and counts, per run, the tasks committed at ASSIGNED and at
/// RUNNING. Reads only what that manager has applied.
#[derive(Debug, Clone)]
struct TaskTracker {
    state: Arc<Mutex<Tracked>>,
}

impl TaskTracker {
    fn spawn(manager: Manager) -> TaskTracker {
        let state = Arc::new(Mutex::new(Tracked::default()));
        let weak = Arc::downgrade(&state);
        let mut events = manager.store().watch();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = events.recv().await;
                let Some(state) = weak.upgrade() else { return };
                match event {
                    Ok(e) if e.kind == "task" => {
                        let task = manager.store().get::<Task>(&e.id).ok().flatten();
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        match task {
                            Some(t) if !e.deleted => s.apply(&t),
                            _ => {
                                s.tasks.remove(&e.id);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let all = manager.store().list::<Task>().unwrap_or_default();
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        s.lagged += 1;
                        let ids: std::collections::HashSet<&str> =
                            all.iter().map(|t| t.id.as_str()).collect();
                        s.tasks.retain(|id, _| ids.contains(id.as_str()));
                        for t in &all {
                            s.apply(t);
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        TaskTracker { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many of `run`'s tasks reached each point.
    fn counts(&self, run: usize) -> Counts {
        let s = self.lock();
        let get = |m: &HashMap<usize, u64>| m.get(&run).copied().unwrap_or(0);
        Counts { created: get(&s.created), assigned: get(&s.assigned), running: get(&s.running) }
    }

    /// How often the change feed dropped events for this watcher.
    fn lagged(&self) -> u64 {
        self.lock().lagged
    }

    /// Tasks of `run` still in the store.
    fn live(&self, run: usize) -> usize {
        self.lock().tasks.values().filter(|(r, _)| *r == run).count()
    }
}

// --- simulated agents --------------------------------------------------------------------------

/// What the simulated agents did, all together.
#[derive(Debug, Default)]
struct SimStats {
    sessions: AtomicUsize,
    /// Tasks first seen with desired state RUNNING.
    seen: AtomicUsize,
    reports: AtomicUsize,
    /// Assignment streams the manager ended and the agent reopened.
    reopened: AtomicUsize,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl SimStats {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("{e:#}"));
    }

    fn summary(&self) -> String {
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!(
            "{} sessions opened, {} assignment streams reopened, {} tasks started, {} \
             UpdateTaskStatus calls, {} errors{}",
            self.sessions.load(Ordering::Relaxed),
            self.reopened.load(Ordering::Relaxed),
            self.seen.load(Ordering::Relaxed),
            self.reports.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            first.map(|e| format!(" (first: {e})")).unwrap_or_default()
        )
    }
}

/// The simulated agents, each a task of this process.
#[derive(Debug)]
struct SimAgents {
    stats: Arc<SimStats>,
    handles: Vec<JoinHandle<()>>,
}

impl SimAgents {
    /// Joins `n` agents with the worker token (`concurrency` at once), starts each one's
    /// session, and waits until the leader shows them all Ready.
    async fn start(cluster: &E2eCluster, n: usize, concurrency: usize) -> Result<SimAgents> {
        let stats = Arc::new(SimStats::default());
        let addr = cluster.leader_addr()?;
        let gate = Arc::new(Semaphore::new(concurrency));
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            let params = JoinParams {
                token: cluster.worker_token.clone(),
                remote_addr: addr.clone(),
                hostname: format!("sim-{i:04}"),
                advertise_addr: String::new(),
            };
            let gate = gate.clone();
            joins.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                shoal_agent::join(&params).await.with_context(|| format!("agent {i} join"))
            }));
        }
        let mut handles = Vec::with_capacity(n);
        for (i, join) in joins.into_iter().enumerate() {
            let joined = join.await??;
            let agent = SimAgent::new(format!("sim-{i:04}"), joined, addr.clone(), stats.clone())?;
            handles.push(tokio::spawn(agent.run()));
        }
        let agents = SimAgents { stats, handles };
        wait_for("the agents to be Ready", SETUP_TIMEOUT, Duration::from_millis(50), || async {
            Ok((cluster.ready_workers()? >= n).then_some(()))
        })
        .await
        .with_context(|| agents.stats.summary())?;
        Ok(agents)
    }

    fn stop(&self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// One simulated agent: a joined node's identity and what it has reported per task.
struct SimAgent {
    hostname: String,
    tls: Arc<rustls::ClientConfig>,
    addr: String,
    stats: Arc<SimStats>,
    /// Task ID -> the highest state this agent reported (or the manager showed).
    tasks: HashMap<String, i32>,
}

impl SimAgent {
    fn new(
        hostname: String,
        joined: Joined,
        addr: String,
        stats: Arc<SimStats>,
    ) -> Result<SimAgent> {
        let cert = ReloadableCert::new(&joined.cert_chain_pem, &joined.key)?;
        let tls = Arc::new(shoal_pki::tls::client_config(&joined.root_ca_pem, Some(cert))?);
        Ok(SimAgent { hostname, tls, addr, stats, tasks: HashMap::new() })
    }

    /// Keeps a session open, reopening it after a failure.
    async fn run(mut self) {
        loop {
            if let Err(e) = self.session().await {
                self.stats.error(&e);
            }
            let wait = rand::random::<u64>() % 500;
            tokio::time::sleep(Duration::from_millis(100 + wait)).await;
        }
    }

    async fn session(&mut self) -> Result<()> {
        let channel = shoal_proto::dial::connect(&self.addr, self.tls.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        let mut client = DispatcherClient::new(channel);
        let request = SessionRequest {
            hostname: self.hostname.clone(),
            advertise_addr: String::new(),
            description: Some(NodeDescription {
                os: "linux".into(),
                arch: "x86_64".into(),
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
            }),
        };
        let mut session = client.session(request).await?.into_inner();
        let first = session.message().await?.context("the manager closed the session")?;
        let session_id = first.session_id;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let mut period = Duration::from_millis(first.heartbeat_period_ms.max(50));
        let mut next_beat = tokio::time::Instant::now() + period;
        let req = AssignmentsRequest { session_id: session_id.clone() };
        let mut assignments = client.assignments(req.clone()).await?.into_inner();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => {
                    let beat = HeartbeatRequest { session_id: session_id.clone() };
                    let resp = client.heartbeat(beat).await?.into_inner();
                    period = Duration::from_millis(resp.period_ms.max(50));
                    next_beat = tokio::time::Instant::now() + period;
                }
                msg = session.message() => {
                    if msg?.is_none() {
                        bail!("the manager closed the session");
                    }
                }
                msg = assignments.message() => match msg {
                    Ok(Some(m)) => self.on_assignments(&mut client, &session_id, m).await?,
                    // A stream the manager ended (it resyncs, or the node fell behind):
                    // reopen it; the full set comes again.
                    Ok(None) | Err(_) => {
                        self.stats.reopened.fetch_add(1, Ordering::Relaxed);
                        assignments = client.assignments(req.clone()).await?.into_inner();
                    }
                },
            }
        }
    }

    /// Starts every new task whose desired state is RUNNING (ACCEPTED, then RUNNING, each for
    /// the whole batch) and stops those whose desired state is past it.
    async fn on_assignments(
        &mut self,
        client: &mut DispatcherClient<Channel>,
        session_id: &str,
        msg: AssignmentsMessage,
    ) -> Result<()> {
        if msg.complete {
            let ids: std::collections::HashSet<&str> =
                msg.tasks.iter().map(|t| t.id.as_str()).collect();
            self.tasks.retain(|id, _| ids.contains(id.as_str()));
        }
        for id in &msg.removed {
            self.tasks.remove(id);
        }
        let (mut start, mut stop) = (Vec::new(), Vec::new());
        for t in &msg.tasks {
            let shown = t.status.as_ref().map(|s| s.state).unwrap_or(0);
            let known = self.tasks.entry(t.id.clone()).or_insert(shown);
            *known = (*known).max(shown);
            let desired = t.desired_state;
            if desired <= TaskState::Running as i32 && *known < TaskState::Accepted as i32 {
                start.push(t.id.clone());
            } else if desired >= TaskState::Shutdown as i32 && *known < TaskState::Complete as i32 {
                stop.push(t.id.clone());
            }
        }
        for id in &start {
            self.tasks.insert(id.clone(), TaskState::Running as i32);
        }
        for id in &stop {
            self.tasks.insert(id.clone(), TaskState::Shutdown as i32);
        }
        self.stats.seen.fetch_add(start.len(), Ordering::Relaxed);
        // Reports go out beside the loop, as a real agent's do, so heartbeats and further
        // assignments are never held up behind a status write.
        let (mut client, session_id, stats) =
            (client.clone(), session_id.to_string(), self.stats.clone());
        tokio::spawn(async move {
            let steps = [
                (&start, TaskState::Accepted),
                (&start, TaskState::Running),
                (&stop, TaskState::Shutdown),
            ];
            for (ids, state) in steps {
                if ids.is_empty() {
                    continue;
                }
                if let Err(e) = report(&mut client, &session_id, ids, state, &stats).await {
                    stats.error(&e);
                    return;
                }
            }
        });
        Ok(())
    }
}

/// Sends one UpdateTaskStatus with `state` for every task in `ids`.
async fn report(
    client: &mut DispatcherClient<Channel>,
    session_id: &str,
    ids: &[String],
    state: TaskState,
    stats: &SimStats,
) -> Result<()> {
    let now = shoal_proto::time::now_ms();
    let updates = ids
        .iter()
        .map(|id| TaskStatusUpdate {
            task_id: id.clone(),
            status: Some(TaskStatus {
                state: state as i32,
                timestamp_ms: now,
                ..Default::default()
            }),
        })
        .collect();
    let req = UpdateTaskStatusRequest { session_id: session_id.to_string(), updates };
    client.update_task_status(req).await.with_context(|| format!("UpdateTaskStatus {state:?}"))?;
    stats.reports.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, service: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_name: service.into(),
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn each_task_counts_once_per_milestone_of_its_run() {
        let mut t = Tracked::default();
        t.apply(&task("a", "e2e-r0-s1", TaskState::Assigned));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Assigned));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Running));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Accepted));
        t.apply(&task("b", "e2e-r1-s0", TaskState::Running));
        t.apply(&task("c", "someone-else", TaskState::Running));
        assert_eq!((t.created[&0], t.assigned[&0], t.running[&0]), (1, 1, 1));
        assert_eq!((t.created[&1], t.assigned[&1], t.running[&1]), (1, 1, 1));
        assert_eq!(t.tasks.len(), 2, "tasks of other services are not tracked");
    }

    #[test]
    fn runc_state_dirs_name_the_root_and_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("agent/runc/task-1");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("state.json"), r#"{"id":"task-1","init_process_pid":42}"#)
            .unwrap();
        let other = dir.path().join("bundle/x");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("state.json"), "{}").unwrap();
        let found = runc_containers(dir.path());
        assert_eq!(found, vec![(dir.path().join("agent/runc"), "task-1".to_string())]);
    }

    /// The whole e2e path at a small scale: managers, joined agents, services, every task
    /// reported RUNNING, and removal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_cluster_runs_and_removes_every_task() {
        shoal_pki::install_crypto_provider();
        let args = E2eArgs {
            managers: 3,
            agents: 5,
            services: 2,
            replicas: 5,
            runs: 1,
            join_concurrency: 5,
            timeout: 60,
        };
        let cluster = E2eCluster::start(args.managers).await.unwrap();
        let tracker = TaskTracker::spawn(cluster.observer());
        let agents = SimAgents::start(&cluster, args.agents, args.join_concurrency).await.unwrap();
        let mut control = cluster.control().await.unwrap();
        let limit = Duration::from_secs(args.timeout);
        let r = e2e_run(&mut control, &tracker, &agents, &args, 0, limit).await.unwrap();
        assert!(r.assigned <= r.running, "{r:?}");
        assert_eq!(tracker.counts(0).running, 10);
        remove_run(&mut control, &tracker, &args, 0, limit).await.unwrap();
        assert_eq!(tracker.live(0), 0);
        agents.stop();
    }
}
