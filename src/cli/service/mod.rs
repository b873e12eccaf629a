//! Owns `shoal service …` and `shoal node update`: Docker's flags turned into service specs,
//! the listings, and the live convergence display of create/update/scale/rollback.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::spec::secret::check_mode;
use shoal_proto::spec::service::{default_update, task_part, DEFAULT_RESTART_DELAY_MS};
use shoal_proto::*;
use tonic::transport::Channel;

use crate::cli::client;
use crate::cli::parse_duration;

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service
    Create(Box<CreateArgs>),
    /// List services
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of services
    Ps {
        /// Show only tasks whose desired state is running
        #[arg(long)]
        running: bool,
        /// Do not truncate IDs and errors
        #[arg(long)]
        no_trunc: bool,
        /// Print task IDs only
        #[arg(short, long)]
        quiet: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show details of services (JSON)
    Inspect {
        /// Human-readable output instead of JSON
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Fetch the logs of a service's tasks
    Logs {
        /// Keep streaming new lines
        #[arg(short, long)]
        follow: bool,
        /// Lines to show from the end of each task's log ("all" for everything)
        #[arg(long, default_value = "all")]
        tail: String,
        service: String,
    },
    /// Set the replica count of services: SERVICE=REPLICAS …
    Scale {
        /// Do not wait for the services to converge
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Update a service (a rolling update when its tasks change)
    Update(Box<UpdateArgs>),
    /// Go back to a service's previous spec
    Rollback {
        /// Do not wait for the service to converge
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// Remove services
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Flags shared by `service create` and `service update`.
#[derive(Debug, Args, Default)]
pub struct SpecFlags {
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Maximum tasks of the service per node (0: no limit)
    #[arg(long = "replicas-max-per-node")]
    pub max_per_node: Option<u64>,
    /// Memory reserved for each task (e.g. 64m, 1g)
    #[arg(long, value_parser = parse_bytes)]
    pub reserve_memory: Option<i64>,
    /// Memory limit of each task
    #[arg(long, value_parser = parse_bytes)]
    pub limit_memory: Option<i64>,
    /// CPUs reserved for each task (e.g. 0.5)
    #[arg(long, value_parser = parse_cpus)]
    pub reserve_cpu: Option<i64>,
    /// CPU limit of each task
    #[arg(long, value_parser = parse_cpus)]
    pub limit_cpu: Option<i64>,
    /// Maximum processes in each task
    #[arg(long = "limit-pids")]
    pub limit_pids: Option<i64>,
    /// Restart when a task ends: any, on-failure or none
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Wait between restarts (e.g. 5s)
    #[arg(long, value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Give up restarting after this many attempts (0: never)
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Count restart attempts over this window
    #[arg(long, value_parser = parse_duration)]
    pub restart_window: Option<Duration>,
    /// Tasks updated at once (0: all)
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Wait between updating groups of tasks
    #[arg(long, value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// On update failure: pause, continue or rollback
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// stop-first or start-first
    #[arg(long)]
    pub update_order: Option<String>,
    /// Watch each updated task this long for failure
    #[arg(long, value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Failure ratio tolerated during an update (0 to 1)
    #[arg(long)]
    pub update_max_failure_ratio: Option<f32>,
    /// Tasks rolled back at once (0: all)
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Wait between rolling back groups of tasks
    #[arg(long, value_parser = parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// On rollback failure: pause or continue
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// stop-first or start-first
    #[arg(long)]
    pub rollback_order: Option<String>,
    /// Watch each rolled-back task this long for failure
    #[arg(long, value_parser = parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// Failure ratio tolerated during a rollback
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Mount the container's root filesystem read-only
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Run container root as an unprivileged host user (user-namespace remapping)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub userns: Option<bool>,
    /// Run an init process as PID 1 that reaps zombies and forwards signals
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub init: Option<bool>,
    /// seccomp=default|unconfined|PROFILE.json, no-new-privileges=true|false, landlock=on|off
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Command run in the container to check health (exit 0: healthy)
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks
    #[arg(long, value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Longest a health check may run
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures that make a task unhealthy
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Grace period after start before failures count
    #[arg(long, value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,
    /// Disable the health check
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// uid[:gid] to run as
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Signal that stops a task
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Time to wait after the stop signal before killing
    #[arg(long, value_parser = parse_duration)]
    pub stop_grace_period: Option<Duration>,
    /// Replace the image's entrypoint (a command line, split on spaces)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Do not wait for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Print the service ID only
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// replicated or global
    #[arg(long, default_value = "replicated")]
    pub mode: String,
    /// Environment variables (KEY=VALUE)
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Service labels (KEY=VALUE)
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Placement constraints (node.labels.zone==east, node.role!=manager, …)
    #[arg(long)]
    pub constraint: Vec<String>,
    /// Placement preferences (spread=node.labels.zone)
    #[arg(long)]
    pub placement_pref: Vec<String>,
    /// Capabilities to add (the node must allow them)
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Capabilities to drop
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Kernel parameters (KEY=VALUE)
    #[arg(long)]
    pub sysctl: Vec<String>,
    /// Resource limits (nofile=1024:2048)
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// Secrets the tasks may read: NAME or source=NAME,target=T,uid=U,gid=G,mode=0400[,follow]
    #[arg(long)]
    pub secret: Vec<String>,
    /// Configs the tasks may read: NAME or source=NAME,target=/PATH,uid=U,gid=G,mode=0444[,follow]
    #[arg(long)]
    pub config: Vec<String>,
    #[command(flatten)]
    pub flags: SpecFlags,
    /// Image name (as loaded with 'shoal image load' or 'image import')
    pub image: String,
    /// Command arguments (replace the image's CMD)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// New image
    #[arg(long)]
    pub image: Option<String>,
    /// New command arguments (a command line, split on spaces)
    #[arg(long)]
    pub args: Option<String>,
    #[arg(long)]
    pub env_add: Vec<String>,
    #[arg(long)]
    pub env_rm: Vec<String>,
    #[arg(long)]
    pub label_add: Vec<String>,
    #[arg(long)]
    pub label_rm: Vec<String>,
    #[arg(long)]
    pub constraint_add: Vec<String>,
    #[arg(long)]
    pub constraint_rm: Vec<String>,
    #[arg(long)]
    pub placement_pref_add: Vec<String>,
    #[arg(long)]
    pub placement_pref_rm: Vec<String>,
    #[arg(long)]
    pub cap_add: Vec<String>,
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Add or replace a secret (same forms as service create --secret)
    #[arg(long)]
    pub secret_add: Vec<String>,
    /// Remove a secret (its name)
    #[arg(long)]
    pub secret_rm: Vec<String>,
    /// Add or replace a config (same forms as service create --config)
    #[arg(long)]
    pub config_add: Vec<String>,
    /// Remove a config (its name)
    #[arg(long)]
    pub config_rm: Vec<String>,
    /// Replace every task even if nothing changed
    #[arg(long)]
    pub force: bool,
    /// Go back to the previous spec
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub flags: SpecFlags,
    pub service: String,
}

/// `node update` arguments.
#[derive(Debug, Args)]
pub struct NodeUpdateArgs {
    /// active, pause or drain
    #[arg(long)]
    pub availability: Option<String>,
    /// Labels to add or change (key=value)
    #[arg(long)]
    pub label_add: Vec<String>,
    /// Labels to remove
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// A new hostname (a node's own hostname is fixed at join; only an operator changes it)
    #[arg(long)]
    pub hostname: Option<String>,
    pub node: String,
}

/// Parses sizes like Docker's flags: `64m`, `1g`, `512k`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}: use e.g. 64m, 1g"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("invalid size {s:?}: must not be negative"));
    }
    Ok((n * mult as f64) as i64)
}

/// Parses CPU counts (`0.5`, `2`) into nano-CPUs.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let n: f64 = s.trim().parse().map_err(|_| format!("invalid CPU count {s:?}: use e.g. 0.5"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("invalid CPU count {s:?}: must not be negative"));
    }
    Ok((n * 1e9) as i64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn restart_condition(s: &str) -> Result<RestartCondition> {
    Ok(match s {
        "any" => RestartCondition::Any,
        "on-failure" => RestartCondition::OnFailure,
        "none" => RestartCondition::None,
        o => bail!("invalid restart condition {o:?}: use any, on-failure or none"),
    })
}

fn failure_action(s: &str) -> Result<FailureAction> {
    Ok(match s {
        "pause" => FailureAction::Pause,
        "continue" => FailureAction::Continue,
        "rollback" => FailureAction::Rollback,
        o => bail!("invalid failure action {o:?}: use pause, continue or rollback"),
    })
}

fn update_order(s: &str) -> Result<UpdateOrder> {
    Ok(match s {
        "stop-first" => UpdateOrder::StopFirst,
        "start-first" => UpdateOrder::StartFirst,
        o => bail!("invalid update order {o:?}: use stop-first or start-first"),
    })
}

fn split_kv(list: &[String], what: &str) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid {what} {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn parse_ulimit(s: &str) -> Result<Ulimit> {
    let bad = || anyhow::anyhow!("invalid ulimit {s:?}: expected NAME=SOFT[:HARD]");
    let (name, vals) = s.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    Ok(Ulimit {
        name: name.to_string(),
        soft: soft.parse().map_err(|_| bad())?,
        hard: hard.parse().map_err(|_| bad())?,
    })
}

/// `--secret`/`--config`: `NAME`, or `source=NAME,target=T,uid=U,gid=G,mode=0400[,follow]`
/// (the mode is octal; `follow` moves the service to each new version of the secret).
pub fn parse_secret_ref(s: &str) -> Result<SecretReference> {
    let mut r = SecretReference::default();
    if !s.contains('=') && !s.contains(',') {
        r.secret_name = s.to_string();
        return Ok(r);
    }
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let id =
            |v: &str| v.parse::<u32>().map_err(|_| anyhow::anyhow!("invalid {k} {v:?} in {s:?}"));
        match k.trim() {
            "source" | "src" => r.secret_name = v.to_string(),
            "target" => r.target = v.to_string(),
            "uid" => r.uid = id(v)?,
            "gid" => r.gid = id(v)?,
            "mode" => r.mode = parse_mode(v).with_context(|| format!("in {s:?}"))?,
            "follow" => {
                r.follow = match v {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        bail!("invalid follow {v:?} in {s:?}: follow, follow=true or follow=false")
                    }
                }
            }
            _ => bail!(
                "invalid option {part:?} in {s:?}: use source, target, uid, gid, mode or follow"
            ),
        }
    }
    if r.secret_name.is_empty() {
        bail!("{s:?} names no source: use NAME or source=NAME,…");
    }
    Ok(r)
}

/// A file mode in octal (`0400`, `400`, `0o400`).
pub fn parse_mode(v: &str) -> Result<u32> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if check_mode(m).is_ok() && !digits.is_empty() => Ok(m),
        _ => bail!("invalid mode {v:?}: use octal, like 0400"),
    }
}

