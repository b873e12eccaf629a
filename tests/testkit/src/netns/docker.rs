//! Docker Swarm on the hosts of a [`Net`]: one `dockerd` started inside each host's network
//! namespace (Debian's `docker.io`), each with its own data root, exec root, pidfile and
//! socket, joined into one swarm whose manager is host 1. For measuring Shoal beside Docker
//! on the same kind of hosts.
//!
//! Never touches a Docker it did not start: no default socket, no default directories; what
//! a `dockerd` creates outside its own directories anyway (see [`RESIDUE`]) is removed
//! afterwards only if it was not there before, no other `dockerd` runs, and it holds nothing
//! but what these daemons make there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::process::{have, quiet, stdout, tail};
use super::{reap_containers, Net};
use crate::poll::blocking::try_eventually;

/// Paths outside its own directories that a `dockerd` creates on its first start.
pub const RESIDUE: &[&str] =
    &["/etc/docker/key.json", "/var/lib/docker", "/run/docker", "/run/containerd"];

/// One `dockerd` inside a host's namespace, everything of it under `dir`.
#[derive(Debug)]
struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

/// A `dockerd` on every host of a [`Net`], in one swarm. Dropping it removes every container,
/// leaves the swarm, stops the daemons and removes what they made; drop it before the `Net`.
#[derive(Debug)]
pub struct DockerSwarm {
    cli: PathBuf,
    daemons: Vec<Dockerd>,
    /// Which of [`RESIDUE`] existed before the first daemon started.
    residue_before: Vec<bool>,
    pub version: String,
    dir: tempfile::TempDir,
}

impl DockerSwarm {
    /// Starts the daemon binary `dockerd` on each host of `net` and forms the swarm,
    /// driven with the CLI `cli`; waits until every node is Ready.
    pub fn start(net: &Net, cli: &Path, dockerd: &Path) -> Result<DockerSwarm> {
        for tool in [cli, dockerd] {
            if !have(&tool.to_string_lossy()) {
                bail!("{} not found (apt-get install docker.io)", tool.display());
            }
        }
        // Short paths: dockerd keeps unix sockets under its exec root (a 108-byte limit).
        let dir = tempfile::Builder::new().prefix("sbd").tempdir_in("/tmp")?;
        let mut swarm = DockerSwarm {
            cli: cli.to_path_buf(),
            daemons: Vec::new(),
            residue_before: RESIDUE.iter().map(|p| Path::new(p).exists()).collect(),
            version: String::new(),
            dir,
        };
        for i in 1..=net.count() {
            let d = swarm.spawn(dockerd, &net.ns(i))?;
            swarm.daemons.push(d);
        }
        for i in 0..net.count() {
            swarm.wait_answering(i)?;
        }
        let version = swarm.docker(0, &["version", "--format", "{{.Server.Version}}"])?;
        swarm.version = version.trim().to_string();
        swarm.form(net)?;
        Ok(swarm)
    }

