//! The clients of a chaos run: threads that call `shoal` against random managers, each call
//! recorded in the [`History`], and the reading of what the CLI answered as a model
//! [`Output`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output as Exit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::{Answer, History, Record};
use super::model::{Input, Output};
use crate::netns::{run_within, Node, SHOAL};

/// How long one call may take before the client gives up on it (its outcome is then unknown).
/// Below the managers' own 10 s commit timeout and below the longer faults, on purpose: a
/// write the client gave up on may still commit later, which the checker must allow.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// What an unknown outcome says when the client gave up waiting.
pub const NO_ANSWER: &str = "no answer within";

/// The image every service runs.
pub const IMAGE: &str = "busybox:chaos";

/// What every task runs.
pub const TASK: &str = "trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait";

/// What a client thread needs to call one manager.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub socket: PathBuf,
}

impl Endpoint {
    pub fn of(node: &Node) -> Endpoint {
        Endpoint { name: node.name.clone(), socket: node.socket.clone() }
    }

    /// `shoal -H unix://SOCKET ARGS`, killed after `timeout`.
    pub fn shoal(&self, args: &[&str], timeout: Duration) -> Result<Exit, String> {
        let mut cmd = Command::new(&*SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        run_within(cmd, timeout)
    }
}

/// The names the clients touch.
#[derive(Clone, Debug)]
pub struct Names {
    pub services: Vec<String>,
    pub secrets: Vec<String>,
    /// Secrets services may name (made before the run, never removed).
    pub pinned: Vec<String>,
}

impl Names {
    pub fn new(objects: usize, pinned: usize) -> Names {
        Names {
            services: (0..objects).map(|i| format!("svc{i}")).collect(),
            secrets: (0..objects).map(|i| format!("sec{i}")).collect(),
            pinned: (0..pinned).map(|i| format!("pin{i}")).collect(),
        }
    }
}

/// Everything the client threads share.
#[derive(Debug)]
pub struct Clients<'a> {
    pub history: &'a History,
    pub managers: Vec<Endpoint>,
    pub names: Names,
    /// Where secret data files go (each write's data is its own).
    pub dir: PathBuf,
    pub stop: AtomicBool,
    /// Numbers every write, for unique tags and data.
    pub serial: AtomicU64,
}

impl Clients<'_> {
    /// Client `me`'s loop, until `stop`: a random op on a random object through a random
    /// manager, a short pause, again.
    pub fn run(&self, me: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while !self.stop.load(Ordering::SeqCst) {
            let via = self.managers[rng.gen_range(0..self.managers.len())].clone();
            let (key, input) = self.pick(&mut rng);
            self.call(me, &via, &key, input);
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        }
    }

    fn pick(&self, rng: &mut StdRng) -> (String, Input) {
        let tag = || format!("t{}", self.serial.fetch_add(1, Ordering::SeqCst));
        let pinned = |rng: &mut StdRng| {
            let p = &self.names.pinned;
            (!p.is_empty() && rng.gen_bool(0.5)).then(|| p[rng.gen_range(0..p.len())].clone())
        };
        let roll = rng.gen_range(0..100);
        if rng.gen_bool(0.6) {
            let key = self.names.services[rng.gen_range(0..self.names.services.len())].clone();
            let input = match roll {
                0..=24 => Input::CreateService {
                    replicas: rng.gen_range(1..=3),
                    tag: tag(),
                    secrets: pinned(rng).into_iter().collect::<BTreeSet<_>>(),
                },
                25..=59 => {
                    let add = pinned(rng);
                    let rm = pinned(rng).filter(|r| Some(r) != add.as_ref());
                    Input::UpdateService { replicas: rng.gen_range(0..=3), tag: tag(), add, rm }
                }
                60..=74 => Input::RemoveService,
                _ => Input::InspectService,
            };
            (key, input)
        } else {
            let key = self.names.secrets[rng.gen_range(0..self.names.secrets.len())].clone();
            let input = match roll {
                0..=24 => Input::CreateSecret,
                25..=54 => Input::UpdateSecret,
                55..=69 => Input::RemoveSecret,
                _ => Input::InspectSecret,
            };
            (key, input)
        }
    }

    /// Makes one call and records it.
    pub fn call(&self, me: usize, via: &Endpoint, key: &str, input: Input) {
        let data = self.dir.join(format!("d{}", self.serial.fetch_add(1, Ordering::SeqCst)));
        let args = args(key, &input, &data);
        if matches!(input, Input::CreateSecret | Input::UpdateSecret) {
            // Data of its own: an update always makes a new version.
            let value = format!("{key}-{}", data.display());
            std::fs::write(&data, value).expect("writing a secret's data file");
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let call = self.history.now();
        let result = via.shoal(&args, CALL_TIMEOUT);
        let ret = self.history.now();
        let _ = std::fs::remove_file(&data);
        let answer = match result {
            Ok(out) => answer(key, &input, &out),
            Err(_) => Answer::Unknown(format!("{NO_ANSWER} {CALL_TIMEOUT:?}")),
        };
        let via = via.name.clone();
        self.history.push(Record { client: me, via, key: key.into(), input, call, ret, answer });
    }
}

