//! Damaged manager data and a full disk, with the real daemon (issue #3, item 8): one `shoald`
//! on a unix socket, driven with the `shoal` binary. A manager is initialised, acknowledged
//! writes are made, the daemon is stopped and its files are damaged: the restarted daemon must
//! refuse to serve with a message that names what is wrong (or, for harmless damage, serve
//! everything), never serve a state that misses an acknowledged write, never start a new empty
//! cluster; and once the files are restored every acknowledged write is there. On a small tmpfs,
//! a write that does not fit must fail saying the disk is full; the daemon, whose manager cannot
//! go on, must then exit promptly with that reason (not hang, not serve nothing), also when told
//! to stop; and once space is freed, a restarted daemon serves every write reported as done.
//!
//! No network namespaces: the cluster port is 127.0.0.1:0. The disk-full tests need root (a
//! tmpfs mount); without it they print a notice and pass, except under CI, where they fail.
//!
//! On a failure the message ends with the tail of the daemon's log.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::netns::{
    self, run_within, stderr, stdout, strip_ansi, text, Deviations, SHOAL, SHOALD,
};

/// How long one `shoal` call may take before the test calls it hung.
const CALL: Duration = Duration::from_secs(20);
/// How long a damaged daemon gets to either exit or answer.
const VERDICT: Duration = Duration::from_secs(15);
/// What the disk-full tests write: well under the 500 KiB secret limit, over sled's blob size.
const BIG: usize = 400 * 1024;

// ---------------------------------------------------------------------------------------------
// The daemon fixture
// ---------------------------------------------------------------------------------------------

/// One `shoald` with its data root, socket and log. Dropping it kills the daemon; during a panic
/// it also prints the tail of the log.
struct Shoald {
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// Where the current run's lines start in the log.
    log_from: usize,
    child: Option<Child>,
}

impl Shoald {
    /// A daemon whose data root is `data`; socket and log go in `dir`.
    fn new(dir: &Path, data: PathBuf) -> Shoald {
        Shoald {
            data,
            socket: dir.join("shoal.sock"),
            log: dir.join("shoald.log"),
            log_from: 0,
            child: None,
        }
    }

    fn store(&self) -> PathBuf {
        self.data.join("manager").join("store")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "shoald is already running");
        let _ = std::fs::remove_file(&self.socket);
        self.log_from = std::fs::read(&self.log).map(|l| l.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&*SHOALD)
            .arg("--data-root")
            .arg(&self.data)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--hostname", "m1", "--executor", "fake", "--log-level", "info"])
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", SHOALD.display()));
        self.child = Some(child);
    }

    /// Starts the daemon and waits until it answers `shoal info`.
    fn start(&mut self) {
        self.spawn();
        match self.verdict() {
            Verdict::Answering => {}
            Verdict::Exited(status) => panic!("shoald exited at start ({status}):\n{}", self.log()),
            Verdict::Silent => panic!("shoald did not answer within {VERDICT:?}"),
        }
    }

    /// Waits until a just spawned daemon exits or answers `shoal info`.
    fn verdict(&mut self) -> Verdict {
        let deadline = Instant::now() + VERDICT;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Verdict::Exited(status);
            }
            if self.shoal(&["info"]).status.success() {
                return Verdict::Answering;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Verdict::Silent
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits up to `timeout` for the daemon to exit by itself: its status, or `None`.
    fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits up to `timeout`: the exit status (`None` if it was not running); a
    /// daemon still running then is killed and the error says so.
    fn stop_within(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, String> {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else { return Ok(None) };
        netns::quiet("kill", &["-TERM", &pid.to_string()]);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!("shoald was still running {timeout:?} after SIGTERM and was killed"))
    }

    fn stop(&mut self) {
        self.stop_within(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}:\n{}", self.log()));
    }

    /// SIGKILL, like a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&*SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        cmd
    }

    fn shoal(&self, args: &[&str]) -> Output {
        run_within(self.command(args), CALL).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `shoal ARGS` with `input` on standard input.
    fn shoal_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(child.wait_with_output())));
        rx.recv_timeout(CALL)
            .unwrap_or_else(|_| {
                netns::quiet("kill", &["-9", &pid.to_string()]);
                panic!("shoal {args:?} hung for more than {CALL:?}")
            })
            .unwrap()
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(out.status.success(), "`shoal {}` failed:\n{}", args.join(" "), text(&out));
        stdout(&out)
    }

    /// What the daemon logged since it was last started.
    fn log(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&all[self.log_from.min(all.len())..]))
    }
}

