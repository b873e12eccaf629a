//! The `shoald` node daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use shoal::node::daemon::{Daemon, DaemonConfig};
use shoal_agent::runtime::NodePolicy;
use shoal_agent::ExecutorChoice;
use tracing_subscriber::EnvFilter;

/// Runs a Shoal node: its agent always, its manager once it inits a swarm.
#[derive(Debug, Parser)]
#[command(name = "shoald", version)]
struct Args {
    /// Where the node keeps its state
    #[arg(long, default_value = "/var/lib/shoal")]
    data_root: PathBuf,
    /// Local API socket (unix:///PATH.sock), reachable by root only
    #[arg(short = 'H', long = "host", default_value = concat!("unix://", "/var/run/shoal.sock"))]
    host: String,
    /// Name this node reports (default: the system hostname)
    #[arg(long)]
    hostname: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter)
    #[arg(long, default_value = "info")]
    log_level: String,
    /// How long a manager waits without hearing a leader before it calls an election (e.g. 500ms;
    /// randomized up to twice that)
    #[arg(long, default_value = "500ms", value_parser = shoal::cli::parse_duration)]
    election_timeout: std::time::Duration,
    /// Divide certificate renewal waits by this factor (tests only)
    #[cfg(feature = "test-util")]
    #[arg(long, default_value_t = 1.0, hide = true)]
    test_time_scale: f64,
    /// What runs tasks: runc (real containers) or fake (simulated, for tests)
    #[cfg(feature = "test-util")]
    #[arg(long, default_value = "runc", hide = true)]
    executor: String,
    /// After this host's address changed: the address (IP or IP:PORT) other nodes now reach
    /// this node at, instead of the saved one; a manager tells the other managers
    #[arg(long, value_name = "ADDR")]
    advertise_addr: Option<String>,
    /// After this host's address changed: where to listen for cluster traffic instead of the
    /// saved address (default: the saved one, moved to the new advertised IP if it was pinned
    /// to the old one)
    #[arg(long, value_name = "ADDR")]
    listen_addr: Option<String>,
    /// A capability tasks may add beyond Docker's default set (repeat it; ALL allows any)
    #[arg(long, value_name = "CAP")]
    task_allow_cap_add: Vec<String>,
    /// Let tasks run without a seccomp filter (seccomp=unconfined)
    #[arg(long)]
    task_allow_unconfined_seccomp: bool,
    /// Let tasks bring their own seccomp profile even when it allows what the default does not
    /// (without it, only a profile at least as strict as the default runs)
    #[arg(long)]
    task_allow_custom_seccomp: bool,
    /// Let tasks turn no-new-privileges off
    #[arg(long)]
    task_allow_new_privileges: bool,
    /// Let tasks run without this node's Landlock ruleset (landlock=off)
    #[arg(long)]
    task_allow_landlock_off: bool,
    /// A directory whose insides tasks may bind-mount (repeat it; none by default). The data
    /// root, /, /proc, /sys, /dev and sockets stay refused
    #[arg(long, value_name = "DIR")]
    task_allow_bind: Vec<PathBuf>,
    /// Let tasks set their own SELinux type or level, or run unlabelled (label=type:T,
    /// label=level:L, label=disable); by default each gets container_t and its own categories
    #[arg(long)]
    task_allow_label_override: bool,
    /// An AppArmor profile tasks may run under instead of shoal-default (repeat it;
    /// `unconfined` allows none at all)
    #[arg(long, value_name = "PROFILE")]
    task_allow_apparmor: Vec<String>,
    /// Run tasks that ask for a user namespace as this user's subordinate ids (/etc/subuid)
    #[arg(long, value_name = "USER")]
    userns_remap: Option<String>,
    /// Registries' extra CAs and client certificates, one directory per registry
    /// (HOST:PORT/ca.crt, client.cert, client.key), as Docker's certs.d
    #[arg(long, value_name = "DIR", default_value = "/etc/shoal/certs.d")]
    certs_dir: PathBuf,
    /// A registry this node may reach without verified TLS, or over plain HTTP (HOST:PORT or
    /// a CIDR; repeat it). Without it every registry is reached over verified TLS
    #[arg(long, value_name = "HOST:PORT|CIDR")]
    insecure_registry: Vec<String>,
}

/// mimalloc in its secure mode (guard pages, encoded free lists, randomised allocation):
/// glibc's allocator spent a fifth of the managers' CPU in contended arena locks and
/// consolidation under write load (`shoal-bench raft`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    forbid_core_dumps()?;
    run()
}

/// Marks the process not dumpable before anything is read: no core dump can carry the node key,
/// the managers' data keys or a task's secrets, and only root with CAP_SYS_PTRACE may read its
/// memory or /proc files (which now belong to root whoever runs shoald). Programs it executes
/// (runc, tasks) start dumpable again, as execve resets the flag.
fn forbid_core_dumps() -> Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("could not mark shoald not dumpable (prctl PR_SET_DUMPABLE)")
}

