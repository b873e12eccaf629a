//! Owns `shoal secret …` and `shoal config …`: data read from a file or standard input and
//! sent once to a manager; listings and inspection show metadata only (the API has no data).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use crate::cli::client;

/// `secret` and `config` take the same verbs.
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create from a file, or from standard input with '-'
    Create {
        /// Labels (KEY=VALUE)
        #[arg(short, long)]
        label: Vec<String>,
        name: String,
        /// A file, or '-' for standard input
        file: String,
    },
    /// List them (never their data)
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show details (JSON; never the data)
    Inspect {
        /// Human-readable output instead of JSON
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// New data as a new version; services that follow it roll to it (Shoal only)
    Update {
        /// Replace the labels (KEY=VALUE)
        #[arg(short, long)]
        label: Vec<String>,
        name: String,
        /// A file, or '-' for standard input
        file: String,
    },
    /// Remove them (refused while a service uses one)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs one `secret` (or `config`, by `kind`) command.
pub async fn run(kind: SecretKind, cmd: SecretCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel);
    let k = kind as i32;
    match cmd {
        SecretCmd::Create { label, name, file } => {
            let data = read_data(kind, &file)?;
            let labels = labels(&label)?;
            let req = CreateSecretRequest { kind: k, name, labels, data };
            let r = control.create_secret(req).await.map_err(client::status)?.into_inner();
            println!("{}", r.secret.map(|s| s.id).unwrap_or_default());
        }
        SecretCmd::Ls { quiet } => {
            let r = control.list_secrets(ListSecretsRequest { kind: k }).await;
            print!("{}", ls(&r.map_err(client::status)?.into_inner().secrets, quiet));
        }
        SecretCmd::Inspect { pretty, names } => {
            let mut all = Vec::new();
            for reference in names {
                let r = control.get_secret(GetSecretRequest { kind: k, reference }).await;
                all.push(r.map_err(client::status)?.into_inner());
            }
            if pretty {
                all.iter().for_each(|r| print!("{}", pretty_one(r)));
            } else {
                let json: Vec<_> = all.iter().map(json_one).collect();
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
        }
        SecretCmd::Update { label, name, file } => {
            let data = read_data(kind, &file)?;
            let req = UpdateSecretRequest {
                kind: k,
                reference: name.clone(),
                data,
                set_labels: !label.is_empty(),
                labels: labels(&label)?,
            };
            let r = control.update_secret(req).await.map_err(client::status)?.into_inner();
            let latest = r.secret.map(|s| s.latest).unwrap_or_default();
            println!("{name}: version {latest}");
            if r.services.is_empty() {
                println!("No service follows {name}; services keep the version they have.");
            } else {
                println!("Rolling to version {latest}: {}", r.services.join(", "));
            }
        }
        SecretCmd::Rm { names } => {
            for reference in names {
                let req = RemoveSecretRequest { kind: k, reference: reference.clone() };
                control.remove_secret(req).await.map_err(client::status)?;
                println!("{reference}");
            }
        }
    }
    Ok(())
}

fn labels(list: &[String]) -> Result<std::collections::HashMap<String, String>> {
    list.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid label {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// The data from `file`, or standard input for `-`; empty or oversized data is refused here,
/// before anything is sent.
pub fn read_data(kind: SecretKind, file: &str) -> Result<Vec<u8>> {
    let data = if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
        buf
    } else {
        std::fs::read(Path::new(file)).with_context(|| format!("reading {file}"))?
    };
    let from = if file == "-" { "standard input".to_string() } else { file.to_string() };
    let max = shoal_proto::spec::secret::max_data(kind);
    if data.is_empty() {
        bail!("{from} gave no data: a {} needs at least 1 byte", kind.word());
    }
    if data.len() >= max {
        bail!(
            "{from} gave {} bytes: a {} must be under {} KiB",
            data.len(),
            kind.word(),
            max / 1024
        );
    }
    Ok(data)
}

fn created(s: &Secret) -> i64 {
    s.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0)
}

fn updated(s: &Secret) -> i64 {
    let latest = s.versions.iter().map(|v| v.created_at_ms).max().unwrap_or(0);
    s.meta.as_ref().map(|m| m.updated_at_ms).unwrap_or(0).max(latest)
}

/// `secret ls`: like Docker's, plus the latest version.
pub fn ls(secrets: &[Secret], quiet: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if quiet {
        for s in secrets {
            let _ = writeln!(out, "{}", s.id);
        }
        return out;
    }
    let rows = secrets.iter().map(|s| {
        vec![
            s.id.clone(),
            s.name.clone(),
            s.latest.to_string(),
            crate::cli::service::render::ago(created(s)),
            crate::cli::service::render::ago(updated(s)),
        ]
    });
    out + &crate::cli::output::table(&["ID", "NAME", "VERSION", "CREATED", "UPDATED"], rows)
}

fn json_one(r: &SecretResponse) -> serde_json::Value {
    let s = r.secret.clone().unwrap_or_default();
    let labels: std::collections::BTreeMap<_, _> = s.labels.iter().collect();
    let versions: Vec<_> = s
        .versions
        .iter()
        .map(|v| serde_json::json!({"Version": v.version, "CreatedAt": crate::cli::output::rfc3339_ms(v.created_at_ms)}))
        .collect();
    serde_json::json!({
        "ID": s.id,
        "Version": {"Index": s.meta.as_ref().map(|m| m.version).unwrap_or(0)},
        "CreatedAt": crate::cli::output::rfc3339_ms(created(&s)),
        "UpdatedAt": crate::cli::output::rfc3339_ms(updated(&s)),
        "Spec": {"Name": s.name, "Labels": labels},
        "Latest": s.latest,
        "Versions": versions,
        "Services": r.services,
    })
}

fn pretty_one(r: &SecretResponse) -> String {
    use std::fmt::Write;
    let s = r.secret.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "ID:              {}", s.id);
    let _ = writeln!(out, "Name:            {}", s.name);
    if !s.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        let labels: std::collections::BTreeMap<_, _> = s.labels.iter().collect();
        for (k, v) in labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    let _ = writeln!(out, "Created at:      {}", crate::cli::output::rfc3339_ms(created(&s)));
    let _ = writeln!(out, "Updated at:      {}", crate::cli::output::rfc3339_ms(updated(&s)));
    let kept: Vec<String> = s.versions.iter().map(|v| v.version.to_string()).collect();
    let _ = writeln!(out, "Version:         {} (kept: {})", s.latest, kept.join(", "));
    let used = if r.services.is_empty() { "-".to_string() } else { r.services.join(", ") };
    let _ = writeln!(out, "Used by:         {used}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str) -> Secret {
        Secret {
            id: "abcdefghijklmnopqrstuvwxy".into(),
            name: name.into(),
            latest: 2,
            labels: [("team".to_string(), "db".to_string())].into(),
            versions: vec![
                SecretVersion { version: 1, data: Vec::new(), created_at_ms: 1_000 },
                SecretVersion { version: 2, data: Vec::new(), created_at_ms: 2_000 },
            ],
            meta: Some(Meta { version: 7, created_at_ms: 1_000, updated_at_ms: 2_000 }),
            ..Default::default()
        }
    }

    #[test]
    fn listings_show_metadata_and_versions() {
        let out = ls(&[secret("psql_user")], false);
        let mut lines = out.lines();
        assert!(lines.next().unwrap().starts_with("ID"));
        let row = lines.next().unwrap();
        assert!(row.contains("psql_user") && row.contains(" 2 "), "{row}");
        assert_eq!(ls(&[secret("x")], true), "abcdefghijklmnopqrstuvwxy\n");
        let r = SecretResponse { secret: Some(secret("psql_user")), services: vec!["db".into()] };
        let pretty = pretty_one(&r);
        assert!(pretty.contains("Version:         2 (kept: 1, 2)"), "{pretty}");
        assert!(pretty.contains("Used by:         db") && pretty.contains(" - team=db"));
        let json = json_one(&r);
        assert_eq!(json["Spec"]["Name"], "psql_user");
        assert_eq!(json["Latest"], 2);
        assert!(json.get("Data").is_none());
    }

    #[test]
    fn empty_or_oversized_data_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = read_data(SecretKind::Secret, empty.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("gave no data"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 500 * 1024]).unwrap();
        let e = read_data(SecretKind::Secret, big.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("under 500 KiB"), "{e}");
        assert!(read_data(SecretKind::Config, big.to_str().unwrap()).is_ok());
        let e = read_data(SecretKind::Secret, "/nonexistent/x").unwrap_err();
        assert!(format!("{e:#}").contains("reading /nonexistent/x"), "{e:#}");
    }
}