impl Drop for Shoald {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} -----\n{}",
                self.log.display(),
                netns::tail(&self.log, 40)
            );
        }
    }
}

enum Verdict {
    Exited(ExitStatus),
    Answering,
    Silent,
}

// ---------------------------------------------------------------------------------------------
// Acknowledged data
// ---------------------------------------------------------------------------------------------

/// Everything the CLI reported as done.
#[derive(Debug, Default)]
struct Acked {
    secrets: Vec<String>,
    configs: Vec<String>,
    services: Vec<String>,
    worker_token: String,
}

/// What a check of the acknowledged data found.
#[derive(Debug)]
enum Found {
    /// Everything is there.
    All,
    /// The manager answered, without some acknowledged writes.
    Missing(String),
    /// The manager did not answer: the error.
    Unavailable(String),
}

/// `swarm init` (with or without autolock) on loopback.
fn init(d: &Shoald, autolock: bool) {
    let mut args = vec!["swarm", "init", "--listen-addr", "127.0.0.1:0"];
    args.extend(["--advertise-addr", "127.0.0.1"]);
    if autolock {
        args.push("--autolock");
    }
    d.must(&args);
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// A few writes of every kind: secrets, a config, a service, a rotated join token.
fn write_acked(d: &Shoald, scratch: &Path) -> Acked {
    let mut acked = Acked::default();
    for name in ["db-password", "api-key", "tls-key"] {
        let file = write_file(scratch, name, format!("value of {name}").as_bytes());
        d.must(&["secret", "create", name, file.to_str().unwrap()]);
        acked.secrets.push(name.into());
    }
    let file = write_file(scratch, "nginx.conf", b"server { listen 80; }");
    d.must(&["config", "create", "nginx-conf", file.to_str().unwrap()]);
    acked.configs.push("nginx-conf".into());
    for name in ["web", "worker"] {
        d.must(&["service", "create", "--detach", "--name", name, "busybox", "sleep", "1000"]);
        acked.services.push(name.into());
    }
    acked.worker_token = d.must(&["swarm", "join-token", "--rotate", "-q", "worker"]).trim().into();
    acked
}

/// The NAME column of a `secret|config|service ls` table.
fn names(table: &str) -> Vec<String> {
    table.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).map(String::from).collect()
}

/// Reads every acknowledged write back.
fn check(d: &Shoald, acked: &Acked) -> Found {
    let lists =
        [("secret", &acked.secrets), ("config", &acked.configs), ("service", &acked.services)];
    let mut missing = Vec::new();
    for (kind, want) in lists {
        let out = d.shoal(&[kind, "ls"]);
        if !out.status.success() {
            return Found::Unavailable(format!("`shoal {kind} ls`: {}", stderr(&out).trim()));
        }
        let have = names(&stdout(&out));
        missing.extend(want.iter().filter(|n| !have.contains(n)).map(|n| format!("{kind} {n}")));
    }
    let out = d.shoal(&["swarm", "join-token", "-q", "worker"]);
    if !out.status.success() {
        return Found::Unavailable(format!("`shoal swarm join-token`: {}", stderr(&out).trim()));
    }
    if stdout(&out).trim() != acked.worker_token {
        missing.push("the rotated worker join token (an older one is served)".into());
    }
    if missing.is_empty() {
        Found::All
    } else {
        Found::Missing(missing.join(", "))
    }
}

/// Waits (a new leader, a first read) until the manager serves everything, or `timeout`.
fn check_within(d: &Shoald, acked: &Acked, timeout: Duration) -> Found {
    let deadline = Instant::now() + timeout;
    loop {
        match check(d, acked) {
            Found::Unavailable(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            found => return found,
        }
    }
}

fn assert_all_there(d: &Shoald, acked: &Acked, when: &str) {
    match check_within(d, acked, Duration::from_secs(10)) {
        Found::All => {}
        other => panic!("{when}: acknowledged writes are not all served: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Copies a directory tree, modes included.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {src:?}: {e}"));
        }
    }
}

