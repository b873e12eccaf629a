//! `shoal-bench pull` (root): pulling one image from one local registry, Shoal beside Docker,
//! in the same run. A real registry (`docker-registry`, TLS from a test CA) listens on the
//! LAN of three network-namespace hosts; each host runs a `shoald` and a `dockerd`, both told
//! the CA (Shoal: its `--certs-dir`; Docker: `/etc/docker/certs.d`, removed afterwards). The
//! image: `--layers` gzip layers holding `--size-mb` MB together, half-compressible bytes,
//! pushed once through Shoal's registry client.
//!
//! Figures, wall-clock of the CLI command, medians of `--runs`: a cold pull on one host
//! (`shoal image pull` vs `docker pull`; the image, its layers and blobs removed before each
//! run), and the three hosts pulling at once (until the last one is done). Goal: Shoal's single
//! pull at most 0.8x Docker's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_registry::{Client, Credentials, Descriptor, ImageRef, Insecure, Platform, Settings};
use shoal_testkit::netns::{DockerSwarm, Net, Node};
use shoal_testkit::registry::{RegistryOpts, TestRegistry};

use crate::common::{load_note, median, temp_dir};

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Megabytes of image content (uncompressed), all layers together
    #[arg(long, default_value_t = 100)]
    pub size_mb: usize,
    /// Layers it is split into
    #[arg(long, default_value_t = 5)]
    pub layers: usize,
    /// Runs of each figure; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The docker CLI
    #[arg(long, default_value = "docker")]
    pub docker: PathBuf,
    /// The dockerd binary
    #[arg(long, default_value = "dockerd")]
    pub dockerd: PathBuf,
    /// The shoald to run (default: beside this binary)
    #[arg(long)]
    pub shoald: Option<PathBuf>,
}

const HOSTS: usize = 3;
const REPO: &str = "bench/pull";

/// `bytes` of half-compressible content (4 random bits a byte), from `seed`.
fn content(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x & 0x0f) as u8
        })
        .collect()
}

/// A gzip'd tar layer of one file, and the digest of its uncompressed tar.
fn layer(i: usize, bytes: usize) -> Result<(Vec<u8>, String)> {
    let data = content(bytes, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
    Ok(shoal_testkit::registry::gzip_layer(&[(&format!("data/layer-{i}.bin"), &data)]))
}

/// Builds the image and pushes it as `r`; returns the bytes pushed.
async fn push_image(c: &Client, r: &ImageRef, args: &PullArgs, dir: &Path) -> Result<u64> {
    let per = (args.size_mb << 20) / args.layers.max(1);
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..args.layers.max(1) {
        let (gz, diff_id) = layer(i, per)?;
        diff_ids.push(diff_id);
        let d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: shoal_registry::sha256(&gz),
            size: gz.len() as u64,
        };
        blobs.push((d, gz));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let cd = Descriptor {
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        digest: shoal_registry::sha256(&config),
        size: config.len() as u64,
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cd,
        "layers": blobs.iter().map(|(d, _)| d).collect::<Vec<_>>(),
    }))?;
    blobs.insert(0, (cd, config));
    let mut total = 0;
    for (d, bytes) in &blobs {
        let f = dir.join(&d.digest[7..]);
        std::fs::write(&f, bytes)?;
        c.push_blob(r, d, &f, None::<&Credentials>).await?;
        total += d.size;
    }
    c.push_manifest(r, "application/vnd.oci.image.manifest.v1+json", &manifest, None).await?;
    Ok(total)
}

