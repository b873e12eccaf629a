//! Hostile images: layers and archives written the way an attacker would write them (names
//! with `..`, links out of the image, whiteouts through links, devices, trusted xattrs, lying
//! sizes, cut-off streams), and proof that none of them reaches outside the image's own
//! directory or leaves anything behind in the store.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tar::{EntryType, Header};

use super::layer::{digest, unpack};
use super::ImageStore;

/// A tar writer that writes whatever names, links and sizes it is given, with none of the
/// checks `tar::Builder` makes: what a hostile image tool would produce.
#[derive(Debug, Default)]
pub struct RawTar {
    out: Vec<u8>,
}

impl RawTar {
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// One member: `name` and `link` go into the header as raw bytes (GNU long-name members
    /// first when they are longer than the header's fields), `data` follows padded.
    pub fn member(mut self, kind: EntryType, name: &str, link: Option<&str>, data: &[u8]) -> Self {
        if name.len() >= 100 {
            self = self.long(EntryType::GNULongName, name);
        }
        if let Some(l) = link.filter(|l| l.len() >= 100) {
            self = self.long(EntryType::GNULongLink, l);
        }
        let mut h = header(kind, data.len() as u64);
        let gnu = h.as_gnu_mut().expect("gnu header");
        copy_field(&mut gnu.name, name.as_bytes());
        if let Some(l) = link {
            copy_field(&mut gnu.linkname, l.as_bytes());
        }
        self.push(h, data)
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.member(EntryType::Regular, name, None, data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.member(EntryType::Directory, name, None, b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.member(EntryType::Symlink, name, Some(target), b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.member(EntryType::Link, name, Some(target), b"")
    }

    pub fn device(self, kind: EntryType, name: &str, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0);
        copy_field(&mut h.as_gnu_mut().expect("gnu header").name, name.as_bytes());
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.push(h, b"")
    }

    /// A PAX extended header (applies to the next member) with `records`.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        self.member(EntryType::XHeader, "PaxHeaders/x", None, &body)
    }

    /// A header that claims `size` bytes of data, followed by only `data`.
    pub fn lying(mut self, kind: EntryType, name: &str, size: u64, data: &[u8]) -> Self {
        let mut h = header(kind, size);
        copy_field(&mut h.as_gnu_mut().expect("gnu header").name, name.as_bytes());
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        self
    }

    /// The archive with its end-of-archive marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }

    /// The archive without its end-of-archive marker: cut off at a member boundary.
    pub fn unfinished(self) -> Vec<u8> {
        self.out
    }

    fn long(self, kind: EntryType, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.member(kind, "././@LongLink", None, &data)
    }

    fn push(mut self, mut h: Header, data: &[u8]) -> Self {
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
}

fn header(kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn copy_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A layer directory with a "host" beside it: what an image must never touch.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("tree/deep")).unwrap();
        std::fs::write(host.join("canary"), b"precious").unwrap();
        std::fs::write(host.join("tree/deep/file"), b"also precious").unwrap();
        Scene { dir }
    }

    fn layer(&self) -> PathBuf {
        self.dir.path().join("layer")
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// `host/<rel>` as an absolute path string, for symlink targets.
    fn host_path(&self, rel: &str) -> String {
        self.host().join(rel).to_str().unwrap().to_string()
    }

    /// Unpacks `tar` into the layer directory; the error text, or `None` on success.
    fn unpack(&self, tar: &[u8]) -> Option<String> {
        unpack(tar, &self.layer()).err().map(|e| e.to_string())
    }

    /// Everything beside the layer directory: the host and the temp dir's own entries.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "layer" {
                describe(&e.path(), self.dir.path(), &mut out);
            }
        }
        out
    }
}

/// Kind, mode, owner, size, content or target and xattrs of every path under `path`,
/// never following a link.
fn describe(path: &Path, base: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let m = std::fs::symlink_metadata(path).unwrap();
    let t = m.file_type();
    let what = if t.is_symlink() {
        format!("link to {:?}", std::fs::read_link(path).unwrap())
    } else if t.is_file() {
        format!("file {:?}", std::fs::read(path).unwrap())
    } else if t.is_dir() {
        "dir".to_string()
    } else if t.is_char_device() || t.is_block_device() {
        format!("device {}", m.rdev())
    } else {
        "other".to_string()
    };
    let mut xattrs = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut xattrs[..]).unwrap_or(0);
    let line = format!(
        "{what} mode {:o} owner {}:{} links {} xattrs {:?}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        String::from_utf8_lossy(&xattrs[..n])
    );
    out.insert(path.strip_prefix(base).unwrap().to_path_buf(), line);
    if t.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            describe(&e.unwrap().path(), base, out);
        }
    }
}

