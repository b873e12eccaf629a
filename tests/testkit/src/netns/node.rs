//! The node fixture: one `shoald` in a host's namespace, driven with `shoal`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::process::{run, run_within, stdout, text};
use super::table::{all_ready, Info};
use super::{Net, PORT, SHOAL, SHOALD, TIME_SCALE};
use crate::poll::blocking::eventually;

/// One `shoald` in its namespace, with its own data root, socket and log.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// Which host of the [`Net`] it runs on (from 1).
    pub host: usize,
    pub ns: String,
    pub ip: String,
    pub data: PathBuf,
    pub socket: PathBuf,
    /// `--test-time-scale` (divides certificate renewal waits); [`TIME_SCALE`] unless set.
    /// Empty: no such flag (a product `shoald` has no test knobs).
    pub time_scale: String,
    /// The `shoald` to run: this build's ([`SHOALD`]) unless set.
    pub shoald: Option<PathBuf>,
    /// More `shoald` arguments, for the next start (`--advertise-addr` after a move, say).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn new(net: &Net, i: usize, dir: &Path) -> Node {
        Node {
            name: format!("n{i}"),
            host: i,
            ns: net.ns(i),
            ip: net.ip(i),
            data: dir.join(format!("n{i}")),
            socket: dir.join(format!("n{i}.sock")),
            time_scale: TIME_SCALE.to_string(),
            shoald: None,
            args: Vec::new(),
            child: None,
        }
    }

    /// The same node running the product `shoald` at `path` (no test knobs), as the
    /// benchmarks do.
    pub fn with_product_shoald(mut self, path: &Path) -> Node {
        self.shoald = Some(path.to_path_buf());
        self.time_scale = String::new();
        self
    }

    /// The same node with another `--test-time-scale`.
    pub fn with_time_scale(mut self, scale: &str) -> Node {
        self.time_scale = scale.to_string();
        self
    }

    /// The process ID of its shoald, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> PathBuf {
        self.data.join("shoald.log")
    }

    pub fn certs(&self) -> PathBuf {
        self.data.join("certificates")
    }

    /// Starts shoald inside the namespace (nsenter, not `ip netns exec`, which would remount
    /// /sys) and waits until its socket answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_answering();
    }

    /// Starts shoald inside the namespace without waiting for it (to start several at once);
    /// follow with [`Node::wait_answering`].
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(&self.data).unwrap();
        let log = OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns));
        cmd.arg(self.shoald.as_deref().unwrap_or(SHOALD.as_path()));
        if !self.time_scale.is_empty() {
            cmd.args(["--test-time-scale", &self.time_scale]);
        }
        let child = cmd
            .arg("--data-root")
            .arg(&self.data)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--hostname", &self.name])
            .args(["--log-level", "info"])
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting shoald for {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits until the socket of a started shoald answers `shoal info`.
    pub fn wait_answering(&mut self) {
        eventually(&format!("{}'s shoald to answer", self.name), Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{}'s shoald exited at start ({status})", self.name);
            }
            let out = self.shoal(&["info"]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        });
    }

    /// Whether this node's shoald is still running (not exited, not a zombie).
    pub fn running(&self) -> bool {
        let Some(child) = self.child.as_ref() else { return false };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        // The state follows the command name in parentheses: R, S, D... or Z once exited.
        stat.ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Kills shoald with SIGKILL (no goodbye to the manager).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where this node's `shoal` keeps registry logins (`SHOAL_CONFIG`), not root's
    /// `~/.shoal`.
    pub fn cli_config(&self) -> PathBuf {
        self.data.join("cli")
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(&*SHOAL);
        cmd.env_remove("SHOAL_HOST")
            .env("SHOAL_CONFIG", self.cli_config())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    /// `shoal -H unix://<socket> ARGS`.
    pub fn shoal(&self, args: &[&str]) -> Output {
        let mut cmd = self.cli();
        cmd.args(args);
        run(cmd)
    }

    /// Like [`Node::shoal`], with these environment variables set.
    pub fn shoal_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cli();
        cmd.args(args).envs(env.iter().copied());
        run(cmd)
    }

    /// Like [`Node::shoal`], with `input` on standard input (`login --password-stdin`).
    pub fn shoal_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting shoal");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing stdin");
        child.wait_with_output().expect("waiting for shoal")
    }

    /// Like [`Node::shoal`], but a command that takes longer than `timeout` is killed and
    /// reported as an error instead of failing the test.
    pub fn shoal_within(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = self.cli();
        cmd.args(args);
        run_within(cmd, timeout)
    }

    /// Like [`Node::shoal`], but panics with stdout and stderr if the command fails.
    pub fn must_shoal(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "`shoal {}` on {} failed:\n{}",
            args.join(" "),
            self.name,
            text(&out)
        );
        stdout(&out)
    }

    /// `shoal ARGS` run inside this node's namespace (for tcp:// hosts).
    pub fn shoal_in_ns(&self, args: &[String]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.env_remove("SHOAL_HOST").arg(format!("--net=/run/netns/{}", self.ns)).arg(&*SHOAL);
        cmd.args(args);
        run(cmd)
    }

    /// `shoal info`, as key/value pairs.
    pub fn info(&self) -> Info {
        Info(self.must_shoal(&["info"]))
    }

    /// `swarm init` here, listening and advertising on this host's address, heartbeat 1 s.
    pub fn init_swarm(&self) {
        let listen = format!("{}:{PORT}", self.ip);
        let args = ["swarm", "init", "--advertise-addr", &self.ip, "--listen-addr", &listen];
        self.must_shoal(&[&args[..], &["--dispatcher-heartbeat", "1s"]].concat());
    }

    pub fn join(&self, token: &str, manager: &str) -> Output {
        self.shoal(&["swarm", "join", "--token", token, "--advertise-addr", &self.ip, manager])
    }

    /// `swarm join` that also listens on this host's cluster port (what a manager needs).
    pub fn join_listening(&self, token: &str, manager: &str) -> Output {
        let listen = format!("{}:{PORT}", self.ip);
        let args = ["swarm", "join", "--token", token, "--advertise-addr", &self.ip];
        self.shoal(&[&args[..], &["--listen-addr", &listen, manager]].concat())
    }

    /// `shoal -H tcp://MANAGER node ls` with the TLS files of `files_of`, run here.
    pub fn remote_node_ls(&self, manager: &str, files_of: &Node) -> Output {
        let certs = files_of.certs();
        let args: Vec<String> = vec![
            "-H".into(),
            format!("tcp://{manager}"),
            "--tlscacert".into(),
            certs.join("root-ca.crt").display().to_string(),
            "--tlscert".into(),
            certs.join("node.crt").display().to_string(),
            "--tlskey".into(),
            certs.join("node.pem").display().to_string(),
            "node".into(),
            "ls".into(),
        ];
        self.shoal_in_ns(&args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        reap_containers(&self.data);
    }
}

