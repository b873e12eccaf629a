//! Owns `shoal stack …`: stacks are services, secrets and configs deployed together from a
//! compose file and tied by the `com.docker.stack.namespace` label, as in Docker. Reading the
//! file is in `compose`/`service`/`yaml` (pure), deploying in `deploy`/`objects`.

pub mod compose;
pub mod deploy;
mod interpolate;
mod keys;
pub mod networks;
pub mod objects;
mod service;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use crate::cli::client;

/// The label that ties a stack's services, secrets and configs together (Docker's).
pub const NAMESPACE: &str = "com.docker.stack.namespace";

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing one from a compose file
    Deploy {
        /// Compose file (versions 3.0–3.9 or the Compose spec); repeat it to merge override
        /// files (later ones win), `-` reads standard input
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_file: Vec<PathBuf>,
        /// Variables for ${VAR} in the files (default: .env beside the first file); the
        /// environment wins over it
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Deploy the services of this profile too (repeat it)
        #[arg(long)]
        profile: Vec<String>,
        /// Remove the stack's services that are no longer in the file
        #[arg(long)]
        prune: bool,
        /// Send this client's saved registry logins with the services
        #[arg(long)]
        with_registry_auth: bool,
        /// When to ask registries for the images' digests
        #[arg(long, value_enum, default_value = "always")]
        resolve_image: deploy::ResolveImage,
        stack: String,
    },
    /// List stacks
    #[command(alias = "list")]
    Ls,
    /// List the tasks of a stack
    Ps {
        /// Do not truncate IDs and errors
        #[arg(long)]
        no_trunc: bool,
        /// Print task IDs only
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// List the services of a stack
    Services {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// Remove stacks: their services, then the secrets and configs they created
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

/// Runs one `stack` command.
pub async fn run(cmd: StackCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel.clone());
    match cmd {
        StackCmd::Deploy {
            compose_file,
            env_file,
            profile,
            prune,
            with_registry_auth,
            resolve_image,
            stack,
        } => {
            let images = deploy::ImageOpts { resolve: resolve_image, with_registry_auth };
            let src = deploy::Sources { files: compose_file, env_file, profiles: profile };
            deploy::deploy(&channel, &stack, &src, prune, images).await
        }
        StackCmd::Ls => {
            print!("{}", stack_ls(&list_services(&mut control).await?));
            Ok(())
        }
        StackCmd::Services { quiet, stack } => {
            let services = stack_services(&mut control, &stack).await?;
            nothing_found(&services, &stack)?;
            let all = list_services(&mut control).await?;
            let ids: Vec<&str> = services.iter().map(|s| s.id.as_str()).collect();
            let services = all
                .into_iter()
                .filter(|s| s.service.as_ref().is_some_and(|s| ids.contains(&s.id.as_str())))
                .collect();
            let r = ListServicesResponse { services };
            print!("{}", crate::cli::service::service_ls(&r, quiet));
            Ok(())
        }
        StackCmd::Ps { no_trunc, quiet, stack } => {
            let services = stack_services(&mut control, &stack).await?;
            nothing_found(&services, &stack)?;
            let mut all = ListTasksResponse::default();
            for s in &services {
                let req = ListTasksRequest { service: s.id.clone(), ..Default::default() };
                let r = control.list_tasks(req).await.map_err(client::status)?.into_inner();
                all.tasks.extend(r.tasks);
                all.node_names.extend(r.node_names);
            }
            print!("{}", crate::cli::service::service_ps(&all, no_trunc, quiet));
            Ok(())
        }
        StackCmd::Rm { stacks } => {
            for stack in stacks {
                remove(&mut control, &stack).await?;
            }
            Ok(())
        }
    }
}

fn nothing_found(services: &[Service], stack: &str) -> Result<()> {
    if services.is_empty() {
        anyhow::bail!("nothing found in stack: {stack}");
    }
    Ok(())
}

async fn list_services(control: &mut ControlClient<Channel>) -> Result<Vec<ServiceSummary>> {
    let r = control.list_services(ListServicesRequest {}).await.map_err(client::status)?;
    Ok(r.into_inner().services)
}

fn stack_of(s: &Service) -> Option<&str> {
    s.spec.as_ref().and_then(|p| p.labels.get(NAMESPACE)).map(String::as_str)
}

/// The services of `stack`, by label.
pub async fn stack_services(
    control: &mut ControlClient<Channel>,
    stack: &str,
) -> Result<Vec<Service>> {
    Ok(list_services(control)
        .await?
        .into_iter()
        .filter_map(|s| s.service)
        .filter(|s| stack_of(s) == Some(stack))
        .collect())
}

/// `stack ls`: each stack and how many services it has.
pub fn stack_ls(services: &[ServiceSummary]) -> String {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for s in services.iter().filter_map(|s| s.service.as_ref()) {
        if let Some(stack) = stack_of(s) {
            *count.entry(stack).or_default() += 1;
        }
    }
    let rows = count.into_iter().map(|(stack, n)| vec![stack.to_string(), n.to_string()]);
    crate::cli::output::table(&["NAME", "SERVICES"], rows)
}

/// `stack rm`: the services first (secrets and networks in use cannot go), then the secrets,
/// configs and networks the stack created. External ones carry no stack label and stay.
async fn remove(control: &mut ControlClient<Channel>, stack: &str) -> Result<()> {
    let services = stack_services(control, stack).await?;
    let owned: Vec<Secret> = objects::existing(control)
        .await?
        .into_iter()
        .filter(|s| s.labels.get(NAMESPACE).map(String::as_str) == Some(stack))
        .collect();
    let nets = networks::existing(control).await?;
    if services.is_empty() && owned.is_empty() && !networks::has_stack_networks(&nets, stack) {
        anyhow::bail!("nothing found in stack: {stack}");
    }
    for s in &services {
        let name = s.spec.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        println!("Removing service {name}");
        let req = RemoveServiceRequest { reference: s.id.clone() };
        control.remove_service(req).await.map_err(client::status)?;
    }
    for s in &owned {
        println!("Removing {} {}", s.kind().word(), s.name);
        let req = RemoveSecretRequest { kind: s.kind, reference: s.id.clone() };
        control.remove_secret(req).await.map_err(client::status)?;
    }
    networks::remove(control, stack).await
}