fn trusted_opaque(path: &Path) -> bool {
    rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut [0u8; 4]).is_ok()
}

// ------------------------------------------------------------------------------------------
// Layers
// ------------------------------------------------------------------------------------------

#[test]
fn a_whiteout_through_a_symlink_cannot_delete_a_host_file() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new().symlink("evil", &s.host_path("")).file("evil/.wh.canary", b"").finish();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("evil/.wh.canary") && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(s.host().join("canary")).unwrap(), b"precious");
    assert_eq!(s.outside(), before);
}

#[test]
fn a_whiteout_through_a_symlink_cannot_delete_a_host_tree() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new().symlink("evil", &s.host_path("")).file("evil/.wh.tree", b"").finish();
    assert!(s.unpack(&tar).is_some());
    assert!(s.host().join("tree/deep/file").exists());
    assert_eq!(s.outside(), before);
}

#[test]
fn a_whiteout_named_dot_dot_cannot_delete_the_directory_above_the_layer() {
    let s = Scene::new();
    let before = s.outside();
    let err = s.unpack(&RawTar::new().file("sub/.wh..", b"").finish()).expect("refused");
    assert!(err.contains(".wh.."), "{err}");
    let err = s.unpack(&RawTar::new().file(".wh..", b"").finish()).expect("refused");
    assert!(err.contains(".wh.."), "{err}");
    assert!(s.layer().is_dir());
    assert_eq!(s.outside(), before);
}

#[test]
fn an_opaque_marker_through_a_symlink_cannot_mark_a_host_directory() {
    let s = Scene::new();
    let before = s.outside();
    let tar =
        RawTar::new().symlink("evil", &s.host_path("tree")).file("evil/.wh..wh..opq", b"").finish();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("evil/.wh..wh..opq"), "{err}");
    assert!(!trusted_opaque(&s.host().join("tree")));
    assert_eq!(s.outside(), before);
}

#[test]
fn a_file_through_a_symlink_cannot_be_written_on_the_host() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new()
        .symlink("evil", &s.host_path(""))
        .file("evil/canary", b"overwritten")
        .file("evil/planted", b"new")
        .finish();
    assert!(s.unpack(&tar).is_some());
    assert_eq!(s.outside(), before);
}

#[test]
fn a_directory_through_a_symlink_cannot_be_made_on_the_host() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new().symlink("evil", &s.host_path("")).dir("evil/newdir").finish();
    assert!(s.unpack(&tar).is_some());
    assert_eq!(s.outside(), before);
}

#[test]
fn names_that_climb_out_are_refused() {
    for name in ["../host/canary", "a/../../host/canary", "./../host/planted"] {
        let s = Scene::new();
        let before = s.outside();
        let err = s.unpack(&RawTar::new().file(name, b"x").finish()).expect("refused");
        assert!(err.contains(".."), "{name}: {err}");
        assert_eq!(s.outside(), before, "{name}");
    }
}

#[test]
fn absolute_names_land_inside_the_layer() {
    let s = Scene::new();
    let before = s.outside();
    let name = format!("/{}", s.host_path("planted").trim_start_matches('/'));
    assert_eq!(s.unpack(&RawTar::new().file(&name, b"x").finish()), None);
    assert_eq!(s.outside(), before);
    let inside = s.layer().join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"x");
}

#[test]
fn a_hardlink_to_a_host_file_is_refused() {
    let targets: [fn(&Scene) -> String; 2] =
        [|_| "../host/canary".into(), |s| s.host_path("canary")];
    for target in targets {
        let s = Scene::new();
        let target = target(&s);
        let before = s.outside();
        let err = s.unpack(&RawTar::new().hardlink("grab", &target).finish()).expect("refused");
        assert!(err.contains("grab"), "{err}");
        assert_eq!(s.outside(), before, "{target}");
    }
}

