//! A task's death: how long a virtual IP or DNS round robin keeps sending new connections to
//! a task after its processes are SIGKILLed, timed by a probe in the client's namespace.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_testkit::poll::blocking::try_eventually;

use super::cluster::{Cluster, Mode};
use super::measure::{a_query, first_a, in_netns, RESOLVER};
use super::{go_on, IPERF_PORT, PROBE_EVERY, PROBE_QUIET, PROBE_TIMEOUT};

/// What the probe saw after the kill.
#[derive(Debug)]
pub(super) struct Removal {
    /// From the kill to the first attempt after which every one reached a live task.
    pub(super) after: Duration,
    /// Attempts after the kill that failed (sent to the dead task).
    pub(super) failed: usize,
}

/// Starts 2-task service `name`, probes it from the client's namespace with new connections
/// (one every `PROBE_EVERY`: to its virtual IP, or to the first address DNS gives for its
/// name), waits until every attempt succeeds, SIGKILLs one task's processes, and times until
/// the attempts succeed again for good: from the kill to the first attempt after which every
/// one reached a live task.
pub(super) fn removal(
    side: &dyn Cluster,
    client: &Path,
    name: &str,
    mode: Mode,
) -> Result<Removal> {
    side.start_pair(name, mode)?;
    let dial = match mode {
        Mode::Vip => Dial::Addr(SocketAddr::from((side.vip(name)?, IPERF_PORT))),
        Mode::Dnsrr => Dial::Name(a_query(name)?),
    };
    let probe = Probe::start(client, dial);
    let result = probe_removal(side, &probe, name);
    probe.stop();
    result
}

fn probe_removal(side: &dyn Cluster, probe: &Probe, name: &str) -> Result<Removal> {
    let steady = Duration::from_secs(2);
    try_eventually("every attempt to reach the service", Duration::from_secs(60), || {
        let seen = probe.since(Instant::now() - steady - PROBE_TIMEOUT);
        let enough = seen.len() as u128 >= steady.as_millis() / PROBE_EVERY.as_millis() / 2;
        let failed = seen.iter().filter(|(_, ok)| !ok).count();
        (enough && failed == 0).then_some(()).ok_or(format!("{failed} of {} failed", seen.len()))
    })
    .map_err(anyhow::Error::msg)?;
    let pids = side.victim(name)?;
    let killed = Instant::now();
    for pid in &pids {
        let pid = rustix::process::Pid::from_raw(*pid).context("a task PID")?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .with_context(|| format!("killing {pid:?}"))?;
    }
    loop {
        go_on()?;
        std::thread::sleep(Duration::from_millis(100));
        // Only attempts surely finished count: those started more than a timeout ago.
        let settled = Instant::now() - PROBE_TIMEOUT;
        if let Some(r) = judge(&probe.since(killed), killed, settled) {
            return Ok(r);
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("attempts still reached the dead task a minute after the kill");
        }
    }
}

/// The removal the attempts `seen` since `killed` show, once the ones started before
/// `settled` have been all successes for `PROBE_QUIET`; `None` while that is not so.
fn judge(seen: &[(Instant, bool)], killed: Instant, settled: Instant) -> Option<Removal> {
    let seen: Vec<&(Instant, bool)> = seen.iter().filter(|(t, _)| *t < settled).collect();
    let quiet_since = seen.iter().rev().find(|(_, ok)| !ok).map_or(killed, |(t, _)| *t);
    if settled.saturating_duration_since(quiet_since) < PROBE_QUIET {
        return None;
    }
    let first_good = seen.iter().find(|(t, ok)| *ok && *t > quiet_since)?;
    let failed = seen.iter().filter(|(_, ok)| !ok).count();
    Some(Removal { after: first_good.0.duration_since(killed), failed })
}

/// What a probe attempt dials.
#[derive(Debug, Clone)]
enum Dial {
    Addr(SocketAddr),
    /// The first address the resolver answers this query with (sent with a random ID each
    /// time, so a resolver that rotates its answers by ID rotates them here too).
    Name(Vec<u8>),
}

impl Dial {
    async fn attempt(&self) -> Result<()> {
        let to = match self {
            Dial::Addr(a) => *a,
            Dial::Name(query) => {
                let mut query = query.clone();
                query[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
                let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
                socket.connect(RESOLVER).await?;
                socket.send(&query).await?;
                let mut buf = [0u8; 1500];
                let len = socket.recv(&mut buf).await?;
                SocketAddr::from((first_a(&buf[..len])?, IPERF_PORT))
            }
        };
        tokio::net::TcpStream::connect(to).await?;
        Ok(())
    }
}

/// New connections from inside a namespace, one every `PROBE_EVERY` whether or not earlier
/// ones finished: when each started and whether it connected within `PROBE_TIMEOUT`.
struct Probe {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: JoinHandle<Result<()>>,
}

impl Probe {
    fn start(ns: &Path, dial: Dial) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = in_netns(ns, move || {
            // A runtime on this thread alone: every socket its tasks open is opened here.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let dial = Arc::new(dial);
                while !stop2.load(Ordering::SeqCst) {
                    let (seen, dial) = (seen2.clone(), dial.clone());
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let ok = matches!(
                            tokio::time::timeout(PROBE_TIMEOUT, dial.attempt()).await,
                            Ok(Ok(()))
                        );
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((t, ok));
                    });
                    tokio::time::sleep(PROBE_EVERY).await;
                }
                tokio::time::sleep(PROBE_TIMEOUT).await;
            });
            Ok(())
        });
        Probe { stop, seen, thread }
    }

    /// Finished attempts that started at `t` or later, in the order they started.
    fn since(&self, t: Instant) -> Vec<(Instant, bool)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(Instant, bool)> = seen.iter().filter(|(s, _)| *s >= t).copied().collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts every 10 ms from `start`, failing at the given indexes.
    fn attempts(start: Instant, n: usize, failing: &[usize]) -> Vec<(Instant, bool)> {
        let at = |i: usize| start + PROBE_EVERY * i as u32;
        (0..n).map(|i| (at(i), !failing.contains(&i))).collect()
    }

    #[test]
    fn removal_is_the_first_attempt_after_the_last_failure() {
        let killed = Instant::now();
        let seen = attempts(killed, 400, &[1, 2, 5, 9]);
        let settled = killed + Duration::from_secs(4);
        let r = judge(&seen, killed, settled).expect("3 s of successes after the last failure");
        assert_eq!((r.after, r.failed), (PROBE_EVERY * 10, 4));
    }

    #[test]
    fn no_verdict_until_the_successes_last() {
        let killed = Instant::now();
        let seen = attempts(killed, 400, &[1, 250]);
        assert!(judge(&seen, killed, killed + Duration::from_secs(4)).is_none());
        // Attempts not yet settled do not count, failed or not.
        assert!(judge(&seen, killed, killed + Duration::from_millis(2_000)).is_none());
    }

    #[test]
    fn without_failures_the_first_attempt_is_the_figure() {
        let killed = Instant::now();
        let seen = attempts(killed + Duration::from_millis(3), 400, &[]);
        let r = judge(&seen, killed, killed + Duration::from_secs(4)).unwrap();
        assert_eq!((r.after, r.failed), (Duration::from_millis(3), 0));
    }
}