/// Puts the saved copy of a data root back.
fn restore(saved: &Path, data: &Path) {
    if data.exists() {
        std::fs::remove_dir_all(data).unwrap();
    }
    copy_dir(saved, data);
}

/// Inverts `len` bytes in the middle of a file.
fn flip_middle(path: &Path, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    let end = (mid + len).min(bytes.len());
    bytes[mid..end].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: impl FnOnce(u64) -> u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = file.metadata().unwrap().len();
    file.set_len(len(size)).unwrap();
}

/// A manager with acknowledged writes, stopped, its data root saved next to it.
struct Stopped {
    /// Dropped first (fields drop in order): killed, and its log shown on a panic.
    daemon: Shoald,
    _dir: tempfile::TempDir,
    acked: Acked,
    saved: PathBuf,
    /// With autolock: the unlock key.
    unlock_key: Option<String>,
}

impl Stopped {
    fn new(autolock: bool) -> Stopped {
        let dir = tempfile::Builder::new().prefix("shoal-errors-").tempdir().unwrap();
        let mut daemon = Shoald::new(dir.path(), dir.path().join("data"));
        daemon.start();
        init(&daemon, autolock);
        let acked = write_acked(&daemon, dir.path());
        assert_all_there(&daemon, &acked, "before the restart");
        let unlock_key =
            autolock.then(|| daemon.must(&["swarm", "unlock-key", "-q"]).trim().to_string());
        daemon.stop();
        let saved = dir.path().join("saved");
        copy_dir(&daemon.data, &saved);
        Stopped { daemon, _dir: dir, acked, saved, unlock_key }
    }

    /// The sled data file of the manager's store.
    fn db_file(&self) -> PathBuf {
        self.daemon.store().join("db").join("db")
    }

    fn keys(&self) -> PathBuf {
        self.daemon.store().join("keys")
    }

    fn saved_db_file(&self) -> PathBuf {
        self.saved.join("manager").join("store").join("db").join("db")
    }

    /// Puts the saved data back, restarts and checks that every acknowledged write is served.
    fn restore_and_check(&mut self, when: &str) {
        restore(&self.saved, &self.daemon.data);
        self.daemon.start();
        if let Some(key) = &self.unlock_key {
            let out = self.daemon.shoal_with_input(&["swarm", "unlock"], &format!("{key}\n"));
            assert!(out.status.success(), "{when}: the unlock key is refused:\n{}", text(&out));
        }
        assert_all_there(&self.daemon, &self.acked, when);
        self.daemon.stop();
    }
}

/// How a restarted daemon dealt with damaged data.
#[derive(Debug)]
enum Outcome {
    /// It exited: status and log.
    Refused(ExitStatus, String),
    /// It runs and its manager refuses to serve: the last error and the log.
    Unavailable(String, String),
    /// It serves every acknowledged write (the damage was harmless).
    Whole,
    /// It serves a state without some acknowledged writes.
    Lost(String),
    /// It neither exited nor answered.
    Silent(String),
}

/// Starts the daemon on damaged data and sees what it does; leaves it stopped.
fn restart_damaged(d: &mut Shoald, acked: &Acked) -> Outcome {
    d.spawn();
    let outcome = match d.verdict() {
        Verdict::Exited(status) => Outcome::Refused(status, d.log()),
        Verdict::Silent => Outcome::Silent(d.log()),
        Verdict::Answering => match check_within(d, acked, Duration::from_secs(8)) {
            Found::All => Outcome::Whole,
            Found::Missing(what) => Outcome::Lost(what),
            Found::Unavailable(err) => Outcome::Unavailable(err, d.log()),
        },
    };
    d.kill();
    outcome
}

// ---------------------------------------------------------------------------------------------
// Damaged store
// ---------------------------------------------------------------------------------------------