#[test]
fn a_hardlink_through_a_symlink_is_refused() {
    let s = Scene::new();
    let before = s.outside();
    let tar =
        RawTar::new().symlink("evil", &s.host_path("")).hardlink("grab", "evil/canary").finish();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("grab"), "{err}");
    assert!(!s.layer().join("grab").exists());
    assert_eq!(s.outside(), before);
}

#[test]
fn a_hardlink_to_a_symlink_links_the_symlink_not_its_target() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new().symlink("out", &s.host_path("canary")).hardlink("grab", "out").finish();
    assert_eq!(s.unpack(&tar), None);
    let m = std::fs::symlink_metadata(s.layer().join("grab")).unwrap();
    assert!(m.file_type().is_symlink(), "a second name for the link, not for the host file");
    assert_eq!(s.outside(), before, "the host file gained no link");
}

#[test]
fn writing_over_a_hardlinked_name_does_not_write_through_it() {
    let s = Scene::new();
    let tar = RawTar::new().file("a", b"first").hardlink("b", "a").file("b", b"second").finish();
    assert_eq!(s.unpack(&tar), None);
    assert_eq!(std::fs::read(s.layer().join("a")).unwrap(), b"first");
    assert_eq!(std::fs::read(s.layer().join("b")).unwrap(), b"second");
}

#[test]
fn device_nodes_are_refused() {
    for (kind, major, minor) in [(EntryType::Block, 8, 0), (EntryType::Char, 1, 3)] {
        let s = Scene::new();
        let tar = RawTar::new().device(kind, "dev/disk", major, minor).finish();
        let err = s.unpack(&tar).expect("refused");
        assert!(err.contains("dev/disk") && err.contains("device"), "{err}");
        assert!(std::fs::symlink_metadata(s.layer().join("dev/disk")).is_err());
    }
}

#[test]
fn fifos_stay_inside() {
    let s = Scene::new();
    let before = s.outside();
    let tar = RawTar::new().member(EntryType::Fifo, "run/pipe", None, b"").finish();
    assert_eq!(s.unpack(&tar), None);
    let m = std::fs::symlink_metadata(s.layer().join("run/pipe")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(s.outside(), before);
}

#[test]
fn trusted_xattrs_from_an_image_are_refused() {
    let s = Scene::new();
    let tar = RawTar::new()
        .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .dir("sneaky")
        .finish();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("trusted.overlay.redirect") && err.contains("sneaky"), "{err}");
}

#[test]
fn file_capabilities_and_user_xattrs_are_kept_other_security_labels_dropped() {
    let s = Scene::new();
    // A v2 capability set granting cap_net_bind_service (bit 10), as setcap writes it.
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:shadow_t:s0"),
        ])
        .file("bin/server", b"\x7fELF")
        .finish();
    assert_eq!(s.unpack(&tar), None);
    let path = s.layer().join("bin/server");
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(&path, "security.capability", &mut buf).unwrap();
    assert_eq!(&buf[..n], &cap[..]);
    let n = rustix::fs::lgetxattr(&path, "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    let label = rustix::fs::lgetxattr(&path, "security.selinux", &mut buf);
    assert!(label.is_err() || &buf[..label.unwrap()] != b"system_u:object_r:shadow_t:s0");
}

#[test]
fn a_huge_long_name_header_is_refused_without_reading_it_into_memory() {
    let s = Scene::new();
    // Claims a terabyte of long name; supplies 2 MiB of it.
    let tar = RawTar::new()
        .lying(EntryType::GNULongName, "././@LongLink", 1 << 40, &vec![b'a'; 2 << 20])
        .unfinished();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("header"), "{err}");
}

#[test]
fn a_file_shorter_than_its_header_says_is_a_truncated_layer() {
    let s = Scene::new();
    let tar = RawTar::new().lying(EntryType::Regular, "big", 1 << 40, b"only this").unfinished();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("big") && err.contains("truncated"), "{err}");
}

