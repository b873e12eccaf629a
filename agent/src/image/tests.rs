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

#[test]
fn loaded_layers_keep_their_blobs_for_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let id = oci_layout(&dir.path().join("tools.tar.gz"));
    store.load_archive(&dir.path().join("tools.tar.gz")).unwrap();
    let plan = store.push_plan("tools:2").unwrap();
    assert_eq!(plan.id, id);
    assert_eq!(plan.layers.len(), 1);
    assert_eq!(plan.layers[0].media_type, media::OCI_LAYER_GZIP, "a gzip blob stays gzip");
    // Every file the plan sends is the blob its digest names, byte for byte.
    let blobs = std::iter::once(&plan.config).chain(&plan.layers);
    for (b, f) in blobs.zip(&plan.files) {
        let bytes = std::fs::read(f).unwrap();
        assert_eq!((digest(&bytes), bytes.len() as u64), (b.digest.clone(), b.size));
    }
    let m: serde_json::Value = serde_json::from_slice(&plan.manifest).unwrap();
    assert_eq!(m["config"]["digest"], id.as_str());
    assert_eq!(m["layers"][0]["digest"], plan.layers[0].digest.as_str());
    // docker save layers are plain tars: blob digest and diff id are the same.
    docker_archive(&dir.path().join("web.tar"));
    store.load_archive(&dir.path().join("web.tar")).unwrap();
    let plan = store.push_plan("web:1").unwrap();
    let info = store.resolve("web:1").unwrap();
    let digests: Vec<&String> = plan.layers.iter().map(|b| &b.digest).collect();
    assert_eq!(digests, info.layers.iter().collect::<Vec<_>>());
    assert!(plan.layers.iter().all(|b| b.media_type == media::OCI_LAYER));
}

#[test]
fn a_pulled_image_is_found_by_its_repository_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let (bottom, top) = two_layers();
    let config = config_for(&[&bottom, &top], &["/bin/sh"]);
    let blobs: Vec<Blob> = [gzip(&bottom), top.clone()]
        .iter()
        .zip([media::OCI_LAYER_GZIP, media::OCI_LAYER])
        .map(|(b, m)| {
            std::fs::write(store.blob_path(&digest(b)), b).unwrap();
            Blob { media_type: m.into(), digest: digest(b), size: b.len() as u64 }
        })
        .collect();
    std::fs::write(store.blob_path(&digest(&config)), &config).unwrap();
    let manifest = format!("sha256:{}", "7".repeat(64));
    let input = PullInput {
        name: Some("reg:5000/web:1".into()),
        repo_digest: format!("reg:5000/web@{manifest}"),
        config_digest: digest(&config),
        layers: blobs.clone(),
    };
    let info = store.commit_pulled(&input).unwrap();
    assert_eq!(info.id, digest(&config));
    assert_eq!(info.blobs, blobs);
    assert_eq!(store.resolve(&format!("reg:5000/web@{manifest}")).unwrap().id, info.id);
    assert_eq!(store.resolve(&manifest).unwrap().id, info.id, "a bare pin finds it too");
    assert!(matches!(
        store.resolve(&format!("other/web@{manifest}")),
        Err(ImageError::NotFound(_))
    ));
    let RootfsSource::Layers(dirs) = store.rootfs(&info) else { panic!("layers expected") };
    assert!(dirs[1].join("etc/a").exists(), "the gzip layer was unpacked");
    // A layer whose bytes are not what the config says is refused and nothing is stored.
    let bad_top = tar_of(&[("etc/evil", b"x")]);
    std::fs::write(store.blob_path(&digest(&bad_top)), &bad_top).unwrap();
    let other_config = config_for(&[&bottom, &tar_of(&[("etc/good", b"y")])], &["/bin/sh"]);
    std::fs::write(store.blob_path(&digest(&other_config)), &other_config).unwrap();
    let bad = PullInput {
        name: Some("reg:5000/bad:1".into()),
        repo_digest: format!("reg:5000/bad@sha256:{}", "8".repeat(64)),
        config_digest: digest(&other_config),
        layers: vec![
            blobs[0].clone(),
            Blob { media_type: media::OCI_LAYER.into(), digest: digest(&bad_top), size: 0 },
        ],
    };
    assert!(matches!(store.commit_pulled(&bad), Err(ImageError::DiffIdMismatch { .. })));
    assert!(store.resolve("reg:5000/bad:1").is_err());
    let zstd = PullInput {
        layers: vec![
            Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                ..blobs[0].clone()
            },
            blobs[1].clone(),
        ],
        ..input
    };
    assert!(matches!(store.commit_pulled(&zstd), Err(ImageError::LayerFormat { .. })));
}

#[test]
fn tag_then_prune_keeps_what_images_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    docker_archive(&dir.path().join("web.tar"));
    let web = store.load_archive(&dir.path().join("web.tar")).unwrap().remove(0);
    store.tag("web:1", "reg:5000/web:1").unwrap();
    assert_eq!(store.resolve("reg:5000/web:1").unwrap().id, web.id);
    // A blob nothing uses, one a pull holds a lease on, and a layer nothing uses.
    let stray = b"stray".to_vec();
    std::fs::write(store.blob_path(&digest(&stray)), &stray).unwrap();
    let held = b"held".to_vec();
    std::fs::write(store.blob_path(&digest(&held)), &held).unwrap();
    let lease = store.lease([digest(&held)]);
    std::fs::create_dir_all(store.layer_dir(&format!("sha256:{}", "9".repeat(64)))).unwrap();
    let report = store.prune(&[]).unwrap();
    assert_eq!((report.blobs, report.layers), (1, 1));
    assert!(report.images.is_empty(), "named images stay");
    assert!(!store.has_blob(&digest(&stray)));
    assert!(store.has_blob(&digest(&held)), "a leased blob stays");
    drop(lease);
    assert!(store.push_plan("web:1").is_ok(), "the image's own blobs stay");
    // Untagged and unused: the image goes, and its layers and blobs with it.
    store.remove("web:1", &[]).unwrap();
    store.remove("reg:5000/web:1", &[]).unwrap();
    store.prune(&[]).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("images/blobs/sha256")).unwrap().count(), 0);
}
