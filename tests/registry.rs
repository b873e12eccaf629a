//! The registry client (`shoal_registry`) against a real registry: Debian's `docker-registry`
//! on loopback, with TLS from a test CA and htpasswd logins. Pushes and pulls a three-layer
//! image; refuses an unknown CA (with the certs.d hint) and plain HTTP unless the registry is
//! named insecure; refuses missing and wrong logins; refuses a blob changed in the registry's
//! storage and keeps nothing of it; resumes a download whose connection was cut; and rides
//! out a registry that is down for a moment; four pulls of one image into a node's store share
//! one download of each blob; a hostile registry (lying digests, huge or schema-1 or garbage
//! manifests, blobs longer than said) is refused with what was wrong. No root needed, but for
//! the shared download (unpacking keeps owners).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_registry::{
    Client, Credentials, Descriptor, ImageRef, Insecure, Platform, RegistryError, Settings,
};
use shoal_testkit::registry::{RegistryOpts, TestRegistry};

const USER: &str = "pusher";
const PASSWORD: &str = "pw-registry-test-3f1";

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn have_registry() -> bool {
    let there = Path::new(shoal_testkit::registry::REGISTRY_BIN).exists();
    if !there && std::env::var_os("CI").is_some() {
        panic!("the registry tests need docker-registry (apt-get install docker-registry)");
    }
    if !there {
        eprintln!("skipped: no docker-registry");
    }
    there
}

fn registry(dir: &Path, tls: bool, login: bool) -> TestRegistry {
    TestRegistry::start(
        dir,
        RegistryOpts {
            tls,
            htpasswd: login.then(|| (USER.to_string(), PASSWORD.to_string())),
            listen: free_addr(),
            wrap: Vec::new(),
        },
    )
    .unwrap()
}

/// A registry with its CA in a fresh certs.d, and a scratch directory.
struct Fixture {
    dir: tempfile::TempDir,
    reg: TestRegistry,
    certs: PathBuf,
    work: PathBuf,
}

fn fixture(login: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("reg"), true, login);
    let certs = dir.path().join("certs.d");
    reg.install_ca(&certs);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Fixture { dir, reg, certs, work }
}

fn creds() -> Credentials {
    Credentials { username: USER.into(), password: PASSWORD.into() }
}

fn client(certs: &Path, insecure: Vec<Insecure>) -> Client {
    Client::new(Settings { certs_dir: certs.to_path_buf(), insecure }).unwrap()
}

fn sha256(b: &[u8]) -> String {
    shoal_registry::sha256(b)
}

fn gzip_tar(files: &[(&str, Vec<u8>)]) -> (Vec<u8>, String) {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    shoal_testkit::registry::gzip_layer(&files)
}

/// A pushed image: its manifest digest and blobs (config first) with their bytes.
struct Pushed {
    digest: String,
    blobs: Vec<(Descriptor, Vec<u8>)>,
}

/// Pushes an image of `layers` (each a list of files) as `r` through `c`.
async fn push(
    c: &Client,
    r: &ImageRef,
    creds: Option<&Credentials>,
    layers: &[Vec<(&str, Vec<u8>)>],
    dir: &Path,
) -> Pushed {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let (gz, diff_id) = gzip_tar(files);
        diff_ids.push(diff_id);
        let d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: sha256(&gz),
            size: gz.len() as u64,
        };
        blobs.push((d, gz));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = Descriptor {
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        digest: sha256(&config),
        size: config.len() as u64,
    };
    blobs.insert(0, (cd.clone(), config));
    for (d, bytes) in &blobs {
        let f = dir.join(&d.digest[7..]);
        std::fs::write(&f, bytes).unwrap();
        c.push_blob(r, d, &f, creds).await.unwrap();
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cd,
        "layers": blobs[1..].iter().map(|(d, _)| d).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = c
        .push_manifest(r, "application/vnd.oci.image.manifest.v1+json", &manifest, creds)
        .await
        .unwrap();
    assert_eq!(digest, sha256(&manifest));
    Pushed { digest, blobs }
}

