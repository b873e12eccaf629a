//! `shoal volume …`: this node's named volumes (the local driver), through the local socket.
//! A volume lives on one node: tasks on other nodes that name it get their own.

use anyhow::{bail, Result};
use clap::Subcommand;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::{client, output};

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume on this node (an existing one is left as it is)
    Create {
        /// Its name (made up when left out)
        name: Option<String>,
        /// Volume driver (only "local")
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// Driver options (the local driver here takes none)
        #[arg(short, long = "opt")]
        opts: Vec<String>,
        /// KEY=VALUE labels
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List volumes
    #[command(alias = "list")]
    Ls {
        /// Print names only
        #[arg(short, long)]
        quiet: bool,
        /// dangling=true|false, label=KEY[=VALUE], name=PART
        #[arg(short, long = "filter")]
        filters: Vec<String>,
    },
    /// Show volumes as JSON
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// Also add up the bytes each holds
        #[arg(short, long)]
        size: bool,
    },
    /// Remove volumes (refused while a task on this node uses one)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Say nothing about volumes that do not exist
        #[arg(short, long)]
        force: bool,
    },
    /// Remove volumes no task uses: anonymous ones, or all with --all
    Prune {
        /// Named volumes too, not only the anonymous ones compose files make
        #[arg(short, long)]
        all: bool,
        /// label=KEY[=VALUE]: only volumes with it
        #[arg(long = "filter")]
        filters: Vec<String>,
        /// Do not ask for confirmation (accepted for Docker's muscle memory; prune never asks)
        #[arg(short, long)]
        force: bool,
    },
}

/// What `volume ls --filter` keeps.
#[derive(Debug, Default)]
struct Filters {
    dangling: Option<bool>,
    labels: Vec<String>,
    names: Vec<String>,
}

fn filters(given: &[String]) -> Result<Filters> {
    let mut f = Filters::default();
    for g in given {
        match g.split_once('=') {
            Some(("dangling", v)) => {
                f.dangling = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("--filter {g}: dangling is true or false"),
                })
            }
            Some(("label", v)) if !v.is_empty() => f.labels.push(v.to_string()),
            Some(("name", v)) => f.names.push(v.to_string()),
            _ => bail!("--filter {g}: use dangling=true|false, label=KEY[=VALUE] or name=PART"),
        }
    }
    Ok(f)
}

fn has_label(v: &Volume, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, val)) => v.labels.get(k).is_some_and(|x| x == val),
        None => v.labels.contains_key(want),
    }
}

impl Filters {
    fn keeps(&self, v: &Volume) -> bool {
        self.dangling.is_none_or(|d| d == v.tasks.is_empty())
            && self.labels.iter().all(|l| has_label(v, l))
            && (self.names.is_empty() || self.names.iter().any(|n| v.name.contains(n.as_str())))
    }
}

fn labels(given: &[String]) -> Result<std::collections::HashMap<String, String>> {
    given
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            None if !l.is_empty() => Ok((l.clone(), String::new())),
            _ => bail!("--label {l:?}: use KEY=VALUE"),
        })
        .collect()
}

/// The JSON `volume inspect` prints for one volume (Docker's field names).
fn inspect_json(v: &Volume) -> serde_json::Value {
    let mut j = serde_json::json!({
        "CreatedAt": output::rfc3339_ms(v.created_at_unix * 1000),
        "Driver": v.driver,
        "Labels": v.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": {},
        "Scope": "local",
        "Tasks": v.tasks,
    });
    if v.size >= 0 {
        j["UsageData"] = serde_json::json!({ "Size": v.size, "RefCount": v.tasks.len() });
    }
    j
}

/// Runs one `volume` command.
pub async fn run(cmd: VolumeCmd, channel: Channel) -> Result<()> {
    let mut daemon = DaemonClient::new(channel);
    match cmd {
        VolumeCmd::Create { name, driver, opts, labels: given } => {
            if driver != "local" {
                bail!("volume driver {driver:?}: Shoal has the local driver only");
            }
            if let Some(o) = opts.first() {
                bail!(
                    "--opt {o}: the local driver here keeps a volume as a directory on the node and takes no options"
                );
            }
            let name = name.unwrap_or_else(|| {
                format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
            });
            let req = VolumeCreateRequest { name, labels: labels(&given)? };
            let v = daemon.volume_create(req).await.map_err(client::status)?.into_inner();
            println!("{}", v.name);
        }
        VolumeCmd::Ls { quiet, filters: given } => {
            let keep = filters(&given)?;
            let list = daemon
                .volume_list(VolumeListRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            let shown = list.volumes.iter().filter(|v| keep.keeps(v));
            if quiet {
                shown.for_each(|v| println!("{}", v.name));
            } else {
                let rows = shown.map(|v| {
                    let used =
                        if v.tasks.is_empty() { "-".into() } else { v.tasks.len().to_string() };
                    vec![v.driver.clone(), v.name.clone(), used]
                });
                print!("{}", output::table(&["DRIVER", "VOLUME NAME", "TASKS"], rows));
            }
        }
        VolumeCmd::Inspect { names, size } => {
            let mut out = Vec::new();
            for name in names {
                let req = VolumeInspectRequest { name, size };
                let v = daemon.volume_inspect(req).await.map_err(client::status)?.into_inner();
                out.push(inspect_json(&v));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCmd::Rm { names, force } => {
            let mut failed = Vec::new();
            for name in names {
                match daemon.volume_remove(VolumeRemoveRequest { name: name.clone() }).await {
                    Ok(_) => println!("{name}"),
                    Err(e) if force && e.code() == tonic::Code::NotFound => {}
                    Err(e) => failed.push(format!("{name}: {}", e.message())),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
        VolumeCmd::Prune { all, filters: given, force: _ } => {
            let mut label_filters = Vec::new();
            for g in given {
                match g.split_once('=') {
                    Some(("label", v)) if !v.is_empty() => label_filters.push(v.to_string()),
                    _ => bail!("--filter {g}: prune takes label=KEY[=VALUE]"),
                }
            }
            let req = VolumePruneRequest { all, label_filters };
            let r = daemon.volume_prune(req).await.map_err(client::status)?.into_inner();
            if !r.removed.is_empty() {
                println!("Deleted Volumes:");
                r.removed.iter().for_each(|n| println!("{n}"));
                println!();
            }
            println!("Total reclaimed space: {:.1}MB", r.bytes as f64 / 1e6);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, labels: &[(&str, &str)], tasks: &[&str]) -> Volume {
        Volume {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ls_filters_as_docker_does() {
        let db = vol("app_db", &[("com.docker.stack.namespace", "app")], &["t1"]);
        let spare = vol("spare", &[], &[]);
        let f = filters(&["dangling=true".into()]).unwrap();
        assert!(!f.keeps(&db) && f.keeps(&spare));
        let f = filters(&["label=com.docker.stack.namespace=app".into()]).unwrap();
        assert!(f.keeps(&db) && !f.keeps(&spare));
        let f = filters(&["name=db".into()]).unwrap();
        assert!(f.keeps(&db) && !f.keeps(&spare));
        for bad in ["dangling=maybe", "colour=red", "label="] {
            assert!(filters(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(labels(&["=x".into()]).is_err());
        assert_eq!(labels(&["a=b".into(), "c".into()]).unwrap()["c"], "");
    }
}