/// `--secret-rm` then `--secret-add`: an added reference replaces one of the same name.
fn edit_refs(list: &mut Vec<SecretReference>, add: &[String], rm: &[String]) -> Result<()> {
    let add: Vec<SecretReference> =
        add.iter().map(|a| parse_secret_ref(a)).collect::<Result<_>>()?;
    list.retain(|r| {
        let named = |n: &String| *n == r.secret_name || *n == r.secret_id;
        !rm.iter().any(named) && !add.iter().any(|a| a.secret_name == r.secret_name)
    });
    list.extend(add);
    Ok(())
}

fn pref(p: &str) -> Result<String> {
    match p.split_once('=') {
        Some(("spread", label)) if !label.is_empty() => Ok(label.to_string()),
        _ => bail!("invalid placement preference {p:?}: use spread=node.labels.NAME"),
    }
}

impl SpecFlags {
    /// Applies the flags that were given to `spec`.
    fn apply(&self, spec: &mut ServiceSpec) -> Result<()> {
        let c = spec.container.get_or_insert_with(Default::default);
        if let Some(v) = self.replicas {
            spec.replicas = v;
        }
        let placement = spec.placement.get_or_insert_with(Default::default);
        if let Some(v) = self.max_per_node {
            placement.max_replicas_per_node = v;
        }
        let res = spec.resources.get_or_insert_with(Default::default);
        let limits = res.limits.get_or_insert_with(Default::default);
        if let Some(v) = self.limit_memory {
            limits.memory_bytes = v;
        }
        if let Some(v) = self.limit_cpu {
            limits.nano_cpus = v;
        }
        let reserve = res.reservations.get_or_insert_with(Default::default);
        if let Some(v) = self.reserve_memory {
            reserve.memory_bytes = v;
        }
        if let Some(v) = self.reserve_cpu {
            reserve.nano_cpus = v;
        }
        if let Some(v) = self.limit_pids {
            c.pids_limit = v;
        }
        let restart = spec.restart.get_or_insert(RestartPolicy {
            delay_ms: DEFAULT_RESTART_DELAY_MS,
            ..Default::default()
        });
        if let Some(v) = &self.restart_condition {
            restart.set_condition(restart_condition(v)?);
        }
        if let Some(v) = self.restart_delay {
            restart.delay_ms = ms(v);
        }
        if let Some(v) = self.restart_max_attempts {
            restart.max_attempts = v;
        }
        if let Some(v) = self.restart_window {
            restart.window_ms = ms(v);
        }
        let u = spec.update.get_or_insert_with(default_update);
        apply_update(
            u,
            (self.update_parallelism, self.update_delay, &self.update_failure_action),
            (&self.update_order, self.update_monitor, self.update_max_failure_ratio),
        )?;
        let r = spec.rollback.get_or_insert_with(default_update);
        apply_update(
            r,
            (self.rollback_parallelism, self.rollback_delay, &self.rollback_failure_action),
            (&self.rollback_order, self.rollback_monitor, self.rollback_max_failure_ratio),
        )?;
        if r.failure_action() == FailureAction::Rollback {
            bail!("a rollback cannot itself roll back: use --rollback-failure-action pause or continue");
        }
        if let Some(v) = self.read_only {
            c.read_only = v;
        }
        if let Some(v) = self.userns {
            c.userns = v;
        }
        if let Some(v) = self.init {
            c.init = v;
        }
        for opt in &self.security_opt {
            match opt.split_once(['=', ':']) {
                Some(("seccomp", "default")) => c.seccomp = String::new(),
                Some(("seccomp", "unconfined")) => c.seccomp = "unconfined".into(),
                Some(("seccomp", path)) => {
                    c.seccomp = std::fs::read_to_string(path)
                        .with_context(|| format!("reading seccomp profile {path}"))?;
                }
                Some(("no-new-privileges", v)) => {
                    c.allow_new_privileges = match v {
                        "true" => false,
                        "false" => true,
                        _ => bail!("invalid --security-opt {opt:?}: no-new-privileges=true|false"),
                    }
                }
                Some(("landlock", v)) => {
                    c.landlock_off = match v {
                        "on" => false,
                        "off" => true,
                        _ => bail!("invalid --security-opt {opt:?}: landlock=on|off"),
                    }
                }
                _ => bail!(
                    "unsupported --security-opt {opt:?}: use seccomp=default|unconfined|PROFILE.json, no-new-privileges=true|false or landlock=on|off"
                ),
            }
        }
        if self.no_healthcheck {
            c.healthcheck = None;
        }
        let touches_health = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if touches_health && !self.no_healthcheck {
            let h = c.healthcheck.get_or_insert_with(Default::default);
            if let Some(cmd) = &self.health_cmd {
                h.test = vec!["CMD-SHELL".into(), cmd.clone()];
            }
            if let Some(v) = self.health_interval {
                h.interval_ms = ms(v);
            }
            if let Some(v) = self.health_timeout {
                h.timeout_ms = ms(v);
            }
            if let Some(v) = self.health_retries {
                h.retries = v;
            }
            if let Some(v) = self.health_start_period {
                h.start_period_ms = ms(v);
            }
        }
        if let Some(v) = &self.workdir {
            c.workdir = v.clone();
        }
        if let Some(v) = &self.user {
            c.user = v.clone();
        }
        if let Some(v) = &self.hostname {
            c.hostname = v.clone();
        }
        if let Some(v) = &self.stop_signal {
            c.stop_signal = v.clone();
        }
        if let Some(v) = self.stop_grace_period {
            c.stop_grace_ms = ms(v);
        }
        if let Some(v) = &self.entrypoint {
            c.command = v.split_whitespace().map(String::from).collect();
        }
        Ok(())
    }
}

