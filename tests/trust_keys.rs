//! `shoal trust key …` as an operator runs it at a terminal: it needs no daemon, the passphrase
//! typed at a terminal is not echoed back, and the key file is the owner's alone and holds no
//! private key in the clear. No root needed.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

/// A pseudo-terminal: the controller side and the path of the terminal side.
fn pty() -> (OwnedFd, std::path::PathBuf) {
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&controller).unwrap();
    unlockpt(&controller).unwrap();
    let name = ptsname(&controller, Vec::new()).unwrap();
    (controller, std::path::PathBuf::from(name.to_str().unwrap()))
}

#[test]
fn a_key_is_made_at_a_terminal_without_echo_and_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (controller, terminal) = pty();
    let tty = || std::fs::OpenOptions::new().read(true).write(true).open(&terminal).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["-H", "unix:///nonexistent/shoal.sock", "trust", "key", "generate", "ops"])
        .env("SHOAL_TRUST_DIR", &keys)
        .env_remove("SHOAL_CONTENT_TRUST_PASSPHRASE")
        .env_remove("SHOAL_CONTENT_TRUST_REPOSITORY_PASSPHRASE")
        .stdin(Stdio::from(tty()))
        .stdout(Stdio::from(tty()))
        .stderr(Stdio::from(tty()))
        .spawn()
        .unwrap();
    let mut io = std::fs::File::from(controller.as_fd().try_clone_to_owned().unwrap());
    // Wait for the prompt, then type the passphrase.
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("Passphrase for key ops") {
        assert!(started.elapsed() < Duration::from_secs(20), "no prompt: {seen:?}");
        let n = io.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    io.write_all(b"terminal-secret-77\n").unwrap();
    let status = child.wait().unwrap();
    // Whatever the terminal showed after the prompt (the child has exited: no more comes).
    rustix::fs::fcntl_setfl(&io, rustix::fs::OFlags::NONBLOCK).unwrap();
    loop {
        match io.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let shown = String::from_utf8_lossy(&seen).into_owned();
    assert!(status.success(), "{shown}");
    assert!(!shown.contains("terminal-secret-77"), "the passphrase was echoed: {shown}");
    assert!(shown.contains("Generated ed25519 key ops"), "{shown}");
    let file = keys.join("ops.key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"sealed\"") && !text.contains("PRIVATE KEY"), "{text}");
    // The sealed key opens only with what was typed.
    let key = shoal_pki::trust::SigningKey::open(text.as_bytes(), "terminal-secret-77").unwrap();
    assert_eq!(key.name(), "ops");
    assert!(shoal_pki::trust::SigningKey::open(text.as_bytes(), "something-else").is_err());
}