fn three_layers() -> Vec<Vec<(&'static str, Vec<u8>)>> {
    vec![
        vec![("etc/os-release", b"NAME=test\n".to_vec())],
        vec![("usr/bin/tool", vec![7u8; 100_000])],
        vec![("srv/data", (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect())],
    ]
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn push_and_pull_a_three_layer_image_over_tls_with_a_login() {
    if !have_registry() {
        return;
    }
    let Fixture { dir, reg, certs, work } = fixture(true);
    let c = client(&certs, Vec::new());
    let r = ImageRef::parse(&format!("{}/team/app:1", reg.host)).unwrap();

    c.login(&r.registry, &creds()).await.unwrap();
    let pushed = push(&c, &r, Some(&creds()), &three_layers(), &work).await;
    assert_eq!(c.resolve(&r, Some(&creds())).await.unwrap(), pushed.digest);

    let pulled = c.manifest(&r, Some(&creds()), &Platform::host()).await.unwrap();
    assert_eq!(pulled.pinned, pushed.digest);
    assert_eq!(pulled.layers.len(), 3);
    assert_eq!(pulled.config, pushed.blobs[0].0);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (d, bytes) in &pushed.blobs {
        let dest = out.join(&d.digest[7..]);
        c.fetch_blob(&r, d, &dest, Some(&creds()), &|_| {}).await.unwrap();
        assert_eq!(&std::fs::read(&dest).unwrap(), bytes, "blob {} came back changed", d.digest);
    }
    // A pull by digest finds the same manifest.
    let by_digest = r.with_digest(&pushed.digest);
    let again = c.manifest(&by_digest, Some(&creds()), &Platform::host()).await.unwrap();
    assert_eq!(again.manifest, pulled.manifest);
    // A missing tag is NotFound, naming it.
    let missing = ImageRef::parse(&format!("{}/team/app:nope", reg.host)).unwrap();
    match c.resolve(&missing, Some(&creds())).await {
        Err(RegistryError::NotFound { reference, .. }) => assert!(reference.contains("app:nope")),
        other => panic!("a missing tag gave {other:?}"),
    }
}

#[tokio::test]
async fn logins_are_required_and_checked() {
    if !have_registry() {
        return;
    }
    let f = fixture(true);
    let (reg, c) = (&f.reg, client(&f.certs, Vec::new()));
    let r = ImageRef::parse(&format!("{}/app:1", reg.host)).unwrap();
    let wrong = Credentials { username: USER.into(), password: "not-it".into() };
    for (who, got) in [
        ("no login", c.resolve(&r, None).await),
        ("a wrong password", c.resolve(&r, Some(&wrong)).await),
    ] {
        match got {
            Err(RegistryError::Unauthorized { registry, .. }) => assert_eq!(registry, reg.host),
            other => panic!("{who} gave {other:?}"),
        }
    }
    assert!(matches!(c.login(&reg.host, &wrong).await, Err(RegistryError::Unauthorized { .. })));
    c.login(&reg.host, &creds()).await.unwrap();
    // Let in with the login (the tag is simply missing)...
    assert!(matches!(c.resolve(&r, Some(&creds())).await, Err(RegistryError::NotFound { .. })));
    // ...which the same client never lends to a caller without it, or with another one.
    for (who, got) in [
        ("no login, after a good one", c.resolve(&r, None).await),
        ("a wrong password, after a good one", c.resolve(&r, Some(&wrong)).await),
    ] {
        assert!(matches!(got, Err(RegistryError::Unauthorized { .. })), "{who}: {got:?}");
    }
}

#[tokio::test]
async fn unknown_cas_and_plain_http_are_refused_unless_the_registry_is_named_insecure() {
    if !have_registry() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = registry(&dir.path().join("tls"), true, false);
    let plain = registry(&dir.path().join("plain"), false, false);
    let certs = dir.path().join("certs.d");
    let c = client(&certs, Vec::new());

    let r = ImageRef::parse(&format!("{}/app:1", tls.host)).unwrap();
    let e = c.resolve(&r, None).await.unwrap_err();
    let hint = certs.join(&tls.host).join("ca.crt");
    assert!(matches!(e, RegistryError::UnknownAuthority { .. }), "{e:?}");
    assert!(e.to_string().contains(&hint.display().to_string()), "no certs.d hint: {e}");
    assert!(e.to_string().contains("unknown authority"), "{e}");
    // Once the CA is where the message says, the same client gets in.
    tls.install_ca(&certs);
    assert!(matches!(c.resolve(&r, None).await, Err(RegistryError::NotFound { .. })));

    let p = ImageRef::parse(&format!("{}/app:1", plain.host)).unwrap();
    let e = c.resolve(&p, None).await.unwrap_err();
    assert!(matches!(e, RegistryError::PlainHttp { .. }), "{e:?}");
    assert!(e.to_string().contains("--insecure-registry"), "{e}");

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    for insecure in [Insecure::Host(plain.host.clone()), "127.0.0.0/8".parse().unwrap()] {
        let c = client(&certs, vec![insecure]);
        let pushed = push(&c, &p, None, &three_layers()[..1], &work).await;
        assert_eq!(c.resolve(&p, None).await.unwrap(), pushed.digest);
    }
}

#[tokio::test]
async fn a_blob_changed_in_the_registry_is_refused_and_nothing_is_kept() {
    if !have_registry() {
        return;
    }
    let Fixture { dir, reg, certs, work } = fixture(false);
    let c = client(&certs, Vec::new());
    let r = ImageRef::parse(&format!("{}/app:1", reg.host)).unwrap();
    let pushed = push(&c, &r, None, &three_layers(), &work).await;
    let (layer, _) = &pushed.blobs[3];
    let stored = reg.blob_path(&layer.digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&stored, bytes).unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join(&layer.digest[7..]);
    match c.fetch_blob(&r, layer, &dest, None, &|_| {}).await {
        Err(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, layer.digest);
            assert_ne!(actual, layer.digest);
        }
        other => panic!("a changed blob gave {other:?}"),
    }
    assert!(files_in(&out).is_empty(), "something was kept: {:?}", files_in(&out));
}

/// A TCP proxy in front of `to` that cuts the first connection that downloads a blob after
/// `cut_after` bytes of the answer; it counts connections and notes whether a request asked
/// for a range.
struct CuttingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    ranged: Arc<AtomicBool>,
    /// Blob GETs seen.
    blob_gets: Arc<AtomicUsize>,
}