type UpdateFlags<'a> = (Option<u64>, Option<Duration>, &'a Option<String>);
type UpdateFlags2<'a> = (&'a Option<String>, Option<Duration>, Option<f32>);

fn apply_update(u: &mut UpdateConfig, a: UpdateFlags<'_>, b: UpdateFlags2<'_>) -> Result<()> {
    if let Some(v) = a.0 {
        u.parallelism = v;
    }
    if let Some(v) = a.1 {
        u.delay_ms = ms(v);
    }
    if let Some(v) = a.2 {
        u.set_failure_action(failure_action(v)?);
    }
    if let Some(v) = b.0 {
        u.set_order(update_order(v)?);
    }
    if let Some(v) = b.1 {
        u.monitor_ms = ms(v);
    }
    if let Some(v) = b.2 {
        if !(0.0..=1.0).contains(&v) {
            bail!("invalid max failure ratio {v}: must be between 0 and 1");
        }
        u.max_failure_ratio = v;
    }
    Ok(())
}

/// The image digest as the local node knows it, to pin the service to it.
pub(crate) async fn pin_image(channel: &Channel, image: &str) -> Option<String> {
    let list = DaemonClient::new(channel.clone()).image_ls(ImageLsRequest {}).await.ok()?;
    let want = if image.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    list.into_inner()
        .images
        .into_iter()
        .find(|i| {
            i.id == image
                || i.id.starts_with(image)
                || i.names.iter().any(|n| *n == want || n == image)
        })
        .map(|i| i.id)
}

