//! One load tool for every figure of issue 16 (item 4), measured in one run on the same
//! cores, and how the stream-dependent figures grow with the number of workloads (item 5).
//!
//! Parts (`--only` picks some, comma-separated; default all):
//! * `issuance`: the crypto limit (`mint`: a CSR checked and an SVID signed, nothing
//!   written) and end-to-end issuance (`Issuer::issue_x509`, and the Workload API's path
//!   `batch of 16`), in process, with their ratio to the crypto limit;
//! * `first-message`: FetchX509SVID first-message latency at N clients, each on its own
//!   connection, asking at a random moment within 1 s and then all at once (a burst);
//! * `memory`: the server's memory per open FetchX509SVID stream at N streams;
//! * `revocation`: closing the streams' incident: when each stream has its redaction, from
//!   the close returning and from its start;
//! * `storm`: N incidents opened at once for one workload, until its stream holds all N+1
//!   SVIDs;
//! * `cold-start`: `writ server` from exec to serving on R audit records and S SVID rows
//!   (and on an empty data directory), and its RSS.
//!
//! The Workload API parts run against a real `writ dev` (issuer and agent in one process,
//! `--demo-single-user` so this uid is the workload): one for `first-message`, a fresh
//! one for the others (memory a server kept from 10,000 clients would hide the streams');
//! cold start runs the real `writ server`. Progress goes to stderr; one table (name, value, unit, size, target) to
//! stdout at the end, or the same rows as a JSON array with `--json`.
//!
//! `cargo build --release --bin writ --example bench && target/release/examples/bench`
//!
//! Flags (defaults): --writ PATH (target/release/writ), --only PARTS, --json, --secs N (2,
//! per issuance row), --threads N (64, issuance threads), --clients N (1000), --streams N
//! (10000), --per-conn N (64, the agent's most streams per connection), --storm N (1000),
//! --records N (1000000), --svids N (100000), --runs N (3, cold starts of each directory),
//! --drop-caches (as root: empty the page cache before each cold start).
//!
//! Growth (item 5): `--sizes 1000,10000,100000` runs `first-message` (spread over 1 s),
//! `memory` and `revocation` at each size (N clients, N streams), each on a fresh `writ
//! dev`, and prints one table of each figure by size (or the rows with `--json`). The tool
//! raises its open-file limit (and its `writ dev`'s) to fit the connections as far as the
//! hard limit allows; each client is a connection, so where they do not fit, fewer are
//! measured and the row's size (and a note under the growth table) says how many.

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/cold_start.rs"]
mod cold_start;
#[path = "common/issuance.rs"]
mod issuance;
#[path = "common/load.rs"]
mod load;
#[path = "common/workload.rs"]
mod workload;

use load::{arg_checked, flag, percentile, value};
use std::path::Path;
use std::time::Duration;

/// Every part, in the order they run.
const PARTS: [&str; 6] = [
    "issuance",
    "first-message",
    "memory",
    "revocation",
    "storm",
    "cold-start",
];

/// One figure of the run.
#[derive(serde::Serialize)]
struct Row {
    part: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    size: String,
    /// Issue 16's target for this figure, where it sets one (or an earlier issue's, named).
    target: Option<&'static str>,
}