fn must(out: std::process::Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Wall-clock seconds of `f`.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Removes the image and everything of it from a Shoal node and a Docker daemon.
fn forget(node: &Node, swarm: &DockerSwarm, i: usize, image: &str) -> Result<()> {
    let _ = node.shoal(&["image", "rm", image]);
    must(node.shoal(&["image", "prune"]), "shoal image prune")?;
    let _ = swarm.docker_text(i, &["rmi", "-f", image]);
    let _ = swarm.docker_text(i, &["image", "prune", "-af"]);
    Ok(())
}

/// The CA in Docker's certs.d for `host`; removed (with the directories it made) when dropped.
struct DockerCa(Vec<PathBuf>);

impl DockerCa {
    fn install(host: &str, pem: &str) -> Result<DockerCa> {
        let dir = Path::new("/etc/docker/certs.d").join(host);
        let mut made = Vec::new();
        for d in
            ["/etc/docker", "/etc/docker/certs.d"].iter().map(PathBuf::from).chain([dir.clone()])
        {
            if !d.exists() {
                std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                made.push(d);
            }
        }
        std::fs::write(dir.join("ca.crt"), pem)?;
        made.push(dir.join("ca.crt"));
        Ok(DockerCa(made))
    }
}

impl Drop for DockerCa {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

pub async fn pull(args: PullArgs) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("shoal-bench pull needs root (network namespaces, dockerd)");
    }
    let dir = temp_dir("shoal-bench-pull-")?;
    let subnet = (std::process::id() % 200 + 20) as u8;
    let net = Net::with("pl", 241, subnet, HOSTS);
    let reg_ip = net.outside_ip();
    let port = crate::common::free_port()?;
    let reg = TestRegistry::start(
        &dir.path().join("registry"),
        RegistryOpts {
            tls: true,
            htpasswd: None,
            listen: format!("{reg_ip}:{port}").parse()?,
            wrap: Vec::new(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let certs = dir.path().join("certs.d");
    reg.install_ca(&certs);
    let _docker_ca = DockerCa::install(&reg.host, reg.ca_pem.as_deref().unwrap_or_default())?;
    let client =
        Client::new(Settings { certs_dir: certs.clone(), insecure: Vec::<Insecure>::new() })?;
    let image = format!("{}/{REPO}:1", reg.host);
    let r = ImageRef::parse(&image)?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    eprintln!("pushing a {} MB image of {} layers to {}", args.size_mb, args.layers, reg.host);
    let pushed = push_image(&client, &r, &args, &work).await?;

    let shoald = match &args.shoald {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("shoald"),
    };
    if !shoald.exists() {
        bail!("no shoald at {} (cargo build --release, or --shoald PATH)", shoald.display());
    }
    let mut nodes: Vec<Node> = (1..=HOSTS)
        .map(|i| {
            let mut n = Node::new(&net, i, dir.path()).with_product_shoald(&shoald);
            n.args = vec!["--certs-dir".into(), certs.display().to_string()];
            n
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let swarm = DockerSwarm::start(&net, &args.docker, &args.dockerd)?;
    let version =
        swarm.docker(0, &["version", "--format", "{{.Server.Version}}"]).unwrap_or_default();
    let result = measure(&args, &nodes, &swarm, &image);
    drop(swarm);
    drop(nodes);
    let (single, parallel) = result?;
    let row = |what: &str, s: &[f64], d: &[f64], goal: &str| {
        let (sm, dm) = (median(s.to_vec()), median(d.to_vec()));
        println!("| {what} | {sm:.2} s | {dm:.2} s | {:.2}x | {goal} |", sm / dm);
    };
    println!(
        "\nshoal-bench pull: {} MB in {} gzip layers ({:.1} MB pushed), {} runs, medians; {}",
        args.size_mb,
        args.layers,
        pushed as f64 / 1e6,
        args.runs,
        load_note()
    );
    println!("| pull | Shoal | Docker {} | Shoal/Docker | goal |", version.trim());
    println!("|---|---|---|---|---|");
    row("cold, one node", &single.0, &single.1, "<= 0.8x");
    row("three nodes at once", &parallel.0, &parallel.1, "");
    Ok(())
}

type Samples = (Vec<f64>, Vec<f64>);

fn measure(
    args: &PullArgs,
    nodes: &[Node],
    swarm: &DockerSwarm,
    image: &str,
) -> Result<(Samples, Samples)> {
    let mut single: Samples = (Vec::new(), Vec::new());
    let mut parallel: Samples = (Vec::new(), Vec::new());
    // One warm-up pull each (connections, caches of the registry), then forgotten.
    must(nodes[1].shoal(&["image", "pull", image]), "shoal image pull")?;
    swarm.docker(1, &["pull", "-q", image])?;
    for run in 0..args.runs.max(1) {
        for (i, n) in nodes.iter().enumerate() {
            forget(n, swarm, i, image)?;
        }
        sync_caches();
        // Alternate who goes first, so neither always meets a colder registry.
        let shoal =
            || timed(|| must(nodes[1].shoal(&["image", "pull", image]), "shoal image pull"));
        let docker = || timed(|| swarm.docker(1, &["pull", "-q", image]).map(drop));
        let (s, d) = if run % 2 == 0 {
            (shoal()?, docker()?)
        } else {
            let d = docker()?;
            (shoal()?, d)
        };
        eprintln!("run {}: one node: shoal {s:.2} s, docker {d:.2} s", run + 1);
        single.0.push(s);
        single.1.push(d);

        for (i, n) in nodes.iter().enumerate() {
            forget(n, swarm, i, image)?;
        }
        sync_caches();
        let s = timed(|| {
            std::thread::scope(|sc| {
                let handles: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        sc.spawn(move || {
                            must(n.shoal(&["image", "pull", image]), "shoal image pull")
                        })
                    })
                    .collect();
                handles.into_iter().try_for_each(|h| h.join().expect("a pull thread"))
            })
        })?;
        let d = timed(|| {
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..nodes.len())
                    .map(|i| sc.spawn(move || swarm.docker(i, &["pull", "-q", image]).map(drop)))
                    .collect();
                handles.into_iter().try_for_each(|h| h.join().expect("a pull thread"))
            })
        })?;
        eprintln!("run {}: three nodes: shoal {s:.2} s, docker {d:.2} s", run + 1);
        parallel.0.push(s);
        parallel.1.push(d);
    }
    Ok((single, parallel))
}

/// Writes dirty pages out, so one run's removals do not slow the next run's writes.
fn sync_caches() {
    rustix::fs::sync();
    std::thread::sleep(Duration::from_millis(200));
}
