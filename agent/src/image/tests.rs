use std::io::Write;
use std::path::Path;

use super::layer::digest;
use super::*;
use crate::runtime::RootfsSource;

/// A tar of `(path, contents)` regular files.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn config_for(layers: &[&[u8]], cmd: &[&str]) -> Vec<u8> {
    let ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["A=1"], "Cmd": cmd, "WorkingDir": "/srv", "ExposedPorts": {"80/tcp": {}} },
        "rootfs": { "type": "layers", "diff_ids": ids },
    })
    .to_string()
    .into_bytes()
}

fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let bottom = tar_of(&[("etc/a", b"1"), ("etc/b", b"2"), ("var/cache/x", b"3")]);
    let top = tar_of(&[("etc/.wh.b", b""), ("var/cache/.wh..wh..opq", b""), ("var/cache/y", b"4")]);
    (bottom, top)
}

fn docker_archive(path: &Path) -> String {
    let (bottom, top) = two_layers();
    let config = config_for(&[&bottom, &top], &["/bin/sh"]);
    let id = digest(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", &id[7..]),
        "RepoTags": ["web:1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]);
    let outer = tar_of(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        (&format!("{}.json", &id[7..]), &config),
        ("l1/layer.tar", &bottom),
        ("l2/layer.tar", &top),
    ]);
    std::fs::write(path, outer).unwrap();
    id
}

fn oci_layout(path: &Path) -> String {
    let layer = gzip(&tar_of(&[("bin/tool", b"#!")]));
    let config = config_for(&[&tar_of(&[("bin/tool", b"#!")])], &["tool"]);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len() }],
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest.as_bytes()), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": "tools:2", "org.opencontainers.image.ref.name": "2" },
        }],
    });
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &digest(b)[7..]);
    let outer = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.to_string().as_bytes()),
        (&blob(manifest.as_bytes()), manifest.as_bytes()),
        (&blob(&config), &config),
        (&blob(&layer), &layer),
    ]);
    std::fs::write(path, gzip(&outer)).unwrap();
    digest(&config)
}

#[test]
fn loads_docker_archives_with_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let id = docker_archive(&dir.path().join("web.tar"));
    let loaded = store.load_archive(&dir.path().join("web.tar")).unwrap();
    assert_eq!(loaded.len(), 1);
    let img = store.resolve("web:1").unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.config.command(&[]), vec!["/bin/sh"]);
    assert_eq!(img.config.workdir.as_deref(), Some("/srv"));
    let RootfsSource::Layers(dirs) = store.rootfs(&img) else { panic!("layers expected") };
    assert_eq!(dirs.len(), 2);
    use std::os::unix::fs::FileTypeExt;
    let wh = std::fs::symlink_metadata(dirs[0].join("etc/b")).unwrap();
    assert!(wh.file_type().is_char_device(), "top layer holds the whiteout");
    assert!(dirs[1].join("etc/b").exists(), "bottom layer is unchanged");
    assert!(!dir.path().join("images/tmp").read_dir().unwrap().any(|_| true), "staging cleaned");
}

#[test]
fn loads_gzipped_oci_layouts_and_pins_digests() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let id = oci_layout(&dir.path().join("tools.tar.gz"));
    store.load_archive(&dir.path().join("tools.tar.gz")).unwrap();
    assert_eq!(store.resolve("tools:2").unwrap().id, id);
    assert_eq!(store.resolve(&format!("tools:2@{id}")).unwrap().id, id);
    assert_eq!(store.resolve(&id).unwrap().names, vec!["tools:2"]);
    let other = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        store.resolve(&format!("tools:2@{other}")),
        Err(ImageError::PinMismatch { .. })
    ));
    assert!(matches!(store.resolve("nope"), Err(ImageError::NotFound(_))));
}

#[test]
fn corrupt_blobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let staging = dir.path().join("bad");
    std::fs::create_dir_all(staging.join("blobs/sha256")).unwrap();
    let fake = format!("sha256:{}", "1".repeat(64));
    std::fs::write(staging.join("blobs/sha256").join("1".repeat(64)), b"{}").unwrap();
    std::fs::write(staging.join("oci-layout"), b"{}").unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": fake, "size": 2 }]});
    std::fs::write(staging.join("index.json"), index.to_string()).unwrap();
    let outer = dir.path().join("bad.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&outer).unwrap());
    b.append_dir_all(".", &staging).unwrap();
    b.finish().unwrap();
    drop(b);
    assert!(matches!(store.load_archive(&outer), Err(ImageError::DigestMismatch { .. })));
}

#[test]
fn import_tag_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, tar_of(&[("bin/x", b"x")])).unwrap();
    let a = store.import(&tarball, "base").unwrap();
    let again = store.import(&tarball, "base:v2").unwrap();
    assert_eq!(a.id, again.id, "same content, same id");
    assert_eq!(store.resolve("base:latest").unwrap().names, vec!["base:latest", "base:v2"]);
    store.remove("base", &[]).unwrap();
    assert!(store.resolve("base:v2").is_ok(), "still named v2");
    assert!(matches!(
        store.remove("base:v2", std::slice::from_ref(&a.id)),
        Err(ImageError::InUse(_))
    ));
    store.remove("base:v2", &[]).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!store.layer_dir(&a.layers[0]).exists(), "unused layer removed");
}