/// The rows measured so far.
#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn push(&mut self, part: &'static str, name: &str, value: f64, unit: &'static str) -> &mut Row {
        self.0.push(Row {
            part,
            name: name.to_owned(),
            value,
            unit,
            size: String::new(),
            target: None,
        });
        let row = self.0.last_mut().expect("just pushed");
        eprintln!("  {name}: {} {unit}", shown(value, unit));
        row
    }

    /// `p50` and `p99` of `sorted` as two rows `NAME p50` and `NAME p99`, in ms.
    fn percentiles(&mut self, part: &'static str, name: &str, sorted: &[Duration], size: &str) {
        for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
            self.push(
                part,
                &format!("{name} {label}"),
                ms(percentile(sorted, p)),
                "ms",
            )
            .size = size.to_owned();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `value` as the table shows it in `unit`.
fn shown(value: f64, unit: &str) -> String {
    match unit {
        "ms" if value < 10.0 => format!("{value:.2}"),
        "ms" if value < 100.0 => format!("{value:.1}"),
        "ratio" => format!("{value:.2}"),
        "KiB" | "MiB" => format!("{value:.1}"),
        _ => count(value.round() as usize),
    }
}

/// Thousands separated by commas, as the docs write them.
fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Issuance in process: the crypto limit and the two end-to-end paths, one after another
/// on the same issuer and cores.
fn issuance_rows(rows: &mut Rows, threads: usize, secs: Duration) {
    eprintln!("== issuance: ×{threads} threads, {secs:?} per path");
    let (_dir, issuer) = issuance::issuer(None);
    let size = format!("×{threads} threads, {} s", secs.as_secs());
    let mint = issuance::measure(&issuer, "mint", threads, secs).rate();
    rows.push("issuance", "mint (crypto limit)", mint, "SVIDs/s")
        .size
        .clone_from(&size);
    for (path, ratio) in [
        ("Issuer::issue_x509", "Issuer::issue_x509 / mint"),
        ("batch of 16", "batch of 16 / mint"),
    ] {
        let rate = issuance::measure(&issuer, path, threads, secs).rate();
        rows.push("issuance", path, rate, "SVIDs/s")
            .size
            .clone_from(&size);
        let row = rows.push("issuance", ratio, rate / mint, "ratio");
        row.size.clone_from(&size);
        row.target = Some("≥ 0.5");
    }
}

/// What the Workload API parts measure, and at what size.
struct WorkloadSizes {
    clients: usize,
    streams: usize,
    per_conn: usize,
    storm: usize,
    /// Only the spread first-message figures (the growth table), not the burst.
    spread_only: bool,
}

/// The Workload API parts in `parts` against a fresh `writ dev`.
async fn workload_rows(rows: &mut Rows, writ: &Path, parts: &[&str], sizes: &WorkloadSizes) {
    let has = |p: &str| parts.contains(&p);
    let WorkloadSizes {
        clients,
        streams,
        per_conn,
        storm,
        spread_only,
    } = *sizes;
    let limit = load::raise_nofile(2 * clients.max(streams.div_ceil(per_conn)) as u64 + 4096);
    eprintln!(
        "== workload API: writ dev ({}), open files {limit}",
        writ.display()
    );

    if has("first-message") {
        // One connection per client, in this process and in the server: more clients than
        // the open-file limit leaves room for (it cannot be raised past the hard limit
        // without CAP_SYS_RESOURCE) are not measured; the size says so.
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(1024)
            / 1000
            * 1000;
        let (clients, size) = if clients > room {
            eprintln!("  only {room} clients fit the open-file limit ({limit}), not {clients}");
            (
                room,
                format!("{} clients (open files: {limit})", count(room)),
            )
        } else {
            (clients, format!("{} clients", count(clients)))
        };
        let workload = workload::Workload::start(writ, clients + 64).await;
        eprintln!("  connecting {clients} clients");
        let conns = workload::clients(&workload.socket, clients).await;
        let mut modes = vec![("first message, spread over 1 s", Duration::from_secs(1))];
        if !spread_only {
            modes.push(("first message, burst", Duration::ZERO));
        }
        for (name, spread) in modes {
            let latencies = workload::first_message(&conns, spread).await;
            rows.percentiles("first-message", name, &latencies, &size);
            if !spread.is_zero() {
                rows.0.last_mut().expect("p99").target = Some("≤ 2 ms (issue 3)");
            }
        }
    }
    if !(has("memory") || has("revocation") || has("storm")) {
        return;
    }
    // A fresh server: the memory the clients above made it keep would hide the streams'.
    let workload = workload::Workload::start(writ, streams.div_ceil(per_conn) + 64).await;

    if has("memory") || has("revocation") {
        eprintln!("  opening {streams} streams, {per_conn} per connection");
        let held = workload::hold(&workload, streams, per_conn).await;
        let size = format!("{} streams", count(streams));
        if has("memory") {
            let row = rows.push(
                "memory",
                "server memory per stream",
                held.kib_per_stream,
                "KiB",
            );
            row.size.clone_from(&size);
            row.target = Some("≤ 16 KiB (issue 3)");
        }
        if has("revocation") {
            eprintln!("  closing their incident");
            let r = workload::revoke(&workload, held).await;
            rows.push("revocation", "close RPC", ms(r.close), "ms")
                .size
                .clone_from(&size);
            rows.push(
                "revocation",
                "streams redacted",
                r.redacted as f64,
                "streams",
            )
            .size
            .clone_from(&size);
            rows.percentiles(
                "revocation",
                "redaction after the close returned",
                &r.from_return,
                &size,
            );
            rows.0.last_mut().expect("p99").target = Some("≤ 100 ms (issue 4)");
            rows.percentiles(
                "revocation",
                "redaction after the close started",
                &r.from_start,
                &size,
            );
        }
    }

    if has("storm") {
        eprintln!("  storm: opening {storm} incidents at once");
        let s = workload::storm(&workload, storm).await;
        let size = format!("{} incidents", count(storm));
        rows.push("storm", "storm: every open returned", ms(s.opened), "ms")
            .size
            .clone_from(&size);
        let row = rows.push(
            "storm",
            "storm: workload holds all N+1 SVIDs",
            ms(s.held),
            "ms",
        );
        row.size.clone_from(&size);
        row.target = Some("≤ 1 s");
    }
}

/// Cold starts of `writ server` on an empty data directory and on a filled one.
fn cold_start_rows(rows: &mut Rows, writ: &Path, records: usize, svids: usize, runs: usize) {
    let drop_caches = flag("--drop-caches");
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("== cold start: an empty data directory (made by a first start)");
    let empty = dir.path().join("empty");
    cold_start::fill(&empty, 0, 0);
    eprintln!("== cold start: filling {records} audit records, {svids} live SVID rows");
    let history = dir.path().join("history");
    cold_start::fill(&history, records, svids);
    let median = |starts: &[cold_start::Start]| starts[starts.len() / 2];
    let empty_starts = cold_start::measure("empty", writ, dir.path(), &empty, runs, drop_caches);
    let size_empty = format!("empty, median of {runs}");
    rows.push(
        "cold-start",
        "cold start: accepting (empty)",
        ms(median(&empty_starts).ready),
        "ms",
    )
    .size = size_empty;
    let starts = cold_start::measure("history", writ, dir.path(), &history, runs, drop_caches);
    let size = format!(
        "{} records, {} SVID rows, median of {runs}{}",
        count(records),
        count(svids),
        if drop_caches {
            ", page cache emptied"
        } else {
            ""
        }
    );
    let m = median(&starts);
    let row = rows.push("cold-start", "cold start: accepting", ms(m.ready), "ms");
    row.size.clone_from(&size);
    row.target = Some("≤ 1 s");
    rows.push(
        "cold-start",
        "cold start: answered an admin call",
        ms(m.answered),
        "ms",
    )
    .size
    .clone_from(&size);
    rows.push(
        "cold-start",
        "cold start: RSS",
        m.rss_kib as f64 / 1024.0,
        "MiB",
    )
    .size
    .clone_from(&size);
}

/// The rows as one Markdown table.
fn print_table(rows: &[Row]) {
    println!("| figure | value | unit | size | target |");
    println!("|---|---:|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name,
            shown(r.value, r.unit),
            r.unit,
            r.size,
            r.target.unwrap_or("—")
        );
    }
}