/// Runs one `service` command.
pub async fn run(cmd: ServiceCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel.clone());
    match cmd {
        ServiceCmd::Create(a) => create(*a, &channel, &mut control).await,
        ServiceCmd::Ls { quiet } => {
            let r = control.list_services(ListServicesRequest {}).await.map_err(client::status)?;
            print!("{}", service_ls(&r.into_inner(), quiet));
            Ok(())
        }
        ServiceCmd::Ps { running, no_trunc, quiet, services } => {
            for service in services {
                let r = control
                    .list_tasks(ListTasksRequest {
                        service,
                        node: String::new(),
                        desired_running: running,
                    })
                    .await
                    .map_err(client::status)?;
                print!("{}", service_ps(&r.into_inner(), no_trunc, quiet));
            }
            Ok(())
        }
        ServiceCmd::Inspect { pretty, services } => {
            let mut all = Vec::new();
            for reference in services {
                let r = control
                    .get_service(GetServiceRequest { reference })
                    .await
                    .map_err(client::status)?;
                all.push(r.into_inner().service.context("the manager returned no service")?);
            }
            if pretty {
                for s in &all {
                    print!("{}", service_pretty(s));
                }
            } else {
                let json: Vec<_> = all.iter().map(service_json).collect();
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
            Ok(())
        }
        ServiceCmd::Logs { follow, tail, service } => {
            logs(&mut control, service, follow, &tail).await
        }
        ServiceCmd::Scale { detach, pairs } => {
            let mut targets = Vec::new();
            for p in &pairs {
                let Some((name, n)) = p.split_once('=') else {
                    bail!("invalid scale target {p:?}: use SERVICE=REPLICAS")
                };
                let n: u64 =
                    n.parse().map_err(|_| anyhow::anyhow!("invalid replica count in {p:?}"))?;
                targets.push((name.to_string(), n));
            }
            for (name, n) in targets {
                let s = get(&mut control, &name).await?;
                let mut spec = s.spec.clone().unwrap_or_default();
                if spec.mode() == ServiceMode::Global {
                    bail!("{name} is a global service; only replicated services can be scaled");
                }
                spec.replicas = n;
                let version = s.meta.as_ref().map(|m| m.version).unwrap_or(0);
                let r = control
                    .update_service(UpdateServiceRequest {
                        reference: s.id.clone(),
                        spec: Some(spec),
                        version,
                        ..Default::default()
                    })
                    .await
                    .map_err(client::status)?;
                println!("{name} scaled to {n}");
                if !detach {
                    converge(&mut control, &r.into_inner().service.unwrap_or(s)).await?;
                }
            }
            Ok(())
        }
        ServiceCmd::Update(a) => update(*a, &channel, &mut control).await,
        ServiceCmd::Rollback { detach, service } => {
            let r = control
                .update_service(UpdateServiceRequest {
                    reference: service.clone(),
                    rollback: true,
                    ..Default::default()
                })
                .await
                .map_err(client::status)?;
            let s = r.into_inner().service.context("the manager returned no service")?;
            println!("{service}: rollback started");
            if !detach {
                converge(&mut control, &s).await?;
            }
            Ok(())
        }
        ServiceCmd::Rm { services } => {
            for reference in services {
                let r = control
                    .remove_service(RemoveServiceRequest { reference })
                    .await
                    .map_err(client::status)?;
                println!("{}", r.into_inner().name);
            }
            Ok(())
        }
    }
}

async fn get(control: &mut ControlClient<Channel>, reference: &str) -> Result<Service> {
    let r = control
        .get_service(GetServiceRequest { reference: reference.to_string() })
        .await
        .map_err(client::status)?;
    r.into_inner().service.context("the manager returned no service")
}

async fn create(
    a: CreateArgs,
    channel: &Channel,
    control: &mut ControlClient<Channel>,
) -> Result<()> {
    let mode = match a.mode.as_str() {
        "replicated" => ServiceMode::Replicated,
        "global" => ServiceMode::Global,
        o => bail!("invalid mode {o:?}: use replicated or global"),
    };
    if mode == ServiceMode::Global && a.flags.replicas.is_some() {
        bail!("--replicas cannot be used with --mode global");
    }
    let mut spec = ServiceSpec {
        name: a.name.clone().unwrap_or_default(),
        labels: split_kv(&a.label, "label")?.into_iter().collect(),
        mode: mode as i32,
        replicas: 1,
        container: Some(ContainerSpec {
            image: a.image.clone(),
            image_digest: pin_image(channel, &a.image).await.unwrap_or_default(),
            args: a.args.clone(),
            env: a.env.clone(),
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            sysctls: split_kv(&a.sysctl, "sysctl")?.into_iter().collect(),
            ulimits: a.ulimit.iter().map(|u| parse_ulimit(u)).collect::<Result<_>>()?,
            secrets: a.secret.iter().map(|r| parse_secret_ref(r)).collect::<Result<_>>()?,
            configs: a.config.iter().map(|r| parse_secret_ref(r)).collect::<Result<_>>()?,
            ..Default::default()
        }),
        placement: Some(Placement {
            constraints: a.constraint.clone(),
            spread: a.placement_pref.iter().map(|p| pref(p)).collect::<Result<_>>()?,
            max_replicas_per_node: 0,
        }),
        ..Default::default()
    };
    if spec.container.as_ref().is_some_and(|c| c.image_digest.is_empty()) {
        eprintln!(
            "warning: image {} is not on this node, so the service is not pinned to a digest; each node uses its own {}",
            a.image, a.image
        );
    }
    a.flags.apply(&mut spec)?;
    let r = control
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(client::status)?;
    let s = r.into_inner().service.context("the manager returned no service")?;
    println!("{}", s.id);
    if !a.flags.detach {
        converge(control, &s).await?;
    }
    Ok(())
}

