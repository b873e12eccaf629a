//! The `--encrypted` table: each system's encrypted overlay beside its plain one and the bare
//! path, encrypted over plain, the goal, and what a path that passed nothing answered.

use std::time::Duration;

use super::{plain_of, Column, Columns, BARE, WHO};
use crate::common::{load_note, median};
use crate::network::table::{print_note, print_rows, verdict};
use crate::network::{NetworkArgs, ECHO_SIZE, REACH_TIMEOUT, REACH_TRIES};

/// Shoal's encrypted overlay is held to this share of its plain overlay's throughput.
const GOAL: f64 = 0.5;

const HEADER: [&str; 7] = [
    "metric",
    "Shoal encrypted",
    "Shoal plain overlay",
    "Docker Swarm encrypted",
    "Docker Swarm plain overlay",
    "bare veth",
    "goal",
];

pub(in crate::network) fn print_table(args: &NetworkArgs, columns: &Columns, docker: Option<&str>) {
    let runs = args.runs.max(1);
    println!();
    println!(
        "network --encrypted: per system two netns hosts on a veth bridge, a 2-node swarm, a \
         plain and an encrypted overlay; task to task; medians of {runs} runs; Docker {}",
        docker.unwrap_or("not measured")
    );
    print_rows(HEADER, &rows(args.duration, columns));
    for note in notes(columns) {
        print_note(&format!("({note})"));
    }
    print_note(&format!("({}; 2 shared cores: read ratios)", load_note()));
    print_note(&method());
}

fn rows(secs: u64, columns: &Columns) -> Vec<[String; 7]> {
    vec![
        row(format!("TCP throughput task to task (iperf3, {secs} s)"), columns, throughput, "-"),
        row(format!("TCP request/response p50 / p99 ({ECHO_SIZE} B)"), columns, latency, "-"),
        row("encrypted / plain, median of per-run ratios".into(), columns, ratios, &goal(columns)),
    ]
}

/// One row: the metric, `cell` of every column, the goal.
fn row(
    metric: String,
    columns: &Columns,
    cell: fn(&Column, usize) -> String,
    goal: &str,
) -> [String; 7] {
    let mut row: [String; 7] = Default::default();
    row[0] = metric;
    for (i, c) in columns.iter().enumerate() {
        row[i + 1] = cell(c, i);
    }
    row[6] = goal.to_string();
    row
}

fn throughput(c: &Column, i: usize) -> String {
    if c.gbits.is_empty() {
        return shut(c);
    }
    let gbits = format!("{:.2} Gbit/s", median(c.gbits.clone()));
    match i == BARE || c.of_bare.is_empty() {
        true => partly(gbits, c),
        false => partly(format!("{gbits} ({:.0}% of bare)", 100.0 * median(c.of_bare.clone())), c),
    }
}

fn latency(c: &Column, _: usize) -> String {
    match c.rr_p50.is_empty() {
        true => shut(c),
        false => partly(pair(med(&c.rr_p50), med(&c.rr_p99)), c),
    }
}

/// Two round-trip times (seconds) in µs, or in ms when they run to tens of them.
fn pair(p50: f64, p99: f64) -> String {
    match p99 < 0.01 {
        true => format!("{:.0} / {:.0} µs", p50 * 1e6, p99 * 1e6),
        false => format!("{:.1} / {:.1} ms", p50 * 1e3, p99 * 1e3),
    }
}

/// Encrypted over plain: throughput, then latency (above 1 is slower).
fn ratios(c: &Column, i: usize) -> String {
    if plain_of(i).is_none() || (c.of_plain.is_empty() && c.p50_of_plain.is_empty()) {
        return "-".into();
    }
    let (t, p50, p99) = (times(&c.of_plain), times(&c.p50_of_plain), times(&c.p99_of_plain));
    format!("throughput {t}, latency p50 {p50} / p99 {p99}")
}

fn goal(columns: &Columns) -> String {
    let shoal = &columns[0];
    let met = match (shoal.of_plain.is_empty(), shoal.silent) {
        (false, _) => verdict(median(shoal.of_plain.clone()) >= GOAL),
        (true, 0) => "-",
        (true, _) => verdict(false),
    };
    format!("Shoal encrypted >= {:.0}% of plain throughput: {met}", GOAL * 100.0)
}