/// The growth table: one line per figure, one column per size.
fn print_growth(by_size: &[(usize, Vec<Row>)]) {
    let mut names: Vec<(&str, &str)> = Vec::new();
    for r in by_size.iter().flat_map(|(_, rows)| rows) {
        if !names.contains(&(r.name.as_str(), r.unit)) {
            names.push((r.name.as_str(), r.unit));
        }
    }
    let header: Vec<String> = by_size.iter().map(|(size, _)| count(*size)).collect();
    println!("| figure | unit | {} |", header.join(" | "));
    println!("|---|---|{}", "---:|".repeat(by_size.len()));
    for (name, unit) in names {
        let cells: Vec<String> = by_size
            .iter()
            .map(|(_, rows)| {
                rows.iter()
                    .find(|r| r.name == name)
                    .map_or_else(|| "—".to_owned(), |r| shown(r.value, unit))
            })
            .collect();
        println!("| {name} | {unit} | {} |", cells.join(" | "));
    }
    // Where a figure was measured at another size than its column's (clients capped by
    // the open-file limit), say so under the table.
    let mut notes: Vec<String> = Vec::new();
    for (size, rows) in by_size {
        for r in rows {
            let note = format!("* at {}, {}: {}", count(*size), r.part, r.size);
            if !r.size.starts_with(&count(*size)) && !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("{note}");
        }
    }
}