fn edit_list(list: &mut Vec<String>, add: &[String], rm: &[String], key: impl Fn(&str) -> &str) {
    list.retain(|e| !rm.iter().any(|r| key(e) == key(r)) && !add.iter().any(|a| key(e) == key(a)));
    list.extend(add.iter().cloned());
}

async fn update(
    a: UpdateArgs,
    channel: &Channel,
    control: &mut ControlClient<Channel>,
) -> Result<()> {
    if a.rollback {
        return Box::pin(run(
            ServiceCmd::Rollback { detach: a.flags.detach, service: a.service },
            channel.clone(),
        ))
        .await;
    }
    let s = get(control, &a.service).await?;
    let mut spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.get_or_insert_with(Default::default);
    if let Some(image) = &a.image {
        c.image = image.clone();
        c.image_digest = pin_image(channel, image).await.unwrap_or_default();
    }
    if let Some(args) = &a.args {
        c.args = args.split_whitespace().map(String::from).collect();
    }
    let env_key = |e: &str| e.split('=').next().unwrap_or(e).to_string();
    let env_rm: Vec<String> = a.env_rm.iter().map(|e| env_key(e)).collect();
    c.env.retain(|e| !env_rm.contains(&env_key(e)));
    edit_list(&mut c.env, &a.env_add, &[], |e| e.split('=').next().unwrap_or(e));
    edit_list(&mut c.cap_add, &a.cap_add, &a.cap_drop, |e| e);
    edit_refs(&mut c.secrets, &a.secret_add, &a.secret_rm)?;
    edit_refs(&mut c.configs, &a.config_add, &a.config_rm)?;
    c.cap_drop.retain(|d| !a.cap_add.contains(d));
    for d in &a.cap_drop {
        if !c.cap_drop.contains(d)
            && !s
                .spec
                .as_ref()
                .and_then(|p| p.container.as_ref())
                .is_some_and(|c| c.cap_add.contains(d))
        {
            c.cap_drop.push(d.clone());
        }
    }
    for (k, v) in split_kv(&a.label_add, "label")? {
        spec.labels.insert(k, v);
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    let placement = spec.placement.get_or_insert_with(Default::default);
    edit_list(&mut placement.constraints, &a.constraint_add, &a.constraint_rm, |e| e);
    let prefs_add: Vec<String> =
        a.placement_pref_add.iter().map(|p| pref(p)).collect::<Result<_>>()?;
    let prefs_rm: Vec<String> =
        a.placement_pref_rm.iter().map(|p| pref(p)).collect::<Result<_>>()?;
    edit_list(&mut placement.spread, &prefs_add, &prefs_rm, |e| e);
    a.flags.apply(&mut spec)?;
    let version = s.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let r = control
        .update_service(UpdateServiceRequest {
            reference: s.id.clone(),
            spec: Some(spec),
            version,
            rollback: false,
            force: a.force,
        })
        .await
        .map_err(client::status)?;
    let s = r.into_inner().service.context("the manager returned no service")?;
    println!("{}", s.spec.as_ref().map(|p| p.name.as_str()).unwrap_or(&s.id));
    if !a.flags.detach {
        converge(control, &s).await?;
    }
    Ok(())
}

/// Runs one `node update`.
pub async fn node_update(a: NodeUpdateArgs, channel: Channel) -> Result<()> {
    let availability = match a.availability.as_deref() {
        None => None,
        Some("active") => Some(Availability::Active as i32),
        Some("pause") => Some(Availability::Pause as i32),
        Some("drain") => Some(Availability::Drain as i32),
        Some(o) => bail!("invalid availability {o:?}: use active, pause or drain"),
    };
    let r = ControlClient::new(channel)
        .update_node(UpdateNodeRequest {
            reference: a.node,
            availability,
            label_add: a.label_add,
            label_rm: a.label_rm,
            hostname: a.hostname,
        })
        .await
        .map_err(client::status)?;
    println!("{}", r.into_inner().node.map(|n| n.id).unwrap_or_default());
    Ok(())
}

async fn logs(
    control: &mut ControlClient<Channel>,
    service: String,
    follow: bool,
    tail: &str,
) -> Result<()> {
    let tail = if tail == "all" {
        0
    } else {
        tail.parse().map_err(|_| anyhow::anyhow!("invalid --tail {tail:?}: a number or all"))?
    };
    let tasks = control
        .list_tasks(ListTasksRequest { service: service.clone(), ..Default::default() })
        .await
        .map_err(client::status)?
        .into_inner();
    let names: HashMap<String, String> = tasks
        .tasks
        .iter()
        .map(|t| {
            let node = tasks.node_names.get(&t.node_id).cloned().unwrap_or_default();
            (t.id.clone(), format!("{}@{node}", task_name(t, false)))
        })
        .collect();
    let mut stream = control
        .service_logs(ServiceLogsRequest { reference: service, follow, tail })
        .await
        .map_err(client::status)?
        .into_inner();
    use std::io::Write;
    while let Some(m) = stream.message().await.map_err(client::status)? {
        let who = names.get(&m.task_id).cloned().unwrap_or_else(|| m.task_id.clone());
        let line = String::from_utf8_lossy(&m.data);
        let line = line.trim_end_matches('\n');
        if m.stream == 2 {
            let _ = writeln!(std::io::stderr(), "{who}    | {line}");
        } else {
            let _ = writeln!(std::io::stdout(), "{who}    | {line}");
        }
    }
    Ok(())
}

fn task_name(t: &Task, no_trunc: bool) -> String {
    let id = if no_trunc { t.id.clone() } else { t.id.chars().take(12).collect() };
    if t.slot > 0 {
        format!("{}.{}.{id}", t.service_name, t.slot)
    } else {
        format!("{}.{}.{id}", t.service_name, t.node_id.chars().take(12).collect::<String>())
    }
}

pub(crate) fn ago(ms: i64) -> String {
    let now = shoal_manager::manager::unix(std::time::SystemTime::now()) * 1000;
    let secs = ((now - ms).max(0) / 1000) as u64;
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn desired_word(d: i32) -> &'static str {
    TaskState::try_from(d).map(|s| s.word()).unwrap_or("Unknown")
}

/// `service ls`.
pub fn service_ls(r: &ListServicesResponse, quiet: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if quiet {
        for s in &r.services {
            let _ = writeln!(out, "{}", s.service.as_ref().map(|s| s.id.as_str()).unwrap_or(""));
        }
        return out;
    }
    let _ = writeln!(out, "{:<14}{:<22}{:<12}{:<10}IMAGE", "ID", "NAME", "MODE", "REPLICAS");
    for sum in &r.services {
        let Some(s) = &sum.service else { continue };
        let spec = s.spec.clone().unwrap_or_default();
        let mode = if spec.mode() == ServiceMode::Global { "global" } else { "replicated" };
        let image = spec.container.map(|c| c.image).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14}{:<22}{:<12}{:<10}{}",
            &s.id[..s.id.len().min(12)],
            spec.name,
            mode,
            format!("{}/{}", sum.running, sum.desired),
            image
        );
    }
    out
}

