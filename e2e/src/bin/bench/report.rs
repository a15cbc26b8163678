//! The benchmark's output: a markdown table on stdout and the same figures as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::probe::median;
use crate::{Args, ToolKind};

/// Pins of the reference tools, as built by `make tools`.
const VERSIONS_ENV: &str = include_str!("../../../tools/versions.env");

/// What the table shows: (label, scenario, path into its figures).
const ROWS: &[(&str, &str, &[&str])] = &[
    ("cold convergence, s", "cold", &["seconds"]),
    ("cold: tool CPU, s", "cold", &["cpu_seconds"]),
    ("cold: tool peak RSS, MiB", "cold", &["peak_rss_mib"]),
    ("cold: write RPCs", "cold", &["write_rpcs"]),
    ("idle: tool CPU, s", "idle", &["cpu_seconds"]),
    ("idle: SPIRE server CPU, s", "idle", &["server_cpu_seconds"]),
    (
        "idle: SPIRE server CPU without the tool, s",
        "idle",
        &["server_baseline_cpu_seconds"],
    ),
    (
        "idle: SPIRE server CPU caused by the tool, s",
        "idle",
        &["server_cpu_caused_seconds"],
    ),
    ("idle: ListEntries calls", "idle", &["list_entries"]),
    ("idle: write RPCs", "idle", &["write_rpcs"]),
    ("idle: tool RSS, MiB", "idle", &["rss_mib"]),
    ("template change, s", "template", &["seconds"]),
    ("template: tool CPU, s", "template", &["cpu_seconds"]),
    ("template: write RPCs", "template", &["write_rpcs"]),
];

const CHURN_ROWS: &[(&str, &[&str])] = &[
    ("create->entries p50, s", &["create", "p50"]),
    ("create->entries p99, s", &["create", "p99"]),
    ("create->entries max, s", &["create", "max"]),
    ("delete->gone p50, s", &["delete", "p50"]),
    ("delete->gone p99, s", &["delete", "p99"]),
    ("delete->gone max, s", &["delete", "max"]),
    ("timed out pods", &["timed_out"]),
    ("failed looks at the server", &["observer_errors"]),
];

pub struct Report {
    header: Value,
    runs: BTreeMap<&'static str, Vec<Value>>,
    /// Seconds of the write floor, one per run.
    pub floor: Vec<f64>,
    /// The CSI suite's runs, by driver.
    pub csi: BTreeMap<&'static str, Vec<crate::csi::CsiFigures>>,
    /// The kubelet suite's runs, by driver.
    pub kubelet: BTreeMap<&'static str, Vec<crate::csi::CsiFigures>>,
}

