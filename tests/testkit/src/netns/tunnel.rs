//! Looking at encrypted overlays from outside: code run inside a network namespace, packet
//! captures on the hosts' bridge, and a WireGuard handshake made with a node's own key file
//! (the test is root and reads it), to see whether another node still answers that key.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// The tunnel's UDP port on every node.
pub const TUNNEL_PORT: u16 = 51820;

/// Runs `f` on a thread inside the network namespace at `ns_path` (`/run/netns/NAME`); what
/// it opens (sockets) belongs to that namespace.
pub fn in_netns<T: Send + 'static>(
    ns_path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns_path.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// The newest secret key in a node's tunnel key file (`<data>/net/tunnel-keys`).
pub fn newest_key(data_root: &Path) -> StaticSecret {
    let path = data_root.join("net").join("tunnel-keys");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let secret: [u8; 32] = bytes[8..40].try_into().expect("a key record");
    StaticSecret::from(secret)
}

/// The public half of the newest key in a node's tunnel key file.
pub fn newest_public(data_root: &Path) -> PublicKey {
    PublicKey::from(&newest_key(data_root))
}

/// Whether the node at `peer` (its tunnel port) completes a WireGuard handshake started from
/// the namespace `ns_path` with the key `mine`, expecting the peer's key `theirs`.
pub fn handshake_answered(
    ns_path: &str,
    mine: StaticSecret,
    theirs: PublicKey,
    peer: SocketAddr,
) -> bool {
    in_netns(ns_path, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        sock.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        let mut tunn = Tunn::new(mine, theirs, None, None, 0x5eed, None);
        let mut out = vec![0u8; 2048];
        let mut buf = vec![0u8; 2048];
        for _ in 0..3 {
            match tunn.format_handshake_initiation(&mut out, true) {
                TunnResult::WriteToNetwork(p) => {
                    sock.send_to(p, peer).expect("send the handshake");
                }
                other => panic!("no handshake initiation: {other:?}"),
            }
            let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
            match tunn.decapsulate(None, &buf[..n], &mut out) {
                TunnResult::Err(_) => continue,
                _ => return true,
            }
        }
        false
    })
    .join()
    .expect("the handshake thread")
}

/// A packet capture on an interface of the root namespace, written to a file.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump` on `iface` (full packets, written as they come) and waits until it
    /// says it is listening.
    pub fn start(iface: &str, file: &Path) -> Capture {
        let mut child = Command::new("tcpdump")
            // Immediate mode: packets are not held back in the kernel's ring buffer (for up to
            // a second), where stopping the capture would discard them.
            .args(["-i", iface, "-s", "0", "-U", "-n", "--immediate-mode", "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        // Its stderr is read to the end on a thread of its own: tcpdump dies writing to a
        // closed pipe, and says "listening on" once packets are being captured.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("tcpdump on {iface} did not start listening"));
        Capture { child, file: file.to_path_buf() }
    }

    /// Stops the capture; the file's bytes.
    pub fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(1200));
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// How many captured packets `filter` (tcpdump's syntax) matches.
    pub fn count(file: &Path, filter: &str) -> usize {
        let out = Command::new("tcpdump")
            .arg("-r")
            .arg(file)
            .args(["-n", filter])
            .stderr(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
