//! `shoal-bench convergence`: how fast a service reaches its replica count on one real node
//! (shoald, tasks in runc) beside Docker Swarm on the same machine. Never changes cluster state it
//! did not create, and never leaves containers behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal::cli::client::{self, Host, TlsFiles};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use shoal_testkit::image::busybox_tar;
use tonic::transport::Channel;

use crate::common::{free_port, load_note, log_tail, median, secs, temp_dir, wait_for};

// ---------------------------------------------------------------------------------------------
// convergence: one node, N replicas of `sleep 3600`

/// Image name both systems import the rootfs as.
const CONV_IMAGE: &str = "shoal-bench/busybox:convergence";
/// How often each side's state is polled while timing.
const POLL: Duration = Duration::from_millis(20);

/// `shoal-bench convergence`.
#[derive(Debug, clap::Args)]
pub struct ConvergenceArgs {
    /// Replicas of the service
    #[arg(long, default_value_t = 50)]
    pub replicas: u64,
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The shoald binary (default: the one next to this shoal-bench)
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
    /// Put the service on an overlay network with a port published on the routing mesh (both
    /// sides): the plumbing's cost on the way to running
    #[arg(long)]
    pub network: bool,
}

/// The target, and the factor Shoal must beat Docker Swarm's time by.
fn goal(network: bool) -> (&'static str, f64) {
    match network {
        true => ("shoal >= 5x faster than Docker Swarm with networks and a published port", 5.0),
        false => ("shoal <= 1/10 of Docker Swarm's time", 10.0),
    }
}

/// The overlay network and published port of `--network` runs.
const CONV_NETWORK: &str = "shoal-bench-conv";
const CONV_PORT: u32 = 18080;
/// Shoal's VXLAN port here (Docker keeps 4789).
const BENCH_DATA_PORT: u32 = 4790;

/// What one convergence run measured.
#[derive(Debug, Clone, Copy)]
struct ConvRun {
    /// Create call to N tasks running.
    running: Duration,
    /// Remove call to no container left.
    removed: Duration,
}