impl Report {
    pub fn new(args: &Args, operator_binary: Option<&Path>) -> Self {
        let pin = |key: &str| {
            VERSIONS_ENV
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_owned()
        };
        let output = |program: &Path, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let header = json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": output(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
            "machine": {
                "nproc": std::thread::available_parallelism().map_or(0, usize::from),
                "memory_gib": (mem_gib * 10.0).round() / 10.0,
                "cpu": cpu,
            },
            "versions": {
                "ours": operator_binary.map(|b| output(b, &["--version"])),
                "ours_commit": output(Path::new("git"), &["rev-parse", "--short", "HEAD"]),
                "spire-controller-manager": pin("SPIRE_CONTROLLER_MANAGER_VERSION"),
                "spire-server": pin("SPIRE_VERSION"),
            },
            "options": {
                "pods": args.pods, "nodes": args.nodes, "csids": args.csids,
                "entries": args.pods * args.csids, "runs": args.runs,
                "datastore": format!("{:?}", args.datastore).to_lowercase(),
                "spire_cache": format!("{:?}", args.spire_cache).to_lowercase(),
                "idle_secs": args.idle_secs, "idle_baseline_secs": args.idle_baseline_secs,
                "churn_rates": args.churn_rates,
                "churn_secs": args.churn_secs, "churn_lifetime_secs": args.churn_lifetime_secs,
                "churn_poll_ms": args.churn_poll_ms,
                "gc_interval_secs": args.gc_interval_secs,
                "entry_resync_interval": args.entry_resync_interval.as_deref().unwrap_or("default"),
                "kubelet_pods": args.kubelet_pods, "kubelet_republish": args.kubelet_republish,
            },
        });
        Self {
            header,
            runs: BTreeMap::new(),
            floor: Vec::new(),
            csi: BTreeMap::new(),
            kubelet: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, kind: ToolKind, figures: BTreeMap<String, Value>) {
        let name = match kind {
            ToolKind::Ours => "ours",
            ToolKind::Scm => "scm",
        };
        self.runs
            .entry(name)
            .or_default()
            .push(Value::Object(figures.into_iter().collect()));
    }

    /// Prints the tables and writes the JSON file.
    pub fn finish(&self, args: &Args) -> anyhow::Result<()> {
        let medians = if self.runs.is_empty() {
            serde_json::Map::new()
        } else {
            self.print_operators(args)
        };
        let csi_medians = if self.csi.is_empty() {
            Value::Null
        } else {
            crate::csi::print_table(&self.csi, args.csi_volumes)
        };
        let kubelet_medians = if self.kubelet.is_empty() {
            Value::Null
        } else {
            crate::kubelet::print_table(&self.kubelet, args.kubelet_pods)
        };
        let mut all = self.header.clone();
        all["floor_seconds"] = json!(self.floor);
        all["runs"] = json!(self.runs);
        all["medians"] = Value::Object(medians);
        all["csi"] = json!({"volumes": args.csi_volumes, "runs": self.csi, "medians": csi_medians});
        all["kubelet"] =
            json!({"pods": args.kubelet_pods, "runs": self.kubelet, "medians": kubelet_medians});
        let file = crate::write_json(args, "bench", &all)?;
        println!("\nJSON: {}", file.display());
        Ok(())
    }

    /// Prints the operator table; returns its medians.
    fn print_operators(&self, args: &Args) -> serde_json::Map<String, Value> {
        let h = &self.header;
        println!("### spire-operator (ours) vs spire-controller-manager (SCM)\n");
        println!("- command: `{}`", h["command"].as_str().unwrap_or(""));
        println!(
            "- date: {}; machine: {} CPUs ({}), {} GiB",
            h["date"].as_str().unwrap_or(""),
            h["machine"]["nproc"],
            h["machine"]["cpu"].as_str().unwrap_or(""),
            h["machine"]["memory_gib"]
        );
        println!(
            "- versions: ours {} ({}), SCM {}, spire-server {}",
            h["versions"]["ours"].as_str().unwrap_or(""),
            h["versions"]["ours_commit"].as_str().unwrap_or(""),
            h["versions"]["spire-controller-manager"]
                .as_str()
                .unwrap_or(""),
            h["versions"]["spire-server"].as_str().unwrap_or("")
        );
        println!(
            "- {} pods on {} nodes, {} ClusterSPIFFEIDs: {} entries; datastore {}; SPIRE entry cache {}; gcInterval {} s; ours' --entry-resync-interval {}; {} run(s) per tool, alternating",
            args.pods,
            args.nodes,
            args.csids,
            args.pods * args.csids,
            h["options"]["datastore"].as_str().unwrap_or(""),
            match args.spire_cache {
                crate::SpireCache::Full => "full reload every 5 s",
                crate::SpireCache::Events => "events-based",
            },
            args.gc_interval_secs,
            args.entry_resync_interval
                .as_deref()
                .unwrap_or("default (5m)"),
            args.runs
        );
        if !self.floor.is_empty() {
            println!(
                "- SPIRE write floor (BatchCreateEntry of {} entries, batches of 50, 4 in flight): {} s, median {}",
                args.pods * args.csids,
                self.floor
                    .iter()
                    .map(|v| fmt(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt(median(&self.floor))
            );
        }
        println!();
        println!("| figure | ours (runs) | ours median | SCM (runs) | SCM median | ours/SCM |");
        println!("|---|---|---|---|---|---|");
        let mut medians = serde_json::Map::new();
        let mut rows: Vec<(String, String, Vec<&str>)> = ROWS
            .iter()
            .map(|(l, s, p)| ((*l).to_owned(), (*s).to_owned(), p.to_vec()))
            .collect();
        for rate in &args.churn_rates {
            for (l, p) in CHURN_ROWS {
                rows.push((
                    format!("churn {rate}/s: {l}"),
                    format!("churn{rate}"),
                    p.to_vec(),
                ));
            }
        }
        for (label, scenario, path) in rows {
            let values = |tool: &str| -> Vec<f64> {
                self.runs
                    .get(tool)
                    .into_iter()
                    .flatten()
                    .filter_map(|run| {
                        path.iter()
                            .try_fold(&run[scenario.as_str()], |v, k| v.get(k))
                            .and_then(Value::as_f64)
                    })
                    .collect()
            };
            let (ours, scm) = (values("ours"), values("scm"));
            if ours.is_empty() && scm.is_empty() {
                continue;
            }
            let (mo, ms) = (median(&ours), median(&scm));
            let ratio = if ms > 0.0 && mo.is_finite() {
                format!("{:.2}", mo / ms)
            } else {
                "-".to_owned()
            };
            let list = |v: &[f64]| v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(", ");
            println!(
                "| {label} | {} | {} | {} | {} | {ratio} |",
                list(&ours),
                fmt(mo),
                list(&scm),
                fmt(ms)
            );
            medians.insert(label, json!({"ours": mo, "scm": ms}));
        }
        medians
    }
}

/// Three significant-ish figures; "-" for missing values.
fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