/// `service ps`: newest task of each slot first, its history below it.
pub fn service_ps(r: &ListTasksResponse, no_trunc: bool, quiet: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if quiet {
        for t in &r.tasks {
            let _ = writeln!(out, "{}", t.id);
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<14}{:<24}{:<18}{:<16}{:<10}{:<28}ERROR",
        "ID", "NAME", "IMAGE", "NODE", "DESIRED", "CURRENT STATE"
    );
    let mut last_slot = None;
    for t in &r.tasks {
        let slot = (
            t.service_id.clone(),
            t.slot,
            if t.slot == 0 { t.node_id.clone() } else { String::new() },
        );
        let name = if last_slot.as_ref() == Some(&slot) {
            format!(
                " \\_ {}",
                if t.slot > 0 {
                    format!("{}.{}", t.service_name, t.slot)
                } else {
                    t.service_name.clone()
                }
            )
        } else if t.slot > 0 {
            format!("{}.{}", t.service_name, t.slot)
        } else {
            format!("{}.{}", t.service_name, t.node_id.chars().take(12).collect::<String>())
        };
        last_slot = Some(slot);
        let status = t.status.clone().unwrap_or_default();
        let current = format!("{} {}", t.state().word(), ago(status.timestamp_ms));
        let mut err = if !status.err.is_empty() {
            one_line(&status.err)
        } else if !t.unscheduled_reason.is_empty() {
            one_line(&t.unscheduled_reason)
        } else {
            String::new()
        };
        if !no_trunc && err.chars().count() > 60 {
            err = err.chars().take(57).collect::<String>() + "...";
        }
        let image = t
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let node = r.node_names.get(&t.node_id).cloned().unwrap_or_default();
        let id: String = if no_trunc { t.id.clone() } else { t.id.chars().take(12).collect() };
        let row = format!(
            "{:<14}{:<24}{:<18}{:<16}{:<10}{:<28}{}",
            one_line(&id),
            one_line(&name),
            one_line(&image),
            one_line(&node),
            desired_word(t.desired_state),
            current,
            err
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
    out
}

/// A cell of a table as one line of plain text: the words come from nodes and task output
/// (an error a process printed, a hostname), and a line break, carriage return or terminal
/// escape in them would break the row, or move the cursor so the shell's next prompt lands on
/// the last line. Control characters become spaces.
fn one_line(text: &str) -> String {
    let plain: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    plain.trim().to_string()
}

/// A secret or config reference as Docker's inspect shows it, plus the version it pins.
fn ref_json(r: &SecretReference) -> serde_json::Value {
    serde_json::json!({
        "SecretID": r.secret_id,
        "SecretName": r.secret_name,
        "File": {"Name": r.target, "UID": r.uid.to_string(), "GID": r.gid.to_string(), "Mode": r.mode},
        "Version": r.version,
        "Follow": r.follow,
    })
}

fn service_json(s: &Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.clone().unwrap_or_default();
    let p = spec.placement.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    let r = spec.restart.unwrap_or_default();
    let upd = |u: Option<UpdateConfig>| {
        let u = u.unwrap_or_default();
        serde_json::json!({
            "Parallelism": u.parallelism,
            "Delay": format!("{}ms", u.delay_ms),
            "FailureAction": format!("{:?}", u.failure_action()).to_lowercase(),
            "Monitor": format!("{}ms", u.monitor_ms),
            "MaxFailureRatio": u.max_failure_ratio,
            "Order": if u.order() == UpdateOrder::StartFirst { "start-first" } else { "stop-first" },
        })
    };
    let status = s.update_status.clone().unwrap_or_default();
    serde_json::json!({
        "ID": s.id,
        "Version": s.meta.as_ref().map(|m| m.version).unwrap_or(0),
        "SpecVersion": s.spec_version,
        "Spec": {
            "Name": spec.name,
            "Labels": spec.labels.iter().collect::<BTreeMap<_, _>>(),
            "Mode": if spec.mode() == ServiceMode::Global { serde_json::json!({"Global": {}}) } else { serde_json::json!({"Replicated": {"Replicas": spec.replicas}}) },
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": c.image,
                    "ImageDigest": c.image_digest,
                    "Command": c.command,
                    "Args": c.args,
                    "Env": c.env,
                    "Dir": c.workdir,
                    "User": c.user,
                    "ReadOnly": c.read_only,
                    "CapabilityAdd": c.cap_add,
                    "CapabilityDrop": c.cap_drop,
                    "Seccomp": if c.seccomp.is_empty() { "default" } else if c.seccomp == "unconfined" { "unconfined" } else { "custom profile" },
                    "NoNewPrivileges": !c.allow_new_privileges,
                    "Landlock": landlock_label(&c),
                    "Userns": c.userns,
                    "Healthcheck": c.healthcheck.map(|h| serde_json::json!({"Test": h.test, "Interval": h.interval_ms, "Retries": h.retries})),
                    "Secrets": c.secrets.iter().map(ref_json).collect::<Vec<_>>(),
                    "Configs": c.configs.iter().map(ref_json).collect::<Vec<_>>(),
                },
                "Resources": {
                    "Limits": res.limits.map(|l| serde_json::json!({"NanoCPUs": l.nano_cpus, "MemoryBytes": l.memory_bytes})),
                    "Reservations": res.reservations.map(|l| serde_json::json!({"NanoCPUs": l.nano_cpus, "MemoryBytes": l.memory_bytes})),
                },
                "RestartPolicy": {
                    "Condition": match r.condition() { RestartCondition::Any => "any", RestartCondition::OnFailure => "on-failure", RestartCondition::None => "none" },
                    "Delay": format!("{}ms", r.delay_ms),
                    "MaxAttempts": r.max_attempts,
                    "Window": format!("{}ms", r.window_ms),
                },
                "Placement": {"Constraints": p.constraints, "Preferences": p.spread, "MaxReplicas": p.max_replicas_per_node},
            },
            "UpdateConfig": upd(spec.update),
            "RollbackConfig": upd(spec.rollback),
        },
        "PreviousSpec": s.previous_spec.as_ref().map(|p| p.container.as_ref().map(|c| c.image.clone())),
        "UpdateStatus": {
            "State": format!("{:?}", status.state()).to_lowercase(),
            "Message": status.message,
        },
    })
}

