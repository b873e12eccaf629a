//! Owns the `shoal` command line: Docker's verbs and flags, parsed with clap, each turned into
//! calls on the daemon or a manager.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

pub mod access;
pub mod client;
pub mod image;
pub mod login;
pub mod network;
pub mod node;
pub mod output;
pub mod prompt;
pub mod secret;
pub mod service;
pub mod stack;
pub mod swarm;
pub mod trust;
pub mod volume;

use client::{Host, TlsFiles};

/// Shoal: a secure, fast, Swarm-style container cluster manager.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// Daemon to talk to: unix:///PATH.sock or tcp://HOST:PORT
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true,
          default_value = concat!("unix://", "/var/run/shoal.sock"))]
    pub host: String,
    /// CA bundle that signs the manager's certificate (tcp:// only)
    #[arg(long, global = true)]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate chain (tcp:// only)
    #[arg(long, global = true)]
    pub tlscert: Option<PathBuf>,
    /// Client private key (tcp:// only)
    #[arg(long, global = true)]
    pub tlskey: Option<PathBuf>,
    /// Verify the manager and present a client certificate (tcp:// is always TLS; accepted
    /// for Docker's muscle memory)
    #[arg(long, env = "SHOAL_TLS_VERIFY", global = true,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub tlsverify: bool,
    /// Directory holding ca.pem, cert.pem and key.pem (a client bundle), for the flags not given
    #[arg(long, env = "SHOAL_CERT_PATH", global = true)]
    pub cert_path: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(swarm::SwarmCmd),
    /// Manage nodes
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage services
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage this node's images
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Manage secrets (data only tasks that name them can read)
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage configs (like secrets, for data that is not secret)
    #[command(subcommand)]
    Config(secret::SecretCmd),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage users (people with client bundles)
    #[command(subcommand)]
    User(access::UserCmd),
    /// Manage teams of users
    #[command(subcommand)]
    Team(access::TeamCmd),
    /// Manage roles (sets of operations)
    #[command(subcommand)]
    Role(access::RoleCmd),
    /// Manage grants (subject, role, collection)
    #[command(subcommand)]
    Grant(access::GrantCmd),
    /// Cluster-wide records: the audit log
    #[command(subcommand)]
    System(access::SystemCmd),
    /// Manage this node's volumes
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Content trust: signing keys, roots, signers and signed tags
    #[command(subcommand)]
    Trust(trust::TrustCmd),
    /// Vulnerability scanning: this node's advisory database
    #[command(subcommand)]
    Scan(image::ScanCmd),
    /// Manage stacks (services, secrets and configs from a compose file)
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Show this node's view of the swarm
    Info,
    /// Log in to a registry (checked by this node; saved in ~/.shoal/config.json, 0600)
    Login {
        /// Registry HOST[:PORT] (default: docker.io)
        server: Option<String>,
        #[arg(short, long)]
        username: Option<String>,
        /// The password (shows in the process list; prefer --password-stdin)
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the saved login for a registry
    Logout {
        /// Registry HOST[:PORT] (default: docker.io)
        server: Option<String>,
    },
}

/// Parses durations like Docker's flags: `90s`, `30m`, `720h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 90s, 30m, 720h"))
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Logout { server } => return login::logout(server),
        Command::Trust(trust::TrustCmd::Key(k)) => return trust::key(k),
        _ => {}
    }
    let host = client::parse_host(&cli.host)?;
    let in_bundle = |name: &str| cli.cert_path.as_ref().map(|d| d.join(name));
    let tls = TlsFiles {
        ca: cli.tlscacert.clone().or_else(|| in_bundle("ca.pem")),
        cert: cli.tlscert.clone().or_else(|| in_bundle("cert.pem")),
        key: cli.tlskey.clone().or_else(|| in_bundle("key.pem")),
    };
    let channel = client::connect(&host, &tls).await?;
    match cli.command {
        Command::Swarm(cmd) => swarm::run(cmd, channel, &host).await,
        Command::Node(cmd) => node::run(cmd, channel).await,
        Command::Service(cmd) => service::run(cmd, channel).await,
        Command::Secret(cmd) => secret::run(SecretKind::Secret, cmd, channel).await,
        Command::Config(cmd) => secret::run(SecretKind::Config, cmd, channel).await,
        Command::Stack(cmd) => stack::run(cmd, channel).await,
        Command::Network(cmd) => network::run(cmd, channel).await,
        Command::Image(cmd) => {
            local_only(&host)?;
            image::run(cmd, channel).await
        }
        Command::User(cmd) => access::user(cmd, channel, &host).await,
        Command::Team(cmd) => access::team(cmd, channel).await,
        Command::Role(cmd) => access::role(cmd, channel).await,
        Command::Grant(cmd) => access::grant(cmd, channel).await,
        Command::System(cmd) => access::system(cmd, channel).await,
        Command::Volume(cmd) => {
            local_only(&host)?;
            volume::run(cmd, channel).await
        }
        Command::Trust(cmd) => trust::run(cmd, channel).await,
        Command::Scan(cmd) => {
            local_only(&host)?;
            image::scan(cmd, channel).await
        }
        Command::Info => info(channel).await,
        Command::Login { server, username, password, password_stdin } => {
            local_only(&host)?;
            login::login(channel, server, username, password, password_stdin).await
        }
        Command::Logout { .. } => unreachable!("handled before connecting"),
    }
}

fn local_only(host: &Host) -> Result<()> {
    if let Host::Tcp(addr) = host {
        bail!(
            "this command changes the local node; run it on the node itself, not over tcp://{addr}"
        );
    }
    Ok(())
}

async fn info(channel: Channel) -> Result<()> {
    let r = DaemonClient::new(channel).info(InfoRequest {}).await.map_err(client::status)?;
    print!("{}", output::info(&r.into_inner()));
    Ok(())
}
