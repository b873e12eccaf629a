//! Builds the `shoal-landlock` helper as a static executable (glibc with crt-static, stripped)
//! for this crate to embed: the helper runs inside any task's image, which may have no libc or
//! another one. Cargo has no per-package rustflags, so this runs a nested cargo with its own
//! flags and target directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let here = PathBuf::from(var("CARGO_MANIFEST_DIR"));
    let helper = here.parent().expect("static/ sits in the helper's crate").to_path_buf();
    let workspace = helper.join("../..");
    for watched in [helper.join("src"), helper.join("Cargo.toml"), workspace.join("Cargo.lock")] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let out = PathBuf::from(var("OUT_DIR"));
    let target = var("TARGET").into_string().expect("a UTF-8 target triple");
    let target_dir = nested_target_dir(&out);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--locked", "--bin", "shoal-landlock", "--target", &target])
        .arg("--manifest-path")
        .arg(helper.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Takes precedence over RUSTFLAGS and any configured flags; only our package's build
        // gets them, as --target keeps them away from build scripts and proc-macros.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static\x1f-Cstrip=symbols")
        // Set when the outer build is `cargo clippy`: the nested one only compiles.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the static shoal-landlock helper failed (see above)");
    let built = target_dir.join(&target).join("release/shoal-landlock");
    std::fs::copy(&built, out.join("shoal-landlock"))
        .unwrap_or_else(|e| panic!("copying {built:?}: {e}"));
}

fn var(name: &str) -> OsString {
    std::env::var_os(name).unwrap_or_else(|| panic!("cargo sets {name} for build scripts"))
}

/// `<target dir>/shoal-landlock-static`, shared by every profile and by clippy, when `out` has
/// cargo's usual shape (`<target dir>[/<triple>]/<profile>/build/<package>-<hash>/out`); else a
/// directory inside `out`.
fn nested_target_dir(out: &Path) -> PathBuf {
    let build = out.ancestors().nth(2);
    match (build, out.ancestors().nth(4)) {
        (Some(b), Some(base)) if b.file_name().is_some_and(|n| n == "build") => {
            base.join("shoal-landlock-static")
        }
        _ => out.join("target"),
    }
}