/// A store emptied or removed (a wiped disk, a botched restore) is refused: the daemon does not
/// start a new empty cluster over it and serves nothing; the saved copy serves everything.
#[test]
fn an_emptied_or_removed_store_is_refused_and_never_replaced_by_a_new_cluster() {
    let mut s = Stopped::new(false);
    let (db_dir, db_file) = (s.daemon.store().join("db"), s.db_file());
    let cases: [(&str, &dyn Fn()); 2] = [
        ("db truncated to 0 bytes", &|| truncate(&db_file, |_| 0)),
        ("store db directory removed", &|| std::fs::remove_dir_all(&db_dir).unwrap()),
    ];
    let mut outcomes = Vec::new();
    for (what, damage) in cases {
        restore(&s.saved, &s.daemon.data);
        damage();
        outcomes.push((what, restart_damaged(&mut s.daemon, &s.acked)));
    }
    for (what, outcome) in &outcomes {
        eprintln!("{what}: {outcome:?}");
        assert!(
            matches!(outcome, Outcome::Refused(status, _) if !status.success())
                || matches!(outcome, Outcome::Unavailable(..)),
            "{what}: the daemon must refuse to serve, not {outcome:?}"
        );
    }
    s.restore_and_check("after restoring the saved store");
}

/// Whether a daemon dealt well with a damaged store: it serves everything, or it refuses with
/// a message naming the store (`store`, its path) or the damage.
fn judge(outcome: &Outcome, store: &str) -> Result<(), String> {
    let named = |msg: &str| {
        let m = msg.to_lowercase();
        msg.contains(store) || m.contains("damaged") || m.contains("corrupt")
    };
    match outcome {
        Outcome::Whole => Ok(()),
        Outcome::Refused(status, log) if !status.success() && named(log) => Ok(()),
        Outcome::Refused(status, log) => {
            Err(format!("exited ({status}) naming neither the store nor the damage:\n{log}"))
        }
        Outcome::Unavailable(err, log) if named(err) || named(log) => Ok(()),
        Outcome::Unavailable(err, log) => {
            Err(format!("refuses with {err:?}, naming neither the store nor the damage:\n{log}"))
        }
        Outcome::Lost(missing) => Err(format!("serves a state without acknowledged {missing}")),
        Outcome::Silent(log) => Err(format!("neither exits nor answers:\n{log}")),
    }
}