/// The `shoal` arguments of `input` on `key`; `data` is the secret data file.
pub fn args(key: &str, input: &Input, data: &Path) -> Vec<String> {
    let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let data = data.display().to_string();
    match input {
        Input::CreateService { replicas, tag, secrets } => {
            let mut a = v(&["service", "create", "--detach", "--name", key]);
            a.extend(v(&["--replicas", &replicas.to_string(), "--label", &format!("chaos={tag}")]));
            a.extend(v(&["--restart-delay", "1s"]));
            for s in secrets {
                a.extend(v(&["--secret", s]));
            }
            // A shell that ends on SIGTERM (a bare sleep as PID 1 ignores it, and every stop
            // would wait out the grace period).
            a.extend(v(&[IMAGE, "/bin/busybox", "sh", "-c", TASK]));
            a
        }
        Input::UpdateService { replicas, tag, add, rm } => {
            let mut a = v(&["service", "update", "--detach", "--replicas", &replicas.to_string()]);
            a.extend(v(&["--label-add", &format!("chaos={tag}")]));
            if let Some(s) = add {
                a.extend(v(&["--secret-add", s]));
            }
            if let Some(s) = rm {
                a.extend(v(&["--secret-rm", s]));
            }
            a.push(key.into());
            a
        }
        Input::RemoveService => v(&["service", "rm", key]),
        Input::InspectService => v(&["service", "inspect", key]),
        Input::CreateSecret => v(&["secret", "create", key, &data]),
        Input::UpdateSecret => v(&["secret", "update", key, &data]),
        Input::RemoveSecret => v(&["secret", "rm", key]),
        Input::InspectSecret => v(&["secret", "inspect", key]),
    }
}

pub fn last_line(s: &str) -> String {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string()
}

/// What the CLI's exit, stdout and stderr say about `input` on `key`.
pub fn answer(key: &str, input: &Input, out: &Exit) -> Answer {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return refusal(key, input, &stderr);
    }
    match parse_success(key, input, &stdout) {
        Ok(o) => Answer::Known(o),
        // A success we cannot read is a bug of the runner or the CLI: say so loudly.
        Err(e) => panic!("`{}` on {key} succeeded but: {e}\nstdout:\n{stdout}", input.kind()),
    }
}

/// A failed call: a definite refusal, or unknown.
fn refusal(key: &str, input: &Input, stderr: &str) -> Answer {
    let kind = if input.kind().starts_with("service") { "service" } else { "secret" };
    // `service update` reads the service by name, then writes it by ID: a service removed in
    // between is named by its ID.
    let by_id = matches!(input, Input::UpdateService { .. });
    if stderr.contains(&format!("no such {kind}: {key}"))
        || (by_id && stderr.contains(&format!("no such {kind}: ")))
    {
        return Answer::Known(Output::NotFound);
    }
    if stderr.contains(&format!("a {kind} named {key} already exists")) {
        return Answer::Known(Output::AlreadyExists);
    }
    if stderr.contains("was changed by someone else") {
        return Answer::Known(Output::Changed);
    }
    // The CLI connects before it sends anything: nothing reached a daemon (killed, or not
    // started yet).
    if stderr.contains("cannot connect to the Shoal daemon") {
        return Answer::NotSent(last_line(stderr));
    }
    Answer::Unknown(last_line(stderr))
}

fn parse_success(key: &str, input: &Input, stdout: &str) -> Result<Output, String> {
    let line = last_line(stdout);
    match input {
        Input::CreateService { .. } | Input::CreateSecret => {
            let ok = !line.is_empty() && line.chars().all(|c| c.is_ascii_alphanumeric());
            ok.then(|| Output::Created { id: line.clone() }).ok_or("no ID printed".into())
        }
        Input::UpdateService { .. } | Input::RemoveService | Input::RemoveSecret => {
            (line == key).then_some(Output::Done).ok_or(format!("printed {line:?}, not {key}"))
        }
        Input::UpdateSecret => {
            let first = stdout.lines().next().unwrap_or_default();
            let v = first.strip_prefix(&format!("{key}: version ")).and_then(|v| v.parse().ok());
            v.map(Output::Version).ok_or(format!("no version in {first:?}"))
        }
        Input::InspectService => inspect_service(stdout),
        Input::InspectSecret => inspect_secret(stdout),
    }
}

