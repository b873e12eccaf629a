//! `shoal user|team|role|grant …` and `shoal system audit`: people, what they may do, and
//! the record of what they did (issue #18). `user bundle` makes the key where the bundle is
//! written; only the certificate request leaves this machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::client::{self, Host};
use super::output::{rfc3339_ms, table};

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (they can do nothing until granted)
    Create { name: String },
    /// List users
    #[command(alias = "list")]
    Ls,
    /// Show a user, their teams and grants
    Inspect { name: String },
    /// Remove a user: their certificates stop working at once
    #[command(alias = "remove")]
    Rm { name: String },
    /// Write a client bundle: key.pem (made here), cert.pem, ca.pem and env.sh
    Bundle {
        name: String,
        /// Directory to write (made if missing)
        #[arg(short, long)]
        output: PathBuf,
        /// How long the certificate lasts
        #[arg(long, default_value = "720h", value_parser = super::parse_duration)]
        validity: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCmd {
    /// Create a team, with members
    Create {
        name: String,
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Add users to a team
    Add {
        team: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove users from a team, or the team itself when no user is named
    #[command(alias = "remove")]
    Rm { team: String, users: Vec<String> },
    /// List teams and their members
    #[command(alias = "list")]
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Create a role from operations (service.create, secret.use, node.availability, …)
    Create {
        name: String,
        #[arg(long = "op", required = true)]
        ops: Vec<String>,
    },
    /// List roles (built-in ones first) and their operations
    #[command(alias = "list")]
    Ls,
    /// Remove a custom role no grant uses
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Give a subject a role on a collection (and everything below it)
    Create {
        /// user:NAME or team:NAME
        #[arg(long)]
        subject: String,
        #[arg(long)]
        role: String,
        /// / or /PATH, such as /shared/prod
        #[arg(long)]
        collection: String,
    },
    /// List grants
    #[command(alias = "list")]
    Ls,
    /// Remove a grant: its ID, or SUBJECT,ROLE,COLLECTION
    #[command(alias = "remove")]
    Rm { grant: String },
}

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Show the audit log of the managers: changes, and every refused call
    Audit {
        /// Only entries since then: a duration ago (1h) or an RFC 3339 time
        #[arg(long)]
        since: Option<String>,
        /// Only this subject (user:NAME, node:ID, "root (local socket)")
        #[arg(long)]
        subject: Option<String>,
    },
}

fn err(e: tonic::Status) -> anyhow::Error {
    client::status(e)
}

pub async fn user(cmd: UserCmd, channel: Channel, host: &Host) -> Result<()> {
    let mut c = ControlClient::new(channel.clone());
    match cmd {
        UserCmd::Create { name } => {
            c.create_user(UserRequest { name: name.clone() }).await.map_err(err)?;
            println!("{name}");
        }
        UserCmd::Ls => {
            let list = c.list_users(ListUsersRequest {}).await.map_err(err)?.into_inner();
            let rows = list.users.iter().map(|u| {
                let user = u.user.clone().unwrap_or_default();
                let newest = user.certs.iter().map(|c| c.not_after_ms).max();
                vec![
                    user.name,
                    u.teams.join(","),
                    u.grants.len().to_string(),
                    newest.map(rfc3339_ms).unwrap_or_else(|| "-".into()),
                ]
            });
            print!("{}", table(&["NAME", "TEAMS", "GRANTS", "CERTIFICATE UNTIL"], rows));
        }
        UserCmd::Inspect { name } => {
            let u = c.get_user(UserRequest { name }).await.map_err(err)?.into_inner();
            let user = u.user.unwrap_or_default();
            let j = serde_json::json!({
                "Name": user.name,
                "CreatedAt": rfc3339_ms(user.meta.map(|m| m.created_at_ms).unwrap_or(0)),
                "Teams": u.teams,
                "Certificates": user.certs.iter().map(|c| serde_json::json!({
                    "Serial": c.serial_hex, "NotAfter": rfc3339_ms(c.not_after_ms)
                })).collect::<Vec<_>>(),
                "Grants": u.grants.iter().map(|g| serde_json::json!({
                    "ID": g.id, "Subject": g.subject, "Role": g.role, "Collection": g.collection
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&[j])?);
        }
        UserCmd::Rm { name } => {
            c.remove_user(UserRequest { name: name.clone() }).await.map_err(err)?;
            println!("{name}");
        }
        UserCmd::Bundle { name, output, validity } => {
            bundle(&mut c, channel, host, &name, &output, validity).await?;
        }
    }
    Ok(())
}

/// Writes `path` with `data` and `mode` in one step (a temporary file renamed into place).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn bundle(
    c: &mut ControlClient<Channel>,
    channel: Channel,
    host: &Host,
    name: &str,
    dir: &Path,
    validity: std::time::Duration,
) -> Result<()> {
    let key = shoal_pki::NodeKey::generate()?;
    let req = IssueUserCertificateRequest {
        name: name.to_string(),
        csr_der: key.csr_der()?,
        validity_ms: u64::try_from(validity.as_millis()).unwrap_or(u64::MAX),
    };
    let issued = c.issue_user_certificate(req).await.map_err(err)?.into_inner();
    let addr = match host {
        Host::Tcp(addr) => addr.clone(),
        Host::Unix(_) => {
            let mut d = shoal_proto::daemon_client::DaemonClient::new(channel);
            let info = d.info(InfoRequest {}).await.map_err(err)?.into_inner();
            info.manager_addrs.first().cloned().unwrap_or(info.node_addr)
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("key.pem"), key.to_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join("cert.pem"), issued.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join("ca.pem"), issued.ca_pem.as_bytes(), 0o644)?;
    let env = format!(
        "# Source this file to reach the cluster as {name} (certificate until {}).\n\
         export SHOAL_HOST=tcp://{addr}\n\
         export SHOAL_TLS_VERIFY=1\n\
         export SHOAL_CERT_PATH=\"$(cd \"$(dirname \"${{BASH_SOURCE[0]:-$0}}\")\" && pwd)\"\n",
        rfc3339_ms(issued.not_after_ms)
    );
    write_atomic(&dir.join("env.sh"), env.as_bytes(), 0o644)?;
    println!(
        "Wrote a client bundle for {name} to {} (certificate until {})",
        dir.display(),
        rfc3339_ms(issued.not_after_ms)
    );
    Ok(())
}

pub async fn team(cmd: TeamCmd, channel: Channel) -> Result<()> {
    let mut c = ControlClient::new(channel);
    match cmd {
        TeamCmd::Create { name, members } => {
            let t = c
                .create_team(TeamRequest { name, add: members, remove: vec![] })
                .await
                .map_err(err)?;
            println!("{}", t.into_inner().name);
        }
        TeamCmd::Add { team, users } => {
            c.update_team(TeamRequest { name: team, add: users, remove: vec![] })
                .await
                .map_err(err)?;
        }
        TeamCmd::Rm { team, users } if users.is_empty() => {
            c.remove_team(TeamRequest { name: team.clone(), ..Default::default() })
                .await
                .map_err(err)?;
            println!("{team}");
        }
        TeamCmd::Rm { team, users } => {
            c.update_team(TeamRequest { name: team, add: vec![], remove: users })
                .await
                .map_err(err)?;
        }
        TeamCmd::Ls => {
            let list = c.list_teams(ListTeamsRequest {}).await.map_err(err)?.into_inner();
            let rows = list.teams.into_iter().map(|t| vec![t.name, t.members.join(",")]);
            print!("{}", table(&["NAME", "MEMBERS"], rows));
        }
    }
    Ok(())
}

pub async fn role(cmd: RoleCmd, channel: Channel) -> Result<()> {
    let mut c = ControlClient::new(channel);
    match cmd {
        RoleCmd::Create { name, ops } => {
            let r = c.create_role(RoleRequest { name, ops }).await.map_err(err)?;
            println!("{}", r.into_inner().name);
        }
        RoleCmd::Ls => {
            let list = c.list_roles(ListRolesRequest {}).await.map_err(err)?.into_inner();
            let rows = list.roles.into_iter().map(|r| {
                let kind = if r.id.is_empty() { "built-in" } else { "custom" };
                vec![r.name, kind.to_string(), r.ops.join(",")]
            });
            print!("{}", table(&["NAME", "KIND", "OPERATIONS"], rows));
        }
        RoleCmd::Rm { name } => {
            c.remove_role(RoleRequest { name: name.clone(), ops: vec![] }).await.map_err(err)?;
            println!("{name}");
        }
    }
    Ok(())
}

pub async fn grant(cmd: GrantCmd, channel: Channel) -> Result<()> {
    let mut c = ControlClient::new(channel);
    match cmd {
        GrantCmd::Create { subject, role, collection } => {
            let g = c
                .create_grant(CreateGrantRequest { subject, role, collection })
                .await
                .map_err(err)?;
            println!("{}", g.into_inner().id);
        }
        GrantCmd::Ls => {
            let list = c.list_grants(ListGrantsRequest {}).await.map_err(err)?.into_inner();
            let rows = list.grants.into_iter().map(|g| vec![g.id, g.subject, g.role, g.collection]);
            print!("{}", table(&["ID", "SUBJECT", "ROLE", "COLLECTION"], rows));
        }
        GrantCmd::Rm { grant } => {
            c.remove_grant(RemoveGrantRequest { reference: grant.clone() }).await.map_err(err)?;
            println!("{grant}");
        }
    }
    Ok(())
}

/// `--since`: `1h` (that long ago) or an RFC 3339 time, as milliseconds since the epoch.
fn since_ms(s: &str) -> Result<i64> {
    let now = std::time::SystemTime::now();
    let t = match super::parse_duration(s) {
        Ok(d) => now.checked_sub(d).context("--since is too far back")?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow::anyhow!("--since {s:?}: use a duration (1h, 30m) or an RFC 3339 time")
        })?,
    };
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn system(cmd: SystemCmd, channel: Channel) -> Result<()> {
    let mut c = ControlClient::new(channel);
    match cmd {
        SystemCmd::Audit { since, subject } => {
            let since_ms = since.as_deref().map(since_ms).transpose()?.unwrap_or(0);
            let req = ReadAuditRequest {
                since_ms,
                subject: subject.unwrap_or_default(),
                local_only: false,
            };
            let r = c.read_audit(req).await.map_err(err)?.into_inner();
            if r.entries.is_empty() {
                eprintln!("no audit entries match");
            }
            for e in r.entries {
                println!("{e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_a_duration_or_a_time() {
        let an_hour = super::since_ms("1h").unwrap();
        let now = super::since_ms("0s").unwrap();
        assert!((now - an_hour - 3_600_000).abs() < 5_000);
        assert_eq!(super::since_ms("2026-12-05T00:00:00Z").unwrap(), 1_796_428_800_000);
        assert!(super::since_ms("yesterday").is_err());
    }
}