#[tokio::main]
async fn run() -> Result<()> {
    shoal_pki::install_crypto_provider();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log_level).context("--log-level")?)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (the log's disk is full) is dropped. By default the
        // failure is reported with `eprintln!`, which panics when stderr fails too, killing
        // whatever task logged: the Raft driver before it marked its member failed (so shoald
        // never exited as it should on a full disk), an agent's session (the node stayed Down).
        .log_internal_errors(false)
        .init();
    let socket = match shoal::cli::client::parse_host(&args.host)? {
        shoal::cli::client::Host::Unix(path) => path,
        shoal::cli::client::Host::Tcp(_) => {
            bail!("shoald serves its local API on a unix socket only")
        }
    };
    shoal_manager::manager::validate_election_timeout(args.election_timeout)
        .map_err(anyhow::Error::msg)?;
    let time_scale = time_scale(&args)?;
    let mut policy = NodePolicy::from_flags(
        &args.task_allow_cap_add,
        args.task_allow_unconfined_seccomp,
        args.task_allow_custom_seccomp,
        args.task_allow_new_privileges,
        args.task_allow_landlock_off,
        args.userns_remap.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    for dir in &args.task_allow_bind {
        if !dir.is_absolute() || !dir.is_dir() {
            bail!(
                "--task-allow-bind {}: name an existing directory by its absolute path",
                dir.display()
            );
        }
    }
    policy.allowed_bind_prefixes = args.task_allow_bind.clone();
    policy.allow_label_override = args.task_allow_label_override;
    for name in &args.task_allow_apparmor {
        shoal_proto::spec::mac::check_apparmor(name)
            .map_err(|e| anyhow::anyhow!("--task-allow-apparmor: {e}"))?;
        policy.allowed_apparmor.insert(name.clone());
    }
    let insecure = args
        .insecure_registry
        .iter()
        .map(|s| s.parse().map_err(|e| anyhow::anyhow!("--insecure-registry {s}: {e}")))
        .collect::<Result<Vec<shoal_registry::Insecure>>>()?;
    let registry = shoal_registry::Client::new(shoal_registry::Settings {
        certs_dir: args.certs_dir.clone(),
        insecure,
    })
    .context("setting up the registry client")?;
    let executor = executor(&args, policy)?.with_registry(registry.clone());
    let hostname = match args.hostname {
        Some(h) => h,
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let cfg = DaemonConfig {
        data_root: args.data_root,
        hostname,
        time_scale,
        election_timeout: args.election_timeout,
        executor,
        addrs: shoal::node::readdress::AddrOverrides {
            listen_addr: args.listen_addr,
            advertise_addr: args.advertise_addr,
        },
        registry,
    };
    let daemon = Daemon::start(cfg).await?;
    tokio::spawn(exit_when_manager_fails(daemon.clone(), socket.clone()));
    tracing::info!(socket = %socket.display(), "shoald ready");
    shoal::node::local_api::serve(daemon.clone(), &socket, shutdown_signal()).await?;
    daemon.stop().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// `--test-time-scale`, in a build with the `test-util` feature (the one tests spawn).
#[cfg(feature = "test-util")]
fn time_scale(args: &Args) -> Result<f64> {
    if args.test_time_scale.is_nan() || args.test_time_scale < 1.0 {
        bail!("--test-time-scale must be at least 1");
    }
    Ok(args.test_time_scale)
}

/// Real time: the product has no `--test-time-scale`.
#[cfg(not(feature = "test-util"))]
fn time_scale(_: &Args) -> Result<f64> {
    Ok(1.0)
}

/// `--executor` (runc or fake), in a build with the `test-util` feature.
#[cfg(feature = "test-util")]
fn executor(args: &Args, policy: NodePolicy) -> Result<ExecutorChoice> {
    ExecutorChoice::named(&args.executor, policy).map_err(|e| anyhow::anyhow!("--executor: {e}"))
}

/// Real containers: the product has no fake executor.
#[cfg(not(feature = "test-util"))]
fn executor(_: &Args, policy: NodePolicy) -> Result<ExecutorChoice> {
    Ok(ExecutorChoice::runc(policy))
}

/// How long calls in flight get to carry a failed manager's reason to their callers.
const FAILURE_GRACE: Duration = Duration::from_secs(1);
/// How long a graceful shutdown may take before shoald exits without finishing it.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Ends the process with status 1 once the Raft member of this node's manager has failed (a
/// full or broken disk): such a manager serves nothing more until shoald restarts.
///
/// It exits without a graceful shutdown, and without running destructors: stopping the manager
/// drops its sled store, and after a failed blob write sled 0.34 can wait forever in the flush
/// its drop runs, keeping the process and the store's lock. Nothing is lost by skipping that
/// flush: Raft syncs every write to disk before it is acknowledged. The operator (or systemd)
/// frees space and starts shoald again, and the manager resumes from what is on disk.
async fn exit_when_manager_fails(daemon: Arc<Daemon>, socket: PathBuf) {
    let why = daemon.manager_failed().await;
    tracing::error!(
        error = %why,
        "this manager cannot go on: shoald exits; restart it once the disk is fixed"
    );
    tokio::time::sleep(FAILURE_GRACE).await;
    let _ = std::fs::remove_file(&socket);
    std::process::exit(1);
}

/// Resolves on SIGTERM or SIGINT, and from then on bounds the shutdown (see
/// [`exit_if_shutdown_hangs`]).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    exit_if_shutdown_hangs(SHUTDOWN_LIMIT);
}

/// Exits with status 1 if the process is still there `limit` after the shutdown began: a hung
/// store flush (see [`exit_when_manager_fails`]) or a call that never ends must not keep the
/// process, and the store's lock, forever. A thread of its own, so a blocked runtime cannot
/// hold it up.
fn exit_if_shutdown_hangs(limit: Duration) {
    let watchdog = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            "shutdown did not finish within {limit:?}; exiting without it (acknowledged writes \
             are already on disk)"
        );
        std::process::exit(1);
    });
    if let Err(e) = watchdog {
        tracing::warn!(error = %e, "no shutdown watchdog: a hung shutdown will not be cut short");
    }
}