#[test]
fn a_layer_cut_off_between_members_is_a_truncated_layer() {
    let s = Scene::new();
    let tar = RawTar::new().file("a", b"1").file("b", b"2").unfinished();
    let err = s.unpack(&tar).expect("refused");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_layer_cut_off_inside_a_member_is_a_truncated_layer() {
    let s = Scene::new();
    let full = RawTar::new().file("a", &[7u8; 3000]).finish();
    let err = s.unpack(&full[..1500]).expect("refused");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn well_formed_layers_still_unpack_with_links_owners_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scene::new();
    let tar = RawTar::new()
        .dir("usr/")
        .dir("usr/bin/")
        .file("usr/bin/tool", b"#!/bin/sh")
        .symlink("bin", "usr/bin")
        .symlink("usr/bin/abs", "/usr/bin/tool")
        .hardlink("usr/bin/again", "usr/bin/tool")
        .file("etc/.wh.shadow", b"")
        .file("var/.wh..wh..opq", b"")
        .finish();
    assert_eq!(s.unpack(&tar), None);
    let tool = std::fs::metadata(s.layer().join("usr/bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o644);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(std::fs::read_link(s.layer().join("bin")).unwrap(), Path::new("usr/bin"));
    let wh = std::fs::symlink_metadata(s.layer().join("etc/shadow")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(trusted_opaque(&s.layer().join("var")));
}

// ------------------------------------------------------------------------------------------
// Property: whatever sequence of hostile-but-parsable members a layer holds, nothing outside
// its directory changes.
// ------------------------------------------------------------------------------------------

fn hostile_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "a/b",
        "evil/canary",
        "evil/tree/deep",
        "evil/new",
        "evil/.wh.canary",
        "evil/.wh.tree",
        "evil/.wh..wh..opq",
        "evil/tree/.wh..wh..opq",
        ".wh..",
        "a/.wh..",
        ".wh.evil",
        "../host/canary",
        "/evil/new",
        "twin",
        "twin/x",
    ])
    .prop_map(str::to_string)
}

#[derive(Clone, Debug)]
enum Member {
    File(String),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

fn hostile_member() -> impl Strategy<Value = Member> {
    let link_name = prop::sample::select(vec!["evil", "a", "twin", "evil/tree"]);
    let target = prop::sample::select(vec![
        "@host",
        "@host/canary",
        "@host/tree",
        "../host",
        "..",
        "/",
        "a",
        "evil/canary",
        "twin",
    ]);
    prop_oneof![
        hostile_name().prop_map(Member::File),
        hostile_name().prop_map(Member::Dir),
        (link_name, target.clone()).prop_map(|(n, t)| Member::Symlink(n.into(), t.into())),
        (hostile_name(), prop_oneof![target.prop_map(str::to_string), hostile_name()])
            .prop_map(|(n, t)| Member::Hardlink(n, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_hostile_members_changes_anything_outside_the_layer(
        members in prop::collection::vec(hostile_member(), 1..12)
    ) {
        let s = Scene::new();
        let before = s.outside();
        let host = s.host_path("");
        let host = host.trim_end_matches('/');
        let mut tar = RawTar::new();
        for m in &members {
            tar = match m {
                Member::File(n) => tar.file(n, b"x"),
                Member::Dir(n) => tar.dir(n),
                Member::Symlink(n, t) => tar.symlink(n, &t.replace("@host", host)),
                Member::Hardlink(n, t) => tar.hardlink(n, &t.replace("@host", host)),
            };
        }
        let _ = s.unpack(&tar.finish());
        prop_assert_eq!(s.outside(), before);
    }
}

// ------------------------------------------------------------------------------------------
// Outer archives and the store
// ------------------------------------------------------------------------------------------

/// A store beside a "host" directory, and what both hold.
struct StoreScene {
    dir: tempfile::TempDir,
    store: ImageStore,
}

impl StoreScene {
    fn new() -> StoreScene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("host")).unwrap();
        std::fs::write(dir.path().join("host/canary"), b"precious").unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        StoreScene { dir, store }
    }

    fn host_path(&self, rel: &str) -> String {
        self.dir.path().join("host").join(rel).to_str().unwrap().to_string()
    }

    /// Loads `archive`; the error text (panics if it loads).
    fn refused(&self, archive: &[u8]) -> String {
        let path = self.dir.path().join("in.tar");
        std::fs::write(&path, archive).unwrap();
        match self.store.load_archive(&path) {
            Ok(images) => panic!("loaded {images:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Every path in the store and the host, with kind and content.
    fn everything(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for d in ["store", "host"] {
            describe(&self.dir.path().join(d), self.dir.path(), &mut out);
        }
        out
    }

    fn assert_store_empty(&self) {
        for d in ["layers", "images", "blobs/sha256", "tmp"] {
            let p = self.dir.path().join("store").join(d);
            let left: Vec<_> = std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()).collect();
            assert!(left.is_empty(), "{d} has leftovers: {left:?}");
        }
        assert!(self.store.list().unwrap().is_empty());
    }
}

fn config_for(layers: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::json!({
        "architecture": super::go_arch(), "os": "linux", "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": ids },
    })
    .to_string()
    .into_bytes()
}

fn manifest(config: &[u8], layers: &[&str]) -> Vec<u8> {
    serde_json::json!([{
        "Config": format!("{}.json", &digest(config)[7..]),
        "RepoTags": ["evil:1"],
        "Layers": layers,
    }])
    .to_string()
    .into_bytes()
}

fn config_name(config: &[u8]) -> String {
    format!("{}.json", &digest(config)[7..])
}

#[test]
fn an_archive_member_symlinked_to_a_host_file_is_not_read() {
    let s = StoreScene::new();
    // The "layer" is a host tarball: loading it would copy host files into the image.
    let host_tar = RawTar::new().file("secret", b"host data").finish();
    std::fs::write(s.dir.path().join("host/data.tar"), &host_tar).unwrap();
    let config = config_for(&[&host_tar]);
    let before = s.everything();
    let archive = RawTar::new()
        .file("manifest.json", &manifest(&config, &["l1/layer.tar"]))
        .file(&config_name(&config), &config)
        .symlink("l1/layer.tar", &s.host_path("data.tar"))
        .finish();
    let err = s.refused(&archive);
    assert!(err.contains("l1/layer.tar"), "{err}");
    s.assert_store_empty();
    assert_eq!(s.everything(), before);
}

#[test]
fn an_archive_member_symlinked_to_dev_zero_is_not_read() {
    let s = StoreScene::new();
    let config = config_for(&[b""]);
    let archive = RawTar::new()
        .file("manifest.json", &manifest(&config, &["l1/layer.tar"]))
        .file(&config_name(&config), &config)
        .symlink("l1/layer.tar", "/dev/zero")
        .finish();
    let err = s.refused(&archive);
    assert!(err.contains("l1/layer.tar"), "{err}");
    s.assert_store_empty();
}

#[test]
fn a_manifest_symlinked_to_a_host_file_is_not_read() {
    let s = StoreScene::new();
    std::fs::write(s.dir.path().join("host/manifest.json"), b"[]").unwrap();
    let archive = RawTar::new().symlink("manifest.json", &s.host_path("manifest.json")).finish();
    let err = s.refused(&archive);
    assert!(err.contains("manifest.json"), "{err}");
    s.assert_store_empty();
}

#[test]
fn an_archive_member_hardlinked_to_a_host_file_is_refused() {
    let s = StoreScene::new();
    let before = s.everything();
    let archive = RawTar::new()
        .hardlink("manifest.json", &s.host_path("canary"))
        .hardlink("other", "../host/canary")
        .finish();
    let err = s.refused(&archive);
    assert!(err.contains("manifest.json"), "{err}");
    s.assert_store_empty();
    assert_eq!(s.everything(), before);
}

#[test]
fn archive_members_that_climb_out_are_refused() {
    let s = StoreScene::new();
    let before = s.everything();
    let err = s.refused(&RawTar::new().file("../host/planted", b"x").finish());
    assert!(err.contains("../host/planted"), "{err}");
    let err = s.refused(&RawTar::new().file(&s.host_path("planted"), b"x").finish());
    assert!(err.contains("planted"), "{err}");
    s.assert_store_empty();
    assert_eq!(s.everything(), before);
}

#[test]
fn device_members_in_an_archive_are_refused() {
    let s = StoreScene::new();
    let err = s.refused(&RawTar::new().device(EntryType::Char, "manifest.json", 1, 5).finish());
    assert!(err.contains("manifest.json") && err.contains("device"), "{err}");
    s.assert_store_empty();
}

#[test]
fn a_manifest_larger_than_any_real_one_is_refused() {
    let s = StoreScene::new();
    let huge = vec![b' '; 17 << 20];
    let err = s.refused(&RawTar::new().file("manifest.json", &huge).finish());
    assert!(err.contains("manifest.json") && err.contains("large"), "{err}");
    s.assert_store_empty();
}

#[test]
fn an_archive_with_too_many_members_is_refused() {
    let s = StoreScene::new();
    let mut tar = RawTar::new();
    for i in 0..50_001 {
        tar = tar.dir(&format!("d{i}/"));
    }
    let err = s.refused(&tar.finish());
    assert!(err.contains("members"), "{err}");
    s.assert_store_empty();
}

#[test]
fn a_truncated_archive_is_a_clear_error_and_stores_nothing() {
    let s = StoreScene::new();
    let layer = RawTar::new().file("bin/x", b"x").finish();
    let config = config_for(&[&layer]);
    let full = RawTar::new()
        .file("manifest.json", &manifest(&config, &["l1/layer.tar"]))
        .file(&config_name(&config), &config)
        .file("l1/layer.tar", &layer)
        .finish();
    let err = s.refused(&full[..full.len() - 1800]);
    assert!(err.contains("truncated"), "{err}");
    s.assert_store_empty();
}

#[test]
fn a_hostile_second_layer_leaves_no_trace_of_the_first() {
    let s = StoreScene::new();
    let good = RawTar::new().file("bin/x", b"x").finish();
    let bad = RawTar::new().symlink("evil", &s.host_path("")).file("evil/.wh.canary", b"").finish();
    let config = config_for(&[&good, &bad]);
    let archive = RawTar::new()
        .file("manifest.json", &manifest(&config, &["l1/layer.tar", "l2/layer.tar"]))
        .file(&config_name(&config), &config)
        .file("l1/layer.tar", &good)
        .file("l2/layer.tar", &bad)
        .finish();
    let err = s.refused(&archive);
    assert!(err.contains("l2/layer.tar") && err.contains("evil/.wh.canary"), "{err}");
    assert_eq!(std::fs::read(s.dir.path().join("host/canary")).unwrap(), b"precious");
    s.assert_store_empty();
}

#[test]
fn docker_save_links_between_identical_layers_still_load() {
    let s = StoreScene::new();
    let layer = RawTar::new().file("bin/x", b"x").finish();
    let config = config_for(&[&layer, &layer]);
    let archive = RawTar::new()
        .file("manifest.json", &manifest(&config, &["l1/layer.tar", "l2/layer.tar"]))
        .file(&config_name(&config), &config)
        .file("l1/layer.tar", &layer)
        .symlink("l2/layer.tar", "../l1/layer.tar")
        .finish();
    let path = s.dir.path().join("in.tar");
    std::fs::write(&path, archive).unwrap();
    let images = s.store.load_archive(&path).unwrap();
    assert_eq!(images[0].layers.len(), 2);
    assert_eq!(s.store.resolve("evil:1").unwrap().id, digest(&config));
}

#[test]
fn an_import_with_a_hostile_layer_stores_nothing() {
    let s = StoreScene::new();
    let bad = RawTar::new().symlink("evil", &s.host_path("")).file("evil/.wh.canary", b"").finish();
    let path = s.dir.path().join("rootfs.tar");
    std::fs::write(&path, bad).unwrap();
    let err = s.store.import(&path, "evil:1").unwrap_err().to_string();
    assert!(err.contains("evil/.wh.canary"), "{err}");
    assert_eq!(std::fs::read(s.dir.path().join("host/canary")).unwrap(), b"precious");
    s.assert_store_empty();
}

#[test]
fn an_archive_member_name_longer_than_path_max_is_refused() {
    let s = StoreScene::new();
    let name = "a/".repeat(2100) + "manifest.json";
    let err = s.refused(&RawTar::new().file(&name, b"[]").finish());
    assert!(err.contains("longer than 4096 bytes"), "{err}");
    s.assert_store_empty();
}

#[test]
fn a_layer_nested_deeper_than_any_image_is_refused() {
    let s = Scene::new();
    let name = "d/".repeat(300) + "f";
    let err = s.unpack(&RawTar::new().file(&name, b"x").finish()).expect("refused");
    assert!(err.contains("deeper than 256"), "{err}");
}

#[test]
fn a_regular_member_with_a_trailing_slash_is_a_directory() {
    let s = Scene::new();
    assert_eq!(s.unpack(&RawTar::new().file("old-style/", b"").finish()), None);
    assert!(s.layer().join("old-style").is_dir());
}
