//! `shoal image …`: images on this node (load, import, list, remove), through the local socket.

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
    },
    /// Remove images
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

fn absolute(path: &std::path::Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    Ok(abs.display().to_string())
}

/// Runs one `image` command.
pub async fn run(cmd: ImageCmd, channel: Channel) -> Result<()> {
    let mut daemon = DaemonClient::new(channel);
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
        ImageCmd::Ls { quiet } => {
            let list =
                daemon.image_ls(ImageLsRequest {}).await.map_err(client::status)?.into_inner();
            print!("{}", output::images(&list, quiet));
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