fn first_json(stdout: &str) -> Result<serde_json::Value, String> {
    let all: serde_json::Value =
        serde_json::from_str(stdout).map_err(|e| format!("no JSON ({e})"))?;
    all.get(0).cloned().ok_or("an empty JSON list".into())
}

fn inspect_service(stdout: &str) -> Result<Output, String> {
    let j = first_json(stdout)?;
    let id = j["ID"].as_str().ok_or("no ID")?.to_string();
    let spec = &j["Spec"];
    let replicas = spec["Mode"]["Replicated"]["Replicas"].as_u64().ok_or("no replicas")?;
    let tag = spec["Labels"]["chaos"].as_str().ok_or("no chaos label")?.to_string();
    let refs = spec["TaskTemplate"]["ContainerSpec"]["Secrets"].as_array().cloned();
    let secrets = refs
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["SecretName"].as_str().map(String::from))
        .collect();
    Ok(Output::Service { id, replicas, tag, secrets })
}

fn inspect_secret(stdout: &str) -> Result<Output, String> {
    let j = first_json(stdout)?;
    let id = j["ID"].as_str().ok_or("no ID")?.to_string();
    let latest = j["Latest"].as_u64().ok_or("no Latest")?;
    Ok(Output::Secret { id, latest })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn exit(code: i32, stdout: &str, stderr: &str) -> Exit {
        Exit {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    fn up() -> Input {
        Input::UpdateService { replicas: 1, tag: "t1".into(), add: None, rm: None }
    }

    #[test]
    fn refusals_are_definite_and_the_rest_unknown() {
        let no = |e: &str| answer("svc0", &up(), &exit(1, "", e));
        assert_eq!(no("Error: no such service: svc0"), Answer::Known(Output::NotFound));
        // Removed between the CLI's read by name and its write by ID.
        assert_eq!(no("Error: no such service: 4pem971i5dl"), Answer::Known(Output::NotFound));
        let changed = "Error: service svc0 was changed by someone else (version 4 is not 5)";
        assert_eq!(no(changed), Answer::Known(Output::Changed));
        let refused = "Error: cannot connect to the Shoal daemon at unix:///x.sock; is shoald \
                       running?: transport error";
        assert!(matches!(no(refused), Answer::NotSent(_)));
        let lost = "Error: the swarm does not have a leader: too few managers may be reachable";
        assert!(matches!(no(lost), Answer::Unknown(_)));
        // Another object's name is no answer about this one.
        let other = answer("sec0", &Input::RemoveSecret, &exit(1, "", "no such secret: sec1"));
        assert!(matches!(other, Answer::Unknown(_)));
        let taken = answer(
            "sec0",
            &Input::CreateSecret,
            &exit(1, "", "a secret named sec0 already exists"),
        );
        assert_eq!(taken, Answer::Known(Output::AlreadyExists));
    }

    #[test]
    fn successes_are_read_from_what_the_cli_printed() {
        let ok = |input: &Input, out: &str| answer("sec0", input, &exit(0, out, ""));
        assert_eq!(
            ok(&Input::CreateSecret, "abc123\n"),
            Answer::Known(Output::Created { id: "abc123".into() })
        );
        let printed =
            "sec0: version 4\nNo service follows sec0; services keep the version they have.\n";
        assert_eq!(ok(&Input::UpdateSecret, printed), Answer::Known(Output::Version(4)));
        let json = r#"[{"ID": "s1", "Latest": 3, "Versions": []}]"#;
        assert_eq!(
            ok(&Input::InspectSecret, json),
            Answer::Known(Output::Secret { id: "s1".into(), latest: 3 })
        );
        let json = r#"[{"ID": "v1", "Spec": {"Labels": {"chaos": "t9"}, "Mode": {"Replicated": {"Replicas": 2}},
            "TaskTemplate": {"ContainerSpec": {"Secrets": [{"SecretName": "pin1"}]}}}}]"#;
        let seen = answer("svc0", &Input::InspectService, &exit(0, json, ""));
        let secrets = ["pin1".to_string()].into_iter().collect();
        let want = Output::Service { id: "v1".into(), replicas: 2, tag: "t9".into(), secrets };
        assert_eq!(seen, Answer::Known(want));
    }
}