fn cutting_proxy(to: SocketAddr, cut_after: usize) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let ranged = Arc::new(AtomicBool::new(false));
    let blob_gets = Arc::new(AtomicUsize::new(0));
    let (n, rg, bg) = (connections.clone(), ranged.clone(), blob_gets.clone());
    let cut_done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            n.fetch_add(1, Ordering::SeqCst);
            let server = TcpStream::connect(to).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (rg, bg) = (rg.clone(), bg.clone());
            let blob = Arc::new(AtomicBool::new(false));
            let (blob_w, blob_r, cut_done) = (blob.clone(), blob, cut_done.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(k) = c_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let req = String::from_utf8_lossy(&buf[..k]).to_ascii_lowercase();
                    if req.contains("range: bytes=") {
                        rg.store(true, Ordering::SeqCst);
                    }
                    if req.starts_with("get /v2/") && req.contains("/blobs/") {
                        blob_w.store(true, Ordering::SeqCst);
                        bg.fetch_add(1, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut sent = 0;
                let mut cutting = false;
                while let Ok(k) = s_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    if !cutting && blob_r.load(Ordering::SeqCst) {
                        cutting = !cut_done.swap(true, Ordering::SeqCst);
                    }
                    let k = if cutting { k.min(cut_after.saturating_sub(sent)) } else { k };
                    if k == 0 || c_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
                let _ = s_in.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    CuttingProxy { addr, connections, ranged, blob_gets }
}

#[tokio::test]
async fn a_download_cut_short_resumes_where_it_stopped() {
    if !have_registry() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("reg"), false, false);
    let certs = dir.path().join("certs.d");
    let direct = client(&certs, vec![Insecure::Host(reg.host.clone())]);
    let r = ImageRef::parse(&format!("{}/big:1", reg.host)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Incompressible bytes, so the layer blob is as large as its contents.
    let mut noise = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let pushed = push(&direct, &r, None, &[vec![("big", noise)]], &work).await;
    let (layer, bytes) = &pushed.blobs[1];

    let proxy = cutting_proxy(reg.addr, 1 << 20);
    let via = ImageRef::parse(&format!("{}/big:1", proxy.addr)).unwrap();
    let c = client(&certs, vec![Insecure::Host(proxy.addr.to_string())]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join(&layer.digest[7..]);
    c.fetch_blob(&via, layer, &dest, None, &|_| {}).await.unwrap();
    assert_eq!(&std::fs::read(&dest).unwrap(), bytes);
    assert!(proxy.connections.load(Ordering::SeqCst) >= 2, "the cut connection was not replaced");
    assert!(proxy.ranged.load(Ordering::SeqCst), "the download started over instead of resuming");
}

#[tokio::test]
async fn a_registry_down_for_a_moment_is_waited_for() {
    if !have_registry() {
        return;
    }
    let Fixture { dir, mut reg, certs, work } = fixture(false);
    let c = client(&certs, Vec::new());
    let r = ImageRef::parse(&format!("{}/app:1", reg.host)).unwrap();
    let pushed = push(&c, &r, None, &three_layers()[..1], &work).await;
    reg.stop();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        reg.restart();
        reg
    });
    let (layer, bytes) = &pushed.blobs[1];
    let dest: PathBuf = dir.path().join("layer");
    c.fetch_blob(&r, layer, &dest, None, &|_| {}).await.unwrap();
    assert_eq!(&std::fs::read(&dest).unwrap(), bytes);
    let mut reg = back.join().unwrap();
    // Down for good: the error says the registry is unreachable, after the retries.
    reg.stop();
    match c.resolve(&r, None).await {
        Err(e @ RegistryError::Unreachable { .. }) => assert!(e.to_string().contains(&reg.host)),
        other => panic!("a registry that is down gave {other:?}"),
    }
}

#[tokio::test]
async fn tasks_that_want_the_same_image_share_one_download() {
    // Unpacking keeps the layers' owners: root's work.
    if !have_registry() || !shoal_testkit::netns::root_or_skip("share_one_download") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("reg"), false, false);
    let certs = dir.path().join("certs.d");
    let direct = client(&certs, vec![Insecure::Host(reg.host.clone())]);
    let r = ImageRef::parse(&format!("{}/shared:1", reg.host)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    push(&direct, &r, None, &three_layers(), &work).await;

    let proxy = cutting_proxy(reg.addr, usize::MAX);
    let via = ImageRef::parse(&format!("{}/shared:1", proxy.addr)).unwrap();
    let c = client(&certs, vec![Insecure::Host(proxy.addr.to_string())]);
    let store = Arc::new(shoal_agent::image::ImageStore::open(dir.path().join("images")).unwrap());
    let puller = shoal_agent::image::Puller::new(c, store.clone());
    let pulls = (0..4).map(|_| puller.pull(&via, None));
    let images = futures::future::join_all(pulls).await;
    let ids: Vec<String> = images.into_iter().map(|i| i.unwrap().id).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "four pulls, four images: {ids:?}");
    // Config and three layers, each fetched once for all four pulls.
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 4, "blobs were fetched more than once");
    let info = store.resolve(&via.familiar()).unwrap();
    assert_eq!(info.layers.len(), 3);
    // Pulled again, nothing is fetched: the store has every blob.
    puller.pull(&via, None).await.unwrap();
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 4);
}