fn service_pretty(s: &Service) -> String {
    use std::fmt::Write;
    let spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "ID:             {}", s.id);
    let _ = writeln!(out, "Name:           {}", spec.name);
    match spec.mode() {
        ServiceMode::Global => {
            let _ = writeln!(out, "Service Mode:   Global");
        }
        ServiceMode::Replicated => {
            let _ = writeln!(out, "Service Mode:   Replicated\n Replicas:      {}", spec.replicas);
        }
    }
    if let Some(u) = &s.update_status {
        let _ = writeln!(
            out,
            "UpdateStatus:\n State:         {:?}\n Message:       {}",
            u.state(),
            u.message
        );
    }
    let _ = writeln!(out, "Image:          {}", c.image);
    if !c.image_digest.is_empty() {
        let _ = writeln!(out, "Image digest:   {}", c.image_digest);
    }
    let _ = writeln!(out, "Args:           {}", c.args.join(" "));
    let _ = writeln!(out, "Read-only:      {}", c.read_only);
    for (what, refs) in [("Secrets", &c.secrets), ("Configs", &c.configs)] {
        if !refs.is_empty() {
            let _ = writeln!(out, "{what}:");
        }
        for r in refs {
            let follows = if r.follow { ", follows new versions" } else { "" };
            let _ = writeln!(
                out,
                " Target: {}  Source: {} (version {}{follows})",
                r.target, r.secret_name, r.version
            );
        }
    }
    let _ = writeln!(
        out,
        "Seccomp:        {}",
        if c.seccomp.is_empty() {
            "default"
        } else if c.seccomp == "unconfined" {
            "unconfined"
        } else {
            "custom"
        }
    );
    let _ = writeln!(out, "Landlock:       {}", landlock_label(&c));
    let _ = writeln!(out);
    out
}

/// What `service inspect` shows of the spec's Landlock option: the node's ruleset by default
/// (where the node's kernel has Landlock), or off.
fn landlock_label(c: &ContainerSpec) -> &'static str {
    if c.landlock_off {
        "off"
    } else {
        "default"
    }
}

