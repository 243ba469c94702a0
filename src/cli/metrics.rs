//! `cohost metrics`: every instance's state, restarts, last start timing
//! and usage in the Prometheus text exposition format (version 0.0.4),
//! for node_exporter's textfile collector. `--output FILE` writes a
//! temporary file beside FILE and renames it over FILE, so the collector
//! never reads half a file (node_exporter's README says to do exactly that).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::Ctx;
use super::observe::fetch_or_offline;
use crate::control::proto::InstanceStatus;

const STATES: [&str; 7] = [
    "stopped",
    "waiting-address",
    "starting",
    "running",
    "stopping",
    "restarting",
    "failed",
];

/// A label value, escaped as the format wants (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    samples: Vec<(String, f64)>,
}

impl Family<'_> {
    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", self.name);
        }
    }
}

fn labels(s: &InstanceStatus) -> String {
    format!(
        "instance=\"{}\",service=\"{}\"",
        esc(&s.id),
        esc(&s.service)
    )
}

/// One family per usage figure: (name, kind, help, figure).
type Figure = fn(&crate::control::observe::Usage) -> Option<u64>;

const USAGE: [(&str, &str, &str, Figure, f64); 6] = [
    (
        "cohost_instance_memory_bytes",
        "gauge",
        "Memory charged to the instance's cgroup now.",
        |u| u.memory_bytes,
        1.0,
    ),
    (
        "cohost_instance_memory_peak_bytes",
        "gauge",
        "Highest memory charged to the instance's cgroup.",
        |u| u.memory_peak_bytes,
        1.0,
    ),
    (
        "cohost_instance_cpu_seconds_total",
        "counter",
        "CPU time used by the instance's processes in this run.",
        |u| u.cpu_usec,
        1e-6,
    ),
    (
        "cohost_instance_io_read_bytes_total",
        "counter",
        "Bytes the instance read from block devices in this run.",
        |u| u.io_read_bytes,
        1.0,
    ),
    (
        "cohost_instance_io_write_bytes_total",
        "counter",
        "Bytes the instance wrote to block devices in this run.",
        |u| u.io_write_bytes,
        1.0,
    ),
    (
        "cohost_instance_pids",
        "gauge",
        "Processes in the instance's cgroup now.",
        |u| u.pids,
        1.0,
    ),
];

/// State, restarts and uptime.
fn state_families(list: &[InstanceStatus]) -> Vec<Family<'static>> {
    vec![
        Family {
            name: "cohost_instance_up",
            kind: "gauge",
            help: "1 if the instance is running (ready), else 0.",
            samples: list
                .iter()
                .map(|s| (labels(s), f64::from(u8::from(s.state == "running"))))
                .collect(),
        },
        Family {
            name: "cohost_instance_state",
            kind: "gauge",
            help: "1 for the state the instance is in, 0 for the others.",
            samples: list
                .iter()
                .flat_map(|s| {
                    STATES.iter().map(move |st| {
                        let l = format!("{},state=\"{st}\"", labels(s));
                        (l, f64::from(u8::from(s.state == *st)))
                    })
                })
                .collect(),
        },
        Family {
            name: "cohost_instance_restarts",
            kind: "gauge",
            help: "Automatic restarts since the last requested start.",
            samples: list
                .iter()
                .map(|s| (labels(s), f64::from(s.restarts)))
                .collect(),
        },
        Family {
            name: "cohost_instance_uptime_seconds",
            kind: "gauge",
            help: "Seconds the instance has been running.",
            samples: list
                .iter()
                .filter_map(|s| Some((labels(s), s.uptime_s? as f64)))
                .collect(),
        },
    ]
}

/// The last start's timing by phase, and the lock record's age.
fn timing_families(list: &[InstanceStatus]) -> Vec<Family<'static>> {
    vec![
        Family {
            name: "cohost_instance_last_start_seconds",
            kind: "gauge",
            help: "Where the last start spent its time, by phase (address, lock, setup, exec, ready, total).",
            samples: list
                .iter()
                .flat_map(|s| {
                    s.timing.iter().flat_map(move |t| {
                        t.parts().into_iter().map(move |(p, ms)| {
                            (format!("{},phase=\"{p}\"", labels(s)), ms / 1000.0)
                        })
                    })
                })
                .collect(),
        },
        Family {
            name: "cohost_instance_lock_record_age_seconds",
            kind: "gauge",
            help: "At the last start: age of the lock record left by the previous holder.",
            samples: list
                .iter()
                .filter_map(|s| {
                    let age = s.timing.as_ref()?.lock_record_age?;
                    Some((labels(s), age / 1000.0))
                })
                .collect(),
        },
    ]
}

/// The exposition text for these instances (pure).
pub fn render(list: &[InstanceStatus]) -> String {
    let mut fams = state_families(list);
    fams.extend(timing_families(list));
    for (name, kind, help, fig, scale) in USAGE {
        fams.push(Family {
            name,
            kind,
            help,
            samples: list
                .iter()
                .filter_map(|s| {
                    let v = fig(s.usage.as_ref()?)?;
                    Some((labels(s), v as f64 * scale))
                })
                .collect(),
        });
    }
    let mut out = String::new();
    for f in &fams {
        f.write(&mut out);
    }
    out
}

/// Writes `text` to `file` atomically (temp file in the same directory, then rename).
fn write_atomic(file: &Path, text: &str) -> std::io::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub fn run(ctx: &Ctx, output: Option<&Path>) -> i32 {
    let list = match fetch_or_offline(ctx) {
        Ok(l) => l,
        Err((code, msg)) => {
            eprintln!("cohost: {msg}");
            return code;
        }
    };
    let text = render(&list);
    match output {
        None => {
            out!("{text}");
            0
        }
        Some(f) => match write_atomic(f, &text) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cohost: writing {}: {e}", f.display());
                1
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_families() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let s: InstanceStatus = serde_json::from_value(serde_json::json!({
            "id": "x", "service": "s", "kind": "simple", "state": "failed",
            "healthy": null, "processes": [], "members": [], "address": null, "port": null,
            "hostname": null, "since": 0, "uptime_s": null, "restarts": 2, "last_failure": null,
            "tracking": "", "checks": [], "definition_changed": false, "removed": false,
            "warnings": [], "log_dir": ""
        }))
        .unwrap();
        let t = render(&[s]);
        assert!(
            t.contains("cohost_instance_up{instance=\"x\",service=\"s\"} 0\n"),
            "{t}"
        );
        assert!(t.contains("state=\"failed\"} 1\n"), "{t}");
        assert!(t.contains("cohost_instance_restarts{instance=\"x\",service=\"s\"} 2\n"));
        assert!(
            !t.contains("cohost_instance_pids"),
            "no usage, no family: {t}"
        );
    }
}