/// Removes the network namespaces (tasks' and overlay sandboxes') of the nodes under `dir`:
/// each node's data plane names its own after the tag it writes to `…/net/tag`.
pub fn reap_namespaces(dir: &Path) {
    let Ok(found) = Command::new("find")
        .arg(dir)
        .args(["-maxdepth", "4", "-type", "f", "-path", "*/net/tag"])
        .output()
    else {
        return;
    };
    for tag_file in String::from_utf8_lossy(&found.stdout).lines() {
        let tag = std::fs::read_to_string(tag_file).unwrap_or_default();
        let prefix = format!("shoal-{}-", tag.trim());
        if tag.trim().is_empty() {
            continue;
        }
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }
}

/// Removes what a killed node's containers left behind under `dir`: the containers themselves
/// (they outlive a SIGKILLed shoald, as they should) and their rootfs mounts.
pub fn reap_containers(dir: &Path) {
    let Ok(found) = Command::new("find")
        .arg(dir)
        .args(["-maxdepth", "4", "-type", "d", "-name", "runc"])
        .output()
    else {
        return;
    };
    for root in String::from_utf8_lossy(&found.stdout).lines() {
        let list = Command::new("runc").args(["--root", root, "list", "-q"]).output();
        let Ok(list) = list else { continue };
        for id in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = Command::new("runc").args(["--root", root, "delete", "--force", id]).output();
        }
    }
    reap_namespaces(dir);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).output();
    }
}

impl Node {
    /// Starts this node, imports the image at `tar` as `image`, and makes it a swarm of its own
    /// (`swarm init`), waiting until it is Ready.
    pub fn start_alone_with_image(&mut self, tar: &Path, image: &str) {
        self.start();
        self.must_shoal(&["image", "import", &tar.to_string_lossy(), image]);
        self.must_shoal(&["swarm", "init", "--advertise-addr", &self.ip.clone()]);
        let name = self.name.clone();
        eventually(&format!("{name} Ready"), Duration::from_secs(30), || {
            all_ready(self, &[name.as_str()])
        });
    }

    /// `shoal secret create NAME -` with `value` on stdin; panics with the output if it fails.
    pub fn must_create_secret(&self, name: &str, value: &str) {
        use std::io::Write;
        let mut child = Command::new(&*SHOAL)
            .env_remove("SHOAL_HOST")
            .args(["-H", &format!("unix://{}", self.socket.display()), "secret", "create"])
            .args([name, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "secret create {name}: {}", text(&out));
    }
}

/// A node's data plane, as tests look at it from the host.
impl Node {
    /// The tag the node's data plane names its namespaces after (`shoal-<tag>-…`).
    pub fn net_tag(&self) -> String {
        std::fs::read_to_string(self.data.join("net").join("tag"))
            .unwrap_or_else(|e| panic!("{}: no data-plane tag: {e}", self.name))
            .trim()
            .to_string()
    }

    /// The named namespaces of the node's data plane (its tasks' and its sandboxes').
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("shoal-{}-", self.net_tag());
        let names = std::fs::read_dir("/run/netns").into_iter().flatten().flatten();
        names
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect()
    }

    /// The namespace of this node's task whose ID starts with `id`.
    pub fn task_namespace(&self, id: &str) -> String {
        let prefix = format!("shoal-{}-", self.net_tag());
        self.namespaces()
            .into_iter()
            .find(|name| name[prefix.len()..].starts_with(id))
            .unwrap_or_else(|| panic!("no namespace for task {id} on {}", self.name))
    }

    /// SIGKILLs every process of this node's task whose ID starts with `id`.
    pub fn kill_task(&self, id: &str) {
        let ns = self.task_namespace(id);
        let out = Command::new("ip").args(["netns", "pids", &ns]).output().unwrap();
        let pids = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!pids.trim().is_empty(), "task {id} on {} runs no process", self.name);
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}