fn main() {
    let writ = load::writ_bin();
    let only = value("--only");
    let parts: Vec<&str> = match &only {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => PARTS.to_vec(),
    };
    if let Some(unknown) = parts.iter().find(|p| !PARTS.contains(p)) {
        panic!(
            "--only: no part {unknown:?}; the parts are {}",
            PARTS.join(",")
        );
    }
    let per_conn = arg_checked("--per-conn", 64).clamp(1, 64);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    if let Some(list) = value("--sizes") {
        let sizes: Vec<usize> = list
            .split(',')
            .map(|s| s.trim().replace('_', "").parse().expect("--sizes"))
            .collect();
        let growth: Vec<&str> = parts
            .iter()
            .copied()
            .filter(|p| ["first-message", "memory", "revocation"].contains(p))
            .collect();
        let mut by_size = Vec::new();
        for &size in &sizes {
            eprintln!("== growth: size {}", count(size));
            let mut rows = Rows::default();
            let sizes = WorkloadSizes {
                clients: size,
                streams: size,
                per_conn,
                storm: 0,
                spread_only: true,
            };
            runtime.block_on(workload_rows(&mut rows, &writ, &growth, &sizes));
            by_size.push((size, rows.0));
        }
        if flag("--json") {
            let rows: Vec<&Row> = by_size.iter().flat_map(|(_, rows)| rows).collect();
            println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
        } else {
            print_growth(&by_size);
        }
        return;
    }

    let has = |p: &str| parts.contains(&p);
    let mut rows = Rows::default();
    if has("issuance") {
        let secs = Duration::from_secs(arg_checked("--secs", 2) as u64);
        issuance_rows(&mut rows, arg_checked("--threads", 64), secs);
    }
    if ["first-message", "memory", "revocation", "storm"]
        .iter()
        .any(|p| has(p))
    {
        let sizes = WorkloadSizes {
            clients: arg_checked("--clients", 1000),
            streams: arg_checked("--streams", 10_000),
            per_conn,
            storm: arg_checked("--storm", 1000),
            spread_only: false,
        };
        runtime.block_on(workload_rows(&mut rows, &writ, &parts, &sizes));
    }
    if has("cold-start") {
        cold_start_rows(
            &mut rows,
            &writ,
            arg_checked("--records", 1_000_000),
            arg_checked("--svids", 100_000),
            arg_checked("--runs", 3).max(1),
        );
    }
    if flag("--json") {
        println!("{}", serde_json::to_string_pretty(&rows.0).expect("json"));
    } else {
        print_table(&rows.0);
    }
}