    fn spawn(&self, dockerd: &Path, ns: &str) -> Result<Dockerd> {
        let dir = self.dir.path().join(self.daemons.len().to_string());
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        // nsenter execs dockerd in place (no fork for a network namespace): the child is it.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(dockerd)
            .arg("--data-root")
            .arg(dir.join("d"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", dockerd.display()))?;
        Ok(Dockerd { dir, socket, child })
    }

    fn wait_answering(&mut self, i: usize) -> Result<()> {
        let log = self.daemons[i].dir.join("dockerd.log");
        let answered = try_eventually("dockerd to answer", Duration::from_secs(60), || {
            if let Ok(Some(status)) = self.daemons[i].child.try_wait() {
                return Ok(Err(format!("dockerd exited ({status})")));
            }
            self.docker_text(i, &["info", "--format", "{{.ID}}"]).map(|_| Ok(()))
        });
        answered.and_then(|r| r).map_err(|e| anyhow!("{e}; its log ends:\n{}", tail(&log, 10)))
    }

    /// `swarm init` on host 1, `swarm join` of the others as workers.
    fn form(&self, net: &Net) -> Result<()> {
        let ip1 = net.ip(1);
        let listen = format!("{ip1}:2377");
        self.docker(0, &["swarm", "init", "--advertise-addr", &ip1, "--listen-addr", &listen])?;
        let token = self.docker(0, &["swarm", "join-token", "-q", "worker"])?;
        for i in 2..=net.count() {
            let ip = net.ip(i);
            let join = ["swarm", "join", "--token", token.trim(), "--advertise-addr", &ip, &listen];
            self.docker(i - 1, &join)?;
        }
        try_eventually("every docker node Ready", Duration::from_secs(60), || {
            let out = self.docker_text(0, &["node", "ls", "--format", "{{.Status}}"])?;
            let ready = out.lines().filter(|l| l.trim() == "Ready").count();
            (ready == net.count()).then_some(()).ok_or(out)
        })
        .map_err(anyhow::Error::msg)
    }

    /// `docker -H <daemon of host i+1> ARGS`: its stdout, or an error with its stderr.
    pub fn docker(&self, i: usize, args: &[&str]) -> Result<String> {
        let host = format!("unix://{}", self.daemons[i].socket.display());
        let out = Command::new(&self.cli)
            .env_remove("DOCKER_HOST")
            .args(["-H", &host])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.cli.display()))?;
        if !out.status.success() {
            bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(stdout(&out))
    }

    /// Like [`DockerSwarm::docker`], with the error as text (for `try_eventually`).
    pub fn docker_text(&self, i: usize, args: &[&str]) -> Result<String, String> {
        self.docker(i, args).map_err(|e| format!("{e:#}"))
    }

    /// The process ID of the `dockerd` of host `i+1`.
    pub fn dockerd_pid(&self, i: usize) -> u32 {
        self.daemons[i].child.id()
    }

    /// Running containers of `service` on the daemon of host `i+1`.
    pub fn containers(&self, i: usize, service: &str) -> Result<Vec<String>> {
        let label = format!("label=com.docker.swarm.service.name={service}");
        let out =
            self.docker(i, &["ps", "-q", "--filter", &label, "--filter", "status=running"])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// The host PID of a container's first process.
    pub fn pid(&self, i: usize, container: &str) -> Result<i32> {
        let pid = self.docker(i, &["inspect", "-f", "{{.State.Pid}}", container])?;
        pid.trim().parse().with_context(|| format!("container PID {pid:?}"))
    }

    /// Removes every container, leaves the swarm (workers first), stops the daemons (SIGTERM,
    /// then SIGKILL), unmounts what they left mounted, and removes [`RESIDUE`] they created.
    fn shutdown(&mut self) {
        for i in 0..self.daemons.len() {
            for id in self.docker(i, &["ps", "-aq"]).unwrap_or_default().split_whitespace() {
                let _ = self.docker(i, &["rm", "-f", id]);
            }
        }
        let mut networks = Vec::new();
        for i in 0..self.daemons.len() {
            let ids = self.docker(i, &["network", "ls", "-q", "--no-trunc"]).unwrap_or_default();
            networks.extend(ids.split_whitespace().map(str::to_string));
        }
        for i in (0..self.daemons.len()).rev() {
            let _ = self.docker(i, &["swarm", "leave", "--force"]);
        }
        for d in self.daemons.iter_mut() {
            stop(&mut d.child, Duration::from_secs(30));
            // What matters here is the unmounting: overlay2 layers, namespace files.
            reap_containers(&d.dir);
        }
        // dockerd 20.10 writes the files of an overlay's load-balancer sandbox under the
        // default data root whatever --data-root says: those of our networks are ours alone.
        for id in networks {
            let _ = std::fs::remove_dir_all(format!("/var/lib/docker/network/files/lb_{id}"));
        }
        self.remove_residue();
    }

    /// Removes the [`RESIDUE`] paths that were not there before, unless another `dockerd`
    /// runs now (it may have made them meanwhile) or they hold files of a kind ours do not
    /// make there.
    fn remove_residue(&self) {
        if let Some(pid) = running_dockerd() {
            eprintln!("note: another dockerd runs (pid {pid}): leaving {RESIDUE:?} as they are");
            return;
        }
        for (path, existed) in RESIDUE.iter().zip(&self.residue_before) {
            let path = Path::new(path);
            if !existed && only_ours(path) {
                let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
            }
        }
    }
}

/// A running `dockerd`, by PID.
fn running_dockerd() -> Option<u32> {
    let procs = std::fs::read_dir("/proc").ok()?;
    procs.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "dockerd").then_some(pid)
    })
}

/// Whether everything under `path` is of a kind the daemons here leave outside their own
/// directories: directories, sockets, the trust key, and the files of the load balancers'
/// sandboxes under `network/files/lb_*`.
fn only_ours(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return true };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else { return false };
        return entries.flatten().all(|e| only_ours(&e.path()));
    }
    let text = path.to_string_lossy();
    !meta.is_file() || text == "/etc/docker/key.json" || text.contains("/network/files/lb_")
}

impl Drop for DockerSwarm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL.
fn stop(child: &mut Child, grace: Duration) {
    quiet("kill", &["-TERM", &child.id().to_string()]);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