/// Follows a service until every slot runs a task of its current spec (or the update is
/// over), showing one progress line per slot; fails if the service does not converge.
async fn converge(control: &mut ControlClient<Channel>, s: &Service) -> Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let steps = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
    ];
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
    let style = ProgressStyle::with_template("{prefix:>8}: {msg:<10} [{bar:24}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let overall = multi.add(ProgressBar::new_spinner());
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let start = Instant::now();
    let deadline = Duration::from_secs(180);
    let mut failures: HashMap<String, String> = HashMap::new();
    loop {
        let list = control
            .list_services(ListServicesRequest {})
            .await
            .map_err(client::status)?
            .into_inner();
        let Some(sum) =
            list.services.into_iter().find(|x| x.service.as_ref().is_some_and(|x| x.id == s.id))
        else {
            bail!("service {} was removed", s.id);
        };
        let current = sum.service.clone().unwrap_or_default();
        let tasks = control
            .list_tasks(ListTasksRequest { service: s.id.clone(), ..Default::default() })
            .await
            .map_err(client::status)?
            .into_inner();
        let mut fresh_running = 0u64;
        let mut stale_live = 0u64;
        for t in &tasks.tasks {
            let live = t.desired_state <= TaskState::Running as i32;
            let fresh = t.spec_version == current.spec_version
                || t.spec.as_ref().map(task_part) == current.spec.as_ref().map(task_part);
            let key = if t.slot > 0 {
                t.slot.to_string()
            } else {
                tasks.node_names.get(&t.node_id).cloned().unwrap_or_default()
            };
            if matches!(t.state(), TaskState::Failed | TaskState::Rejected) && fresh {
                let st = t.status.clone().unwrap_or_default();
                failures.insert(
                    t.id.clone(),
                    if st.err.is_empty() { t.state().word().to_string() } else { st.err },
                );
            }
            if !live {
                continue;
            }
            if !fresh {
                stale_live += 1;
                continue;
            }
            let bar = bars.entry(key.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(steps.len() as u64 - 1));
                b.set_style(style.clone());
                b.set_prefix(key.clone());
                b
            });
            let pos = steps.iter().position(|x| *x == t.state()).unwrap_or(steps.len() - 1);
            bar.set_position(pos as u64);
            let msg = if t.unscheduled_reason.is_empty() {
                t.state().word().to_lowercase()
            } else {
                t.unscheduled_reason.clone()
            };
            bar.set_message(msg);
            if t.state() == TaskState::Running {
                fresh_running += 1;
            }
        }
        let update = current.update_status.clone().unwrap_or_default();
        overall
            .set_message(format!("overall progress: {fresh_running} out of {} tasks", sum.desired));
        overall.tick();
        match update.state() {
            UpdateState::Paused | UpdateState::RollbackPaused => {
                multi.clear().ok();
                bail!("{}", update.message);
            }
            UpdateState::RollbackCompleted if current.spec_version != s.spec_version => {
                multi.clear().ok();
                bail!("the update was rolled back: {}", update.message);
            }
            _ => {}
        }
        let updating =
            matches!(update.state(), UpdateState::Updating | UpdateState::RollbackStarted);
        if fresh_running == sum.desired && stale_live == 0 && !updating {
            multi.clear().ok();
            println!(
                "verify: service {} converged ({} running)",
                current.spec.map(|p| p.name).unwrap_or_default(),
                fresh_running
            );
            return Ok(());
        }
        if failures.len() as u64 > 3 * sum.desired.max(1) || start.elapsed() > deadline {
            multi.clear().ok();
            let last =
                failures.values().next().cloned().unwrap_or_else(|| "tasks are not running".into());
            bail!("service did not converge after {:.0?}: {last}", start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus_parse_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("-1m").is_err());
        assert!(parse_bytes("lots").unwrap_err().contains("invalid size"));
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn secret_references_parse_like_docker_plus_follow() {
        let r = parse_secret_ref("db_pass").unwrap();
        assert_eq!((r.secret_name.as_str(), r.target.as_str(), r.mode), ("db_pass", "", 0));
        let r = parse_secret_ref("source=db,target=pw,uid=70,gid=71,mode=0400,follow").unwrap();
        assert_eq!((r.secret_name.as_str(), r.target.as_str()), ("db", "pw"));
        assert_eq!((r.uid, r.gid, r.mode, r.follow), (70, 71, 0o400, true));
        assert_eq!(parse_secret_ref("src=db,mode=440").unwrap().mode, 0o440);
        for bad in ["target=x", "source=db,mode=0999", "source=db,uid=-1", "source=db,colour=red"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
        let mut refs = vec![parse_secret_ref("a").unwrap(), parse_secret_ref("b").unwrap()];
        edit_refs(&mut refs, &["source=a,target=a2".into()], &["b".into()]).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!((refs[0].secret_name.as_str(), refs[0].target.as_str()), ("a", "a2"));
    }

    #[test]
    fn flags_fill_the_spec() {
        let flags = SpecFlags {
            replicas: Some(4),
            limit_memory: Some(64 << 20),
            restart_condition: Some("on-failure".into()),
            update_failure_action: Some("rollback".into()),
            update_order: Some("start-first".into()),
            security_opt: vec!["no-new-privileges=false".into(), "seccomp=unconfined".into()],
            health_cmd: Some("true".into()),
            ..Default::default()
        };
        let mut spec = ServiceSpec::default();
        flags.apply(&mut spec).unwrap();
        assert_eq!(spec.replicas, 4);
        assert_eq!(spec.restart.unwrap().condition(), RestartCondition::OnFailure);
        let u = spec.update.unwrap();
        assert_eq!(
            (u.failure_action(), u.order()),
            (FailureAction::Rollback, UpdateOrder::StartFirst)
        );
        let c = spec.container.unwrap();
        assert!(c.allow_new_privileges);
        assert!(!c.landlock_off, "Landlock stays on unless asked");
        assert_eq!(c.seccomp, "unconfined");
        assert_eq!(c.healthcheck.unwrap().test, vec!["CMD-SHELL", "true"]);
        let bad = SpecFlags { restart_condition: Some("sometimes".into()), ..Default::default() };
        assert!(bad
            .apply(&mut ServiceSpec::default())
            .unwrap_err()
            .to_string()
            .contains("restart condition"));
        let bad = SpecFlags { security_opt: vec!["apparmor=x".into()], ..Default::default() };
        assert!(bad
            .apply(&mut ServiceSpec::default())
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }

    #[test]
    fn landlock_off_is_a_security_opt_that_inspect_shows() {
        let off = SpecFlags { security_opt: vec!["landlock=off".into()], ..Default::default() };
        let mut spec = ServiceSpec::default();
        off.apply(&mut spec).unwrap();
        assert!(spec.container.as_ref().unwrap().landlock_off);
        let service = Service { spec: Some(spec.clone()), ..Default::default() };
        let json = service_json(&service);
        assert_eq!(json["Spec"]["TaskTemplate"]["ContainerSpec"]["Landlock"], "off");
        assert!(service_pretty(&service).contains("\nLandlock:       off\n"));

        // An update can turn it back on; the default shows as the node's ruleset.
        let on = SpecFlags { security_opt: vec!["landlock:on".into()], ..Default::default() };
        on.apply(&mut spec).unwrap();
        assert!(!spec.container.as_ref().unwrap().landlock_off);
        let json = service_json(&Service { spec: Some(spec), ..Default::default() });
        assert_eq!(json["Spec"]["TaskTemplate"]["ContainerSpec"]["Landlock"], "default");

        let bad = SpecFlags { security_opt: vec!["landlock=maybe".into()], ..Default::default() };
        let err = bad.apply(&mut ServiceSpec::default()).unwrap_err().to_string();
        assert_eq!(err, "invalid --security-opt \"landlock=maybe\": landlock=on|off");
    }
}