pub(crate) async fn convergence(args: ConvergenceArgs) -> Result<()> {
    let runs = args.runs.max(1);
    let limit = Duration::from_secs(args.timeout.max(10));
    let n = args.replicas.max(1);
    let dir = temp_dir("shoal-bench-conv-")?;
    let tar = busybox_tar(dir.path(), &["sh", "sleep", "true"]).map_err(anyhow::Error::msg)?;
    let mut shoal = match args.skip_shoal {
        true => None,
        false => start_shoal_side(&args, &tar).await,
    };
    let mut docker = match args.skip_docker {
        true => None,
        false => Docker::start(&args.docker, &tar).await,
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let docker_version = docker.as_ref().map(|d| d.version.clone());
    for run in 0..runs {
        if let Some(node) = &shoal {
            match node.converge(run, n, limit, args.network).await {
                Ok(r) => {
                    report_conv_run(run, "shoal", n, &r);
                    ours.push(r);
                }
                Err(e) => {
                    println!("run {}: shoal failed: {e:#}", run + 1);
                    println!("  (shoald log: {})", log_tail(&node.log, 8));
                    if let Some(node) = shoal.take() {
                        node.stop().await;
                    }
                }
            }
        }
        if let Some(d) = &docker {
            match d.converge(run, n, limit, args.network).await {
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
    if let Some(d) = docker {
        d.stop().await;
    }
    print_convergence(n, runs, &ours, &theirs, docker_version.as_deref(), args.network);
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
    network: bool,
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
    let on = if network {
        format!(" --network {CONV_NETWORK} (overlay) --publish {CONV_PORT}:80")
    } else {
        String::new()
    };
    println!(
        "convergence: one node, `service create --replicas {n}{on}` of `/bin/sleep 3600` \
         (busybox-static rootfs imported into each) -> {n} tasks running; medians of {runs} runs"
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
        let (goal, factor) = goal(network);
        println!("  goal: {goal}: {}", if s * factor <= d { "met" } else { "NOT met" });
    } else {
        println!("  goal: {}", goal(network).0);
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
    /// This machine had a Shoal gateway bridge before the bench (then it is left alone).
    gateway_was_here: bool,
    _dir: tempfile::TempDir,
}

/// The node's gateway bridge, as the agent names it.
const GW_BRIDGE: &str = "shoal_gwbridge";

/// Removes the gateway bridge the bench's node made, with its NAT table and FORWARD rules.
async fn remove_gateway() {
    let run = |program: &'static str, args: Vec<String>| async move {
        let _ = tokio::process::Command::new(program)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    };
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    run("ip", words(&format!("link del {GW_BRIDGE}"))).await;
    run("nft", words("delete table ip shoal-gw")).await;
    for rule in [
        format!("-i {GW_BRIDGE} ! -o {GW_BRIDGE} -j ACCEPT"),
        format!("-o {GW_BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-o {GW_BRIDGE} -m conntrack --ctstate DNAT -j ACCEPT"),
    ] {
        run("iptables", words(&format!("-D FORWARD {rule}"))).await;
    }
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
        let gateway_was_here = Path::new("/sys/class/net").join(GW_BRIDGE).exists();
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
        .with_context(|| format!("shoald did not come up: {}", log_tail(&log, 8)))?;
        let node = ShoalNode { child, data, log, channel, gateway_was_here, _dir: dir };
        node.init_swarm().await?;
        node.import(tar).await?;
        Ok(node)
    }

    async fn init_swarm(&self) -> Result<()> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        // Docker's overlay on this same machine holds VXLAN port 4789 with the same VNIs:
        // Shoal's data path moves aside, as an operator running both would do.
        let req = InitRequest {
            listen_addr: addr.clone(),
            advertise_addr: addr,
            data_path_port: BENCH_DATA_PORT,
            ..Default::default()
        };
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

    /// The overlay network of `--network` runs (made once).
    async fn ensure_network(&self) -> Result<()> {
        let all = self.control().list_networks(ListNetworksRequest {}).await?.into_inner();
        if all.networks.iter().any(|n| n.spec.as_ref().is_some_and(|s| s.name == CONV_NETWORK)) {
            return Ok(());
        }
        let spec = NetworkSpec { name: CONV_NETWORK.into(), ..Default::default() };
        let req = CreateNetworkRequest { spec: Some(spec) };
        self.control()
            .create_network(req)
            .await
            .map_err(client::status)
            .context("network create")?;
        Ok(())
    }

    async fn converge(
        &self,
        run: usize,
        n: u64,
        limit: Duration,
        network: bool,
    ) -> Result<ConvRun> {
        let mut spec = sleep_service(&format!("bench-conv-{run}"), CONV_IMAGE, n);
        let mut control = self.control();
        if network {
            self.ensure_network().await?;
            spec.networks =
                vec![NetworkAttachmentConfig { target: CONV_NETWORK.into(), aliases: vec![] }];
            spec.endpoint = Some(EndpointSpec {
                ports: vec![PortConfig {
                    published_port: CONV_PORT,
                    target_port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let start = Instant::now();
        let created = control
            .create_service(CreateServiceRequest { spec: Some(spec), ..Default::default() })
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
        // The networks go while shoald runs, so its node takes down their plumbing (the
        // routing mesh's leg and table included).
        for network in [CONV_NETWORK, "ingress"] {
            let _ = wait_for("network rm", Duration::from_secs(20), POLL, || async {
                let req = RemoveNetworkRequest { reference: network.to_string() };
                match self.control().remove_network(req).await {
                    Ok(_) => Ok(Some(())),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(Some(())),
                    Err(_) => Ok(None),
                }
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
        if !self.gateway_was_here {
            remove_gateway().await;
        }
    }
}

/// A replicated service of `n` × `/bin/sleep 3600`.
pub(crate) fn sleep_service(name: &str, image: &str, n: u64) -> ServiceSpec {
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

    async fn converge(
        &self,
        run: usize,
        n: u64,
        limit: Duration,
        network: bool,
    ) -> Result<ConvRun> {
        let name = format!("shoal-bench-conv-{run}");
        let replicas = n.to_string();
        let publish = format!("{CONV_PORT}:80");
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--quiet",
            "--no-resolve-image",
            "--name",
            &name,
            "--replicas",
            &replicas,
        ];
        if network {
            if self.run(&["network", "inspect", CONV_NETWORK]).await.is_err() {
                self.run(&["network", "create", "-d", "overlay", CONV_NETWORK]).await?;
            }
            args.extend(["--network", CONV_NETWORK, "--publish", &publish]);
        }
        args.extend([self.image_id.as_str(), "/bin/sleep", "3600"]);
        let start = Instant::now();
        let id = self.run(&args).await?.trim().to_string();
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
        let _ = self.run(&["network", "rm", CONV_NETWORK]).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