/// Bytes flipped in, or cut off, the store's data file: the daemon refuses with a message that
/// names the store (or serves everything, if the damage was harmless) and never serves a state
/// without an acknowledged write.
#[test]
fn a_damaged_store_is_refused_with_a_message_naming_it() {
    let mut s = Stopped::new(false);
    let store = s.daemon.store().display().to_string();
    let db_file = s.db_file();
    let cases: [(&str, &dyn Fn()); 3] = [
        ("64 bytes flipped in the middle of db", &|| flip_middle(&db_file, 64)),
        ("db truncated to half its size", &|| truncate(&db_file, |n| n / 2)),
        ("db truncated to 0 bytes", &|| truncate(&db_file, |_| 0)),
    ];
    let deviations = Deviations::default();
    for (what, damage) in cases {
        restore(&s.saved, &s.daemon.data);
        damage();
        let outcome = restart_damaged(&mut s.daemon, &s.acked);
        eprintln!("{what}: {outcome:?}");
        if let Err(e) = judge(&outcome, &store) {
            deviations.check(false, || format!("{what}: {e}"));
        }
    }
    s.restore_and_check("after restoring the saved store");
    deviations.result().unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------------------------

/// A damaged or missing data key, or a key-encryption key that is not the one that wrapped it:
/// the daemon exits non-zero naming the key file, leaves the store untouched, and the saved keys
/// open everything again.
#[test]
fn damaged_key_files_stop_the_daemon_with_the_file_named() {
    let mut s = Stopped::new(false);
    let keys = s.keys();
    let (kek, dek) = (keys.join("kek"), keys.join("dek"));
    let cases: [(&str, &dyn Fn()); 5] = [
        ("kek replaced by another key", &|| std::fs::write(&kek, [7u8; 32]).unwrap()),
        ("kek cut to 10 bytes", &|| truncate(&kek, |_| 10)),
        ("dek removed", &|| std::fs::remove_file(&dek).unwrap()),
        ("dek damaged", &|| flip_middle(&dek, 4)),
        ("dek and kek removed", &|| {
            std::fs::remove_file(&dek).unwrap();
            std::fs::remove_file(&kek).unwrap();
        }),
    ];
    let keys_dir = keys.display().to_string();
    for (what, damage) in cases {
        restore(&s.saved, &s.daemon.data);
        damage();
        let outcome = restart_damaged(&mut s.daemon, &s.acked);
        eprintln!("{what}: {outcome:?}");
        match &outcome {
            Outcome::Refused(status, log) => {
                assert!(!status.success(), "{what}: exit status {status}");
                assert!(log.contains(&keys_dir), "{what}: the message names no key file:\n{log}");
            }
            other => panic!("{what}: the daemon must exit naming the key file, not {other:?}"),
        }
        let db = std::fs::read(s.db_file()).unwrap();
        assert!(db == std::fs::read(s.saved_db_file()).unwrap(), "{what}: the store was changed");
    }
    s.restore_and_check("after restoring the saved keys");
}

/// Without autolock, a missing `kek` file is a lost key file, not a locked manager: the message
/// names the file instead of asking for an unlock key that does not exist.
#[test]
fn a_missing_kek_is_named_not_taken_for_autolock() {
    let mut s = Stopped::new(false);
    std::fs::remove_file(s.keys().join("kek")).unwrap();
    let kek = s.keys().join("kek").display().to_string();
    let outcome = restart_damaged(&mut s.daemon, &s.acked);
    eprintln!("kek removed: {outcome:?}");
    let said = match &outcome {
        Outcome::Refused(status, log) if !status.success() => log.clone(),
        Outcome::Unavailable(err, log) => format!("{err}\n{log}"),
        other => panic!("the daemon must refuse to serve, not {other:?}"),
    };
    s.restore_and_check("after restoring the kek");
    assert!(said.contains(&kek), "the message does not name {kek}:\n{said}");
    assert!(!said.contains("swarm unlock"), "a swarm without autolock is told to unlock:\n{said}");
}

// ---------------------------------------------------------------------------------------------
// Autolock
// ---------------------------------------------------------------------------------------------

/// Changes the last digit of an unlock key: the same form, another key.
fn other_key(key: &str) -> String {
    let (body, last) = key.split_at(key.len() - 1);
    format!("{body}{}", if last == "0" { "1" } else { "0" })
}

fn assert_locked(d: &Shoald, when: &str) {
    let info = d.must(&["info"]);
    assert!(info.contains("Swarm: locked"), "{when}: the manager is not locked:\n{info}");
}

/// A restarted autolocked manager stays locked through a wrong, a truncated and a malformed
/// unlock key, each refused with a message that says which; its store is untouched; the right
/// key unlocks it with every acknowledged write.
#[test]
fn a_wrong_unlock_key_keeps_the_manager_locked_and_the_right_one_opens_everything() {
    let mut s = Stopped::new(true);
    let key = s.unlock_key.clone().expect("an autolocked swarm has an unlock key");
    s.daemon.start();
    assert_locked(&s.daemon, "after the restart");
    let tries = [
        ("another key", other_key(&key), "wrong or rotated unlock key"),
        ("the key without its last 5 characters", key[..key.len() - 5].to_string(), "truncated"),
        ("a malformed key", "hello".to_string(), "should start with SHLKEY-1-"),
    ];
    for (what, given, says) in tries {
        let out = s.daemon.shoal_with_input(&["swarm", "unlock"], &format!("{given}\n"));
        eprintln!("unlock with {what}: {}", stderr(&out).trim());
        assert!(!out.status.success(), "{what} unlocked the manager:\n{}", text(&out));
        assert!(
            stderr(&out).contains(says),
            "{what}: the error does not say {says:?}:\n{}",
            text(&out)
        );
        assert_locked(&s.daemon, what);
    }
    let db = std::fs::read(s.db_file()).unwrap();
    assert!(db == std::fs::read(s.saved_db_file()).unwrap(), "a locked manager changed its store");
    let out = s.daemon.shoal_with_input(&["swarm", "unlock"], &format!("{key}\n"));
    assert!(out.status.success(), "the right key is refused:\n{}", text(&out));
    assert_all_there(&s.daemon, &s.acked, "after the unlock");
    s.daemon.stop();
}

/// Calls to a locked manager say that it is locked and how to unlock it, and `info` shows a
/// locked manager, not a worker.
#[test]
fn a_locked_manager_tells_callers_to_unlock_it() {
    let mut s = Stopped::new(true);
    s.daemon.start();
    assert_locked(&s.daemon, "after the restart");
    let info = s.daemon.must(&["info"]);
    assert!(info.contains("Role: manager"), "a locked manager shows another role:\n{info}");
    for call in [&["secret", "ls"][..], &["service", "ls"], &["node", "ls"]] {
        let out = s.daemon.shoal(call);
        assert!(!out.status.success(), "a locked manager answers {call:?}:\n{}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains("locked") && err.contains("swarm unlock"),
            "`shoal {}` says: {err}",
            call.join(" ")
        );
        assert!(!err.contains("not a swarm manager"), "`shoal {}` says: {err}", call.join(" "));
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

/// A `service logs --follow` left open does not keep a stopping shoald: a graceful shutdown
/// waits for calls in flight, and this one never ends. shoald finishes its shutdown (exit 0,
/// not the watchdog's exit 1) and a new one takes the store.
#[test]
fn sigterm_with_a_log_stream_open_still_ends_shoald() {
    let dir = tempfile::Builder::new().prefix("shoal-stop-").tempdir().unwrap();
    let mut daemon = Shoald::new(dir.path(), dir.path().join("data"));
    daemon.start();
    init(&daemon, false);
    let acked = write_acked(&daemon, dir.path());
    let mut follow = daemon
        .command(&["service", "logs", "--follow", "web"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = daemon.stop_within(Duration::from_secs(15));
    let _ = follow.kill();
    let _ = follow.wait();
    let status = stopped.unwrap_or_else(|e| panic!("{e}:\n{}", daemon.log()));
    assert!(
        status.is_some_and(|s| s.success()),
        "the shutdown was cut short ({status:?}): the open log stream held it up:\n{}",
        daemon.log()
    );
    daemon.start();
    assert_all_there(&daemon, &acked, "in a new shoald after the SIGTERM");
    daemon.stop();
}

// ---------------------------------------------------------------------------------------------
// Full disk
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let size = format!("size={size_mib}m");
        netns::must("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", dir.to_str().unwrap()]);
        Tmpfs { dir }
    }

    /// Free bytes.
    fn available(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(&self.dir).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let nums: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert_eq!(nums.len(), 2, "stat -f said {text:?}");
        nums[0] * nums[1]
    }

    /// Fills all but `leave` bytes with a file; returns its path.
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = self.available().saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        file.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap();
        if !netns::quiet("umount", &[dir]) {
            netns::quiet("umount", &["-l", dir]);
        }
    }
}

/// A write the CLI reported as failed.
#[derive(Debug)]
struct Failed {
    name: String,
    error: String,
    took: Duration,
}

/// A manager whose data root is on a tmpfs that big secrets filled. Fields drop in order: the
/// daemon is killed before the tmpfs is unmounted.
struct FullDisk {
    daemon: Shoald,
    tmpfs: Tmpfs,
    dir: tempfile::TempDir,
    /// Everything acknowledged, the big secrets that fit included.
    acked: Acked,
    failed: Vec<Failed>,
    filler: PathBuf,
}

/// Free space left beside the filler: room for two or three big secrets.
const LEAVE: u64 = 3 << 20;

impl FullDisk {
    /// A filled disk for `test`, which needs root for the tmpfs mount (`None`: skipped).
    fn as_root(test: &str) -> Option<FullDisk> {
        netns::root_for(test, "a tmpfs mount").then(FullDisk::new)
    }

    fn new() -> FullDisk {
        let dir = tempfile::Builder::new().prefix("shoal-full-").tempdir().unwrap();
        let tmpfs = Tmpfs::mount(dir.path().join("mnt"), 24);
        let mut daemon = Shoald::new(dir.path(), tmpfs.dir.join("data"));
        daemon.start();
        init(&daemon, false);
        let acked = write_acked(&daemon, dir.path());
        let filler = tmpfs.fill(LEAVE);
        let mut full = FullDisk { daemon, tmpfs, dir, acked, failed: Vec::new(), filler };
        full.write_until_full();
        full
    }

    /// Big secrets until one fails: then the manager cannot go on, and shoald exits.
    fn write_until_full(&mut self) {
        let data = write_file(self.dir.path(), "big", &vec![0x5a; BIG]);
        for i in 0..40 {
            let name = format!("big-{i}");
            let started = Instant::now();
            let out = self.daemon.shoal(&["secret", "create", &name, data.to_str().unwrap()]);
            let took = started.elapsed();
            if !out.status.success() {
                eprintln!("{name} failed after {took:?}: {}", stderr(&out).trim());
                self.failed.push(Failed { name, error: stderr(&out).trim().into(), took });
                break;
            }
            self.acked.secrets.push(name);
        }
        let fitted = self.acked.secrets.iter().filter(|n| n.starts_with("big-")).count();
        eprintln!("{fitted} big secrets fitted; {} free bytes left", self.tmpfs.available());
        assert!(!self.failed.is_empty(), "the disk never filled up");
    }

    fn free_space(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

/// On a full disk, a write fails without a hang, and every write the CLI reported as done is
/// there after space is freed and the daemon restarted (killed first, as a crash would).
#[test]
fn a_full_disk_loses_no_acknowledged_write() {
    let Some(mut full) = FullDisk::as_root("a_full_disk_loses_no_acknowledged_write") else {
        return;
    };
    for f in &full.failed {
        assert!(f.took < Duration::from_secs(15), "{} took {:?} to fail", f.name, f.took);
    }
    full.daemon.kill();
    full.free_space();
    full.daemon.start();
    assert_all_there(&full.daemon, &full.acked, "after freeing space and a restart");
    let data = write_file(full.dir.path(), "small", b"after the restart");
    full.daemon.must(&["secret", "create", "after-restart", data.to_str().unwrap()]);
    full.daemon.stop();
}

fn says_disk_full(msg: &str) -> bool {
    let m = msg.to_lowercase();
    m.contains("no space") || m.contains("disk full") || m.contains("disk is full")
}

/// On a full disk, the failed write says the disk is full. The manager cannot go on, so shoald
/// exits promptly with status 1 and the same reason in its log, instead of refusing every call
/// or hanging. Once space is freed, a restart serves every acknowledged write and takes new
/// ones, and stops and starts again cleanly.
#[test]
fn a_full_disk_is_reported_shoald_exits_and_a_restart_recovers() {
    let Some(mut full) =
        FullDisk::as_root("a_full_disk_is_reported_shoald_exits_and_a_restart_recovers")
    else {
        return;
    };
    for f in &full.failed {
        assert!(
            says_disk_full(&f.error),
            "{} failed without saying the disk is full: {:?}",
            f.name,
            f.error
        );
    }
    let Some(status) = full.daemon.exit_within(Duration::from_secs(10)) else {
        panic!("shoald still runs 10s after the disk filled:\n{}", full.daemon.log());
    };
    let log = full.daemon.log();
    assert_eq!(status.code(), Some(1), "shoald exited with {status} on the full disk:\n{log}");
    assert!(says_disk_full(&log), "shoald exited without naming the full disk:\n{log}");
    full.free_space();
    full.daemon.start();
    assert_all_there(&full.daemon, &full.acked, "after freeing space and a restart");
    let data = write_file(full.dir.path(), "small", b"after freeing space");
    full.daemon.must(&["secret", "create", "after-free", data.to_str().unwrap()]);
    full.acked.secrets.push("after-free".into());
    full.daemon.stop();
    full.daemon.start();
    assert_all_there(&full.daemon, &full.acked, "after a second restart");
    full.daemon.stop();
}

/// SIGTERM right after a write failed on a full disk: whatever its store is doing, shoald is
/// gone within 15s (a hung store flush must not keep it, and the store's lock, forever), and a
/// new shoald takes the store and serves every acknowledged write once space is freed.
#[test]
fn sigterm_after_a_full_disk_ends_shoald_and_frees_the_store() {
    let Some(mut full) =
        FullDisk::as_root("sigterm_after_a_full_disk_ends_shoald_and_frees_the_store")
    else {
        return;
    };
    if let Err(e) = full.daemon.stop_within(Duration::from_secs(15)) {
        panic!("{e}:\n{}", full.daemon.log());
    }
    full.free_space();
    full.daemon.start();
    assert_all_there(&full.daemon, &full.acked, "in a new shoald after the SIGTERM");
    full.daemon.stop();
}
