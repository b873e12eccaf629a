//! Tasks run from stored images: overlay rootfs assembled from layers, whiteouts honoured,
//! writes kept out of the layers, missing images refused. Needs root.

mod common;

use common::*;
use shoal_agent::image::{ImageError, ImageStore};
use shoal_agent::runtime::{Runtime, TaskSpec};

#[tokio::test]
async fn runs_a_task_from_layered_image() {
    if !have_root("layered_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    std::fs::write(rootfs.join("etc/motd"), "old\n").unwrap();
    std::fs::write(rootfs.join("etc/gone"), "x\n").unwrap();
    tar_dir(&rootfs, &dir.path().join("base.tar"));
    let store = ImageStore::open(dir.path().join("data/images")).unwrap();
    let base = store.import(&dir.path().join("base.tar"), "base:1").unwrap();

    // A second layer on top: replace motd, delete `gone` with a whiteout.
    let top = dir.path().join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "new\n").unwrap();
    std::fs::File::create(top.join("etc/.wh.gone")).unwrap();
    tar_dir(&top, &dir.path().join("top.tar"));
    let top_id = store.import(&dir.path().join("top.tar"), "top:1").unwrap().layers[0].clone();
    let mut layered = base.clone();
    layered.layers.push(top_id);

    let rt = new_test_runtime(dir.path());
    let id = task_id("layered");
    let script =
        "cat /etc/motd; test -e /etc/gone && echo present || echo absent; echo w > /etc/written";
    let args = vec!["/bin/sh".into(), "-c".into(), script.into()];
    rt.create(TaskSpec::new(&id, store.rootfs(&layered), args)).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.wait(&id).await.unwrap().code, 0);
    let (out, _) = rt.log_paths(&id);
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            std::fs::read_to_string(&out).is_ok_and(|s| s == "new\nabsent\n")
        })
        .await,
        "output: {:?}",
        std::fs::read_to_string(&out)
    );
    rt.delete(&id).await.unwrap();
    for l in &layered.layers {
        assert!(!store.layer_dir(l).join("etc/written").exists(), "writes must not reach layers");
    }
    assert!(!rt.bundle_dir(&id).exists());
}

#[test]
fn a_missing_image_is_a_clear_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let err = store.resolve("web:2").unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)));
    assert!(err.to_string().contains("shoal image load"), "{err}");
}