/// A hostile registry on loopback (plain HTTP): every request gets `answer(path)`, a full
/// HTTP response.
fn hostile_registry(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = conn.write_all(&answer(&path));
                let _ = conn.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

fn http(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest_of(layer_size: u64) -> Vec<u8> {
    let d = |s: u64| serde_json::json!({"mediaType": "x", "digest": sha256(b"layer"), "size": s});
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI, "config": d(5), "layers": [d(layer_size)],
    }))
    .unwrap()
}

/// What a hostile registry does, what it answers, and the error it must get.
type Hostile = (&'static str, fn(&str) -> Vec<u8>, fn(&RegistryError) -> bool);

#[tokio::test]
async fn a_hostile_registry_is_refused_with_what_was_wrong() {
    let cases: [Hostile; 5] = [
        (
            "a manifest whose bytes are not its stated digest",
            |_| {
                let body = manifest_of(5);
                let lie = sha256(b"something else");
                http(
                    "200 OK",
                    &[("Content-Type", OCI.into()), ("Docker-Content-Digest", lie)],
                    &body,
                )
            },
            |e| matches!(e, RegistryError::DigestMismatch { .. }),
        ),
        (
            "a manifest larger than any image needs",
            |_| http("200 OK", &[("Content-Type", OCI.into())], &vec![b' '; 5 << 20]),
            |e| matches!(e, RegistryError::BadManifest { reason, .. } if reason.contains("larger")),
        ),
        (
            "a Docker schema 1 manifest",
            |_| {
                let t = "application/vnd.docker.distribution.manifest.v1+prettyjws";
                http("200 OK", &[("Content-Type", t.into())], br#"{"schemaVersion":1}"#)
            },
            |e| matches!(e, RegistryError::BadManifest { reason, .. } if reason.contains("schema 1")),
        ),
        (
            "garbage for a manifest",
            |_| http("200 OK", &[("Content-Type", OCI.into())], b"\x00\xffnot json"),
            |e| matches!(e, RegistryError::BadManifest { .. }),
        ),
        (
            "a blob longer than its descriptor says",
            |path| {
                if path.contains("/blobs/") {
                    http("200 OK", &[], b"layer and then some more bytes")
                } else {
                    http("200 OK", &[("Content-Type", OCI.into())], &manifest_of(5))
                }
            },
            |e| matches!(e, RegistryError::SizeMismatch { .. }),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, answer, expected) in cases {
        let addr = hostile_registry(answer);
        let c = client(&dir.path().join("certs.d"), vec![Insecure::Host(addr.to_string())]);
        let r = ImageRef::parse(&format!("{addr}/evil:1")).unwrap();
        let result = match c.manifest(&r, None, &Platform::host()).await {
            Ok(pulled) => {
                let dest = dir.path().join("blob");
                c.fetch_blob(&r, &pulled.layers[0], &dest, None, &|_| {}).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        match result {
            Err(e) => {
                assert!(expected(&e), "{what}: {e:?}");
                assert!(!e.to_string().is_empty());
            }
            Ok(()) => panic!("{what}: accepted"),
        }
        assert!(!dir.path().join("blob").exists(), "{what}: a blob was kept");
    }
}
