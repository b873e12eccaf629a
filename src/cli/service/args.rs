//! The arguments of `shoal service …` and `shoal node update`, as clap parses them.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::flags::{parse_bytes, parse_cpus};
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
    /// How the service is reached on its networks: vip (a virtual IP spread over the tasks) or
    /// dnsrr (its name resolves to every task)
    #[arg(long)]
    pub endpoint_mode: Option<String>,
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
    /// seccomp=default|unconfined|PROFILE.json, no-new-privileges=true|false, landlock=on|off,
    /// label=disable|type:T|level:L (SELinux), apparmor=NAME|unconfined
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
    /// Container hostname (templates: {{.Service.Name}}, {{.Task.Slot}}, {{.Node.Hostname}}, …)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Nameserver for names outside the cluster (repeatable; replaces the node's)
    #[arg(long)]
    pub dns: Vec<String>,
    /// DNS search domain (repeatable)
    #[arg(long)]
    pub dns_search: Vec<String>,
    /// DNS resolver option, e.g. ndots:2 (repeatable)
    #[arg(long)]
    pub dns_option: Vec<String>,
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
    /// Send this client's saved login for the image's registry with the service (kept sealed
    /// in the store; only nodes with a task of the service get it)
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Do not ask the registry for the digest the tag names now (the service is not pinned)
    #[arg(long)]
    pub no_resolve_image: bool,
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
    /// A mount: type=volume|bind|tmpfs,source=NAME|/PATH,target=/PATH[,readonly]
    /// [,volume-driver=local][,tmpfs-size=64m][,bind-propagation=rprivate]
    #[arg(long)]
    pub mount: Vec<String>,
    /// Configs the tasks may read: NAME or source=NAME,target=/PATH,uid=U,gid=G,mode=0444[,follow]
    #[arg(long)]
    pub config: Vec<String>,
    /// Networks the tasks join: NAME or name=NAME,alias=A[,alias=B]
    #[arg(long)]
    pub network: Vec<String>,
    /// Publish a port: [PUBLISHED:]TARGET[/PROTOCOL] or
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]
    #[arg(short = 'p', long)]
    pub publish: Vec<String>,
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
    /// Add or replace a mount (same form as service create --mount; by target)
    #[arg(long)]
    pub mount_add: Vec<String>,
    /// Remove a mount (its target path)
    #[arg(long)]
    pub mount_rm: Vec<String>,
    /// Add or replace a config (same forms as service create --config)
    #[arg(long)]
    pub config_add: Vec<String>,
    /// Remove a config (its name)
    #[arg(long)]
    pub config_rm: Vec<String>,
    /// Add or replace a network (same forms as service create --network)
    #[arg(long)]
    pub network_add: Vec<String>,
    /// Take the service off a network (its name or ID)
    #[arg(long)]
    pub network_rm: Vec<String>,
    /// Publish a port (same forms as service create --publish)
    #[arg(long)]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL] (or the same forms as --publish-add)
    #[arg(long)]
    pub publish_rm: Vec<String>,
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
