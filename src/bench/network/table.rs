//! The table: the figures' medians beside the goals they are held to, and how each is taken.

use std::time::Duration;

use super::run::Figures;
use super::{NetworkArgs, ECHO_SIZE};
use crate::common::{load_note, median};

/// The median of some durations, in seconds.
fn med(v: &[Duration]) -> f64 {
    median(v.iter().map(Duration::as_secs_f64).collect())
}

pub(super) fn print_table(
    args: &NetworkArgs,
    f: &[Figures; 3],
    docker: Option<&str>,
    no_vip: Option<&str>,
) {
    println!();
    println!(
        "network: per system two netns hosts on a veth bridge, a 2-node swarm, an overlay network; \
         medians of {} runs; Docker {}",
        args.runs.max(1),
        docker.unwrap_or("not measured")
    );
    let header = ["metric", "Shoal", "Docker Swarm", "bare veth", "goal"];
    print_rows(header, &rows(args.duration, f, no_vip));
    if let Some(note) = ratios_note(f) {
        print_note(&format!("({note})"));
    }
    println!(
        "  (lookups unanswered within 1 s: shoal {}, docker {}; {}; 2 shared cores: read ratios)",
        f[0].dns_lost,
        f[1].dns_lost,
        load_note()
    );
    print_note(METHOD);
}

/// `text` under the table, indented, in lines of at most 100 characters.
pub(super) fn print_note(text: &str) {
    for line in wrapped(text, 100) {
        println!("  {line}");
    }
}

/// The table's rows: the figures' medians, and the goals they are held to.
fn rows(secs: u64, f: &[Figures; 3], no_vip: Option<&str>) -> Vec<[String; 5]> {
    let gbits = |v: &[f64], of_bare: &[f64]| match (v.is_empty(), of_bare.is_empty()) {
        (true, _) => "-".to_string(),
        (false, true) => format!("{:.2} Gbit/s", median(v.to_vec())),
        (false, false) => {
            let (g, r) = (median(v.to_vec()), median(of_bare.to_vec()));
            format!("{g:.2} Gbit/s ({:.0}% of bare)", 100.0 * r)
        }
    };
    let pair = |p50: &[Duration], p99: &[Duration]| match p50.is_empty() {
        true => "-".to_string(),
        false => format!("{:.0} / {:.0} µs", med(p50) * 1e6, med(p99) * 1e6),
    };
    let ms = |v: &[Duration]| match v.is_empty() {
        true => "-".to_string(),
        false => format!("{:.0} ms", med(v) * 1e3),
    };
    let docker_vip = |cell: String| match no_vip {
        Some(why) if cell == "-" => format!("n/a: {why}"),
        _ => cell,
    };
    let bare_gbits = gbits(&f[2].direct_gbits, &[]);
    vec![
        [
            format!("TCP throughput to the service VIP (iperf3, {secs} s)"),
            gbits(&f[0].vip_gbits, &f[0].vip_of_bare),
            docker_vip(gbits(&f[1].vip_gbits, &f[1].vip_of_bare)),
            bare_gbits.clone(),
            format!(">= 90% of bare and >= Docker: {}", throughput_goal(f)),
        ],
        [
            "TCP throughput to the server task's address".into(),
            gbits(&f[0].direct_gbits, &f[0].direct_of_bare),
            gbits(&f[1].direct_gbits, &f[1].direct_of_bare),
            bare_gbits,
            "-".into(),
        ],
        [
            format!("TCP request/response p50 / p99 ({ECHO_SIZE} B, to the task)"),
            pair(&f[0].rr_p50, &f[0].rr_p99),
            pair(&f[1].rr_p50, &f[1].rr_p99),
            pair(&f[2].rr_p50, &f[2].rr_p99),
            "-".into(),
        ],
        [
            "service-name lookup p50 / p99 (127.0.0.11)".into(),
            pair(&f[0].dns_p50, &f[0].dns_p99),
            pair(&f[1].dns_p50, &f[1].dns_p99),
            "-".into(),
            format!("p99 < 1 ms: {}", goal(&f[0].dns_p99, |s| s < 1e-3)),
        ],
        [
            "task SIGKILLed -> out of the VIP".into(),
            ms(&f[0].out_of_vip),
            docker_vip(ms(&f[1].out_of_vip)),
            "-".into(),
            format!("<= 1 s: {}", goal(&f[0].out_of_vip, |s| s <= 1.0)),
        ],
        [
            "task SIGKILLed -> out of DNS answers (dnsrr)".into(),
            ms(&f[0].out_of_dns),
            ms(&f[1].out_of_dns),
            "-".into(),
            "-".into(),
        ],
    ]
}

/// `text`'s words in lines of at most `width` characters.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// How each figure is taken, printed under the table.
const METHOD: &str =
    "how: iperf3 runs inside the client task's network namespace (nsenter) against the \
iperf3 service's task on the other host; request/response is a 64-byte ping-pong on one TCP \
connection between two bench threads setns'd into the client's and the server task's \
namespaces; lookups are A queries for the server service's name sent one at a time to \
127.0.0.11:53 from the client task's namespace; removal: a fresh 2-task service (restart \
condition none) probed with a new connection every 10 ms (500 ms timeout) from the client \
task's namespace, one task's processes SIGKILLed from the host, then the time to the first \
attempt after which every attempt for 3 s connects.";

/// Shoal through its virtual IP against the bare path, and against Docker on the same kind
/// of path: each the median of the ratios of figures taken back to back in one run.
fn throughput_goal(f: &[Figures; 3]) -> &'static str {
    if f[0].vip_of_bare.is_empty() {
        return "-";
    }
    let vs_bare = median(f[0].vip_of_bare.clone()) >= 0.9;
    let vs_docker = f[0].of_docker.is_empty() || median(f[0].of_docker.clone()) >= 1.0;
    verdict(vs_bare && vs_docker)
}

/// Shoal's throughput over Docker's, run by run.
fn ratios_note(f: &[Figures; 3]) -> Option<String> {
    let runs = &f[0].of_docker;
    if runs.is_empty() {
        return None;
    }
    let path = if f[1].vip_gbits.is_empty() { "both to the task" } else { "both via VIP" };
    let each: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
    Some(format!(
        "shoal / docker throughput ({path}), per run: {}; median {:.3}; % of bare: median of \
         per-run ratios to the bare path in the same run",
        each.join(", "),
        median(runs.clone())
    ))
}

fn goal(v: &[Duration], met: impl Fn(f64) -> bool) -> &'static str {
    match v.is_empty() {
        true => "-",
        false => verdict(met(med(v))),
    }
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// A table with `|` between columns as wide as their widest cell, under `header`.
pub(super) fn print_rows<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(String::from);
    let all: Vec<&[String; N]> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> =
        (0..N).map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in all {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        println!("| {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_wrap_at_the_width() {
        assert_eq!(wrapped("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrapped("abcdefgh ij", 5), ["abcdefgh", "ij"]);
    }
}
