//! `shoal image …`: images on this node (load, import, pull, push, tag, list, remove, prune),
//! through the local socket. Pulls and pushes send the saved login for the image's registry.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::{client, output};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Load images from a docker-archive or OCI-layout tarball
    Load {
        /// The tarball (as written by 'docker save' or an OCI layout)
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Make an image from a root filesystem tarball
    Import {
        /// The root filesystem tarball
        file: PathBuf,
        /// NAME:TAG for the new image
        reference: String,
    },
    /// List images
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
        /// Show the registry digests (repository@sha256:…) of each image
        #[arg(long)]
        digests: bool,
    },
    /// Remove images
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Pull an image from a registry onto this node
    Pull {
        /// NAME[:TAG|@DIGEST]
        image: String,
        /// Skip the signature check SHOAL_CONTENT_TRUST=1 asks for (a cluster that requires
        /// trust still refuses to run an unsigned image)
        #[arg(long)]
        disable_content_trust: bool,
    },
    /// Push an image of this node to the registry its name says
    Push {
        /// NAME[:TAG]
        image: String,
    },
    /// Give an image another name
    Tag {
        /// NAME[:TAG] or ID of the image
        source: String,
        /// The new NAME[:TAG]
        target: String,
    },
    /// Remove unnamed images no task runs, and layers and blobs no image uses
    Prune {
        /// Do not ask for confirmation (accepted for Docker's muscle memory; prune never asks)
        #[arg(short, long)]
        force: bool,
    },
    /// List known vulnerabilities of an image on this node (against `shoal scan db import`)
    Scan {
        image: String,
        /// table or json
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScanCmd {
    /// This node's vulnerability database
    #[command(subcommand)]
    Db(ScanDbCmd),
}

#[derive(Debug, Subcommand)]
pub enum ScanDbCmd {
    /// Add the advisories of an OSV JSON file, or of every .json file under a directory
    Import { path: PathBuf },
}

/// `shoal scan …`, on the local node.
pub async fn scan(cmd: ScanCmd, channel: Channel) -> Result<()> {
    let ScanCmd::Db(ScanDbCmd::Import { path }) = cmd;
    let path = std::path::absolute(&path).with_context(|| format!("{}", path.display()))?;
    let req = ScanDbImportRequest { path: path.display().to_string() };
    let r =
        DaemonClient::new(channel).scan_db_import(req).await.map_err(client::status)?.into_inner();
    println!("Imported {} advisories; the database holds {}.", r.imported, r.advisories);
    Ok(())
}

fn absolute(path: &std::path::Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    Ok(abs.display().to_string())
}

/// Runs one `image` command.
pub async fn run(cmd: ImageCmd, channel: Channel) -> Result<()> {
    let mut daemon = DaemonClient::new(channel.clone());
    match cmd {
        ImageCmd::Load { input } => {
            let req = ImageLoadRequest { path: absolute(&input)? };
            let list = daemon.image_load(req).await.map_err(client::status)?.into_inner();
            for i in &list.images {
                println!("Loaded image: {} ({})", i.names.join(", "), i.id);
            }
        }
        ImageCmd::Import { file, reference } => {
            let req = ImageImportRequest { path: absolute(&file)?, reference };
            let list = daemon.image_import(req).await.map_err(client::status)?.into_inner();
            for i in &list.images {
                println!("{}", i.id);
            }
        }
        ImageCmd::Ls { quiet, digests } => {
            let list =
                daemon.image_ls(ImageLsRequest {}).await.map_err(client::status)?.into_inner();
            print!("{}", output::images(&list, quiet, digests));
        }
        ImageCmd::Pull { image, disable_content_trust } => {
            let auth = super::login::for_image(&image)?;
            let reference = if super::trust::client_required() && !disable_content_trust {
                let digest = super::trust::client_verify(&channel, &image).await?;
                println!("Pulling {image} (signed: {digest})");
                let r = shoal_registry::ImageRef::parse(&image)?;
                format!("{}@{digest}", r.name())
            } else {
                println!("Pulling {image}");
                image.clone()
            };
            let signed = reference != image;
            let req = ImagePullRequest { reference: reference.clone(), auth };
            let list = daemon.image_pull(req).await.map_err(client::status)?.into_inner();
            if signed {
                // Pulled by the signed digest; the name follows it here.
                let req = ImageTagRequest { source: reference, target: image.clone() };
                daemon.image_tag(req).await.map_err(client::status)?;
            }
            for i in &list.images {
                println!("Digest: {}", i.repo_digests.last().map(String::as_str).unwrap_or(""));
                println!("Status: image {image} is up to date on this node ({})", i.id);
            }
        }
        ImageCmd::Push { image } => {
            let auth = super::login::for_image(&image)?;
            let req = ImagePushRequest { reference: image.clone(), auth };
            let r = daemon.image_push(req).await.map_err(client::status)?.into_inner();
            println!("Pushed {image}: {} ({} bytes)", r.repo_digest, r.size);
        }
        ImageCmd::Tag { source, target } => {
            let req = ImageTagRequest { source, target };
            daemon.image_tag(req).await.map_err(client::status)?;
        }
        ImageCmd::Scan { image, format } => {
            let r = daemon
                .image_scan(ImageScanRequest { reference: image.clone() })
                .await
                .map_err(client::status)?
                .into_inner();
            let report: shoal_proto::spec::scan::Report =
                serde_json::from_slice(&r.report).context("the daemon's scan report")?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", output::scan_report(&image, &report, r.advisories));
            }
        }
        ImageCmd::Prune { force: _ } => {
            let r = daemon
                .image_prune(ImagePruneRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            for id in &r.images {
                println!("Deleted: {id}");
            }
            println!(
                "Removed {} layers and {} blobs; reclaimed {:.1}MB",
                r.layers,
                r.blobs,
                r.bytes as f64 / 1e6
            );
        }
        ImageCmd::Rm { images } => {
            for reference in images {
                let r =
                    daemon.image_rm(ImageRmRequest { reference }).await.map_err(client::status)?;
                println!("Deleted: {}", r.into_inner().id);
            }
        }
    }
    Ok(())
}