/// A cell without a figure: why, when the path passed no traffic.
fn shut(c: &Column) -> String {
    match (c.silent, &c.blocked) {
        (0, _) => "-".into(),
        (_, Some(blocked)) => format!("passes no traffic on this kernel ({})", blocked.what),
        (_, None) => format!("passes no traffic (no TCP connection in {} s)", reach_secs()),
    }
}

/// A figure of a path that passed no traffic in some runs says so.
fn partly(cell: String, c: &Column) -> String {
    match c.silent {
        0 => cell,
        n => format!("{cell}; no traffic in {n} runs"),
    }
}

/// The per-run ratios of each encrypted column, and what each silent path answered.
fn notes(columns: &Columns) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if plain_of(i).is_some() && !c.of_plain.is_empty() {
            notes.push(format!(
                "{} / plain, per run: throughput {}; latency p50 {}; p99 {}",
                WHO[i],
                each(&c.of_plain),
                each(&c.p50_of_plain),
                each(&c.p99_of_plain)
            ));
        }
        if let Some(failure) = &c.failure {
            let asked = c.blocked.as_ref().map(|b| format!("; asked: {}", b.said));
            notes.push(format!(
                "{}: no TCP connection in {} of {} runs; last: {failure}{}",
                WHO[i],
                c.silent,
                c.tried,
                asked.unwrap_or_default()
            ));
        }
    }
    notes
}

fn method() -> String {
    format!(
        "how: both systems create a plain and an encrypted (--opt encrypted) overlay and run \
         both services on both; iperf3 runs inside the client task's network namespace \
         (nsenter) against the server task's own address on each overlay, and between the two \
         hosts' namespaces for the bare path; request/response is a {ECHO_SIZE}-byte ping-pong \
         on one TCP connection between bench threads setns'd into the two tasks' namespaces, to \
         the same addresses. In every run each path must first take a TCP connection to the \
         iperf3 server ({REACH_TRIES} attempts of {} s), else it is recorded as passing no \
         traffic. Shoal encrypts with WireGuard in userspace (boringtun, UDP 51820), Docker with \
         kernel IPsec ESP. Not measured with --encrypted: virtual IPs, lookups, removal.",
        REACH_TIMEOUT.as_secs_f64()
    )
}

fn reach_secs() -> f64 {
    REACH_TIMEOUT.as_secs_f64() * f64::from(REACH_TRIES)
}

/// The median of some durations, in seconds.
fn med(v: &[Duration]) -> f64 {
    median(v.iter().map(Duration::as_secs_f64).collect())
}

fn times(v: &[f64]) -> String {
    match v.is_empty() {
        true => "-".into(),
        false => format!("{}x", ratio(median(v.to_vec()))),
    }
}

fn each(v: &[f64]) -> String {
    let each: Vec<String> = v.iter().map(|r| ratio(*r)).collect();
    each.join(", ")
}

/// A ratio with two decimals, or none once it is in the hundreds.
fn ratio(r: f64) -> String {
    match r < 100.0 {
        true => format!("{r:.2}"),
        false => format!("{r:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::cluster::Blocked;

    #[test]
    fn a_silent_path_says_why_instead_of_a_figure() {
        let mut c = Column { silent: 3, ..Column::default() };
        assert_eq!(throughput(&c, 2), "passes no traffic (no TCP connection in 10 s)");
        c.blocked = Some(Blocked { what: "no IPsec ESP", said: String::new() });
        assert_eq!(latency(&c, 2), "passes no traffic on this kernel (no IPsec ESP)");
        assert_eq!(ratios(&c, 2), "-");
    }

    #[test]
    fn slow_round_trips_read_in_milliseconds() {
        assert_eq!(pair(92e-6, 166e-6), "92 / 166 µs");
        assert_eq!(pair(0.413138, 0.416662), "413.1 / 416.7 ms");
        assert_eq!((ratio(0.1834), ratio(4482.14)), ("0.18".to_string(), "4482".to_string()));
    }

    #[test]
    fn the_goal_is_the_median_per_run_ratio() {
        let mut columns = Columns::default();
        columns[0].of_plain = vec![0.4, 0.55, 0.6];
        assert!(goal(&columns).ends_with(": met"), "{}", goal(&columns));
        columns[0].of_plain = vec![0.4, 0.45, 0.6];
        assert!(goal(&columns).ends_with("NOT met"));
        columns[0] = Column { silent: 1, ..Column::default() };
        assert!(goal(&columns).ends_with("NOT met"));
    }
}
