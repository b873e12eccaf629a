//! Secrets typed at a terminal: `shoal trust key …` needs no daemon, and neither a key's
//! passphrase nor `swarm unlock`'s key is echoed back, however soon after the prompt it is
//! typed; the key file is the owner's alone and holds no private key in the clear. No root
//! needed.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, ExitStatus, Stdio};
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

/// Runs `command` with a terminal for its standard streams, types `typed` and a newline as
/// soon as `prompt` shows, and returns its exit status and everything the terminal showed.
fn at_terminal(mut command: Command, prompt: &str, typed: &str) -> (ExitStatus, String) {
    let (controller, terminal) = pty();
    let tty = || std::fs::OpenOptions::new().read(true).write(true).open(&terminal).unwrap();
    let mut child = command
        .stdin(Stdio::from(tty()))
        .stdout(Stdio::from(tty()))
        .stderr(Stdio::from(tty()))
        .spawn()
        .unwrap();
    let mut io = std::fs::File::from(controller.as_fd().try_clone_to_owned().unwrap());
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(prompt) {
        assert!(started.elapsed() < Duration::from_secs(20), "no prompt: {seen:?}");
        let n = io.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    io.write_all(format!("{typed}\n").as_bytes()).unwrap();
    let status = child.wait().unwrap();
    // Whatever the terminal showed after the prompt (the child has exited: no more comes).
    rustix::fs::fcntl_setfl(&io, rustix::fs::OFlags::NONBLOCK).unwrap();
    loop {
        match io.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    (status, String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn a_key_is_made_at_a_terminal_without_echo_and_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
    command
        .args(["-H", "unix:///nonexistent/shoal.sock", "trust", "key", "generate", "ops"])
        .env("SHOAL_TRUST_DIR", &keys)
        .env_remove("SHOAL_CONTENT_TRUST_PASSPHRASE")
        .env_remove("SHOAL_CONTENT_TRUST_REPOSITORY_PASSPHRASE");
    let (status, shown) = at_terminal(command, "Passphrase for key ops", "terminal-secret-77");
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

/// `swarm unlock` at a terminal: the key typed is not shown, and it reaches the daemon (a node
/// that is not locked says so, which it can only do after the key was read and sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_key_typed_at_a_terminal_is_not_echoed() {
    let node = shoal_testkit::cluster::TestNode::start("n").await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
    command.args(["-H", &format!("unix://{}", node.socket.display()), "swarm", "unlock"]);
    let typed = "SHLKEY-1-typed-at-the-terminal";
    let (status, shown) =
        tokio::task::spawn_blocking(move || at_terminal(command, "Enter unlock key: ", typed))
            .await
            .unwrap();
    assert!(!status.success(), "{shown}");
    assert!(!shown.contains(typed), "the unlock key was echoed: {shown}");
    assert!(shown.contains("not locked"), "the daemon answered: {shown}");
}
