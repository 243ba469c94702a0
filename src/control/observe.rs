//! What `status --json` says about cost: the last start's timing and the
//! instance's resource usage (contract: CONTRACT.md "Added in 0.2"). Pure
//! serde types, shared by the daemon and the client.

use serde::{Deserialize, Serialize};

/// Where the last start spent its time, in milliseconds.
///
/// The parts are measured each on its own clock interval, so their sum
/// falls short of `total` by what lies between them (the loop's own
/// dispatch); tests hold that gap under 5 ms.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    /// Waiting for the logical address to be configured on this node.
    pub address: f64,
    /// Taking the one-holder lock on the shared storage.
    pub lock: f64,
    /// cgroup, path checks, logs, user and group look-ups, exec plans:
    /// everything between the address and the fork except the lock.
    pub setup: f64,
    /// From the first fork until every exec was confirmed.
    pub exec: f64,
    /// From the execs until the readiness check passed.
    pub ready: f64,
    /// From the start request (or the automatic restart) to running.
    pub total: f64,
    /// After a takeover: how old the previous holder's lock record was
    /// (when it was written, by the node that died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_record_age: Option<f64>,
    /// After a takeover: the node that held the lock before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_from: Option<String>,
    /// Seconds since the UNIX epoch when the start began.
    #[serde(default)]
    pub started_at: u64,
}

impl Timing {
    /// `(name, ms)` of each part, in order, then the total.
    pub fn parts(&self) -> [(&'static str, f64); 6] {
        [
            ("address", self.address),
            ("lock", self.lock),
            ("setup", self.setup),
            ("exec", self.exec),
            ("ready", self.ready),
            ("total", self.total),
        ]
    }

    /// "address 0.0 ms, lock 1.2 ms, … total 25.3 ms".
    pub fn describe(&self) -> String {
        let mut s: Vec<String> = self
            .parts()
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} ms"))
            .collect();
        if let Some(age) = self.lock_record_age {
            s.push(format!("lock record age {:.1} s", age / 1000.0));
        }
        if let Some(n) = &self.taken_over_from {
            s.push(format!("taken over from {n}"));
        }
        s.join(", ")
    }
}

/// Resources used by the instance's cgroup now. `None`: no controller on
/// this node gives that figure (or the instance has no cgroup).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// 1536 -> "1.5K", 64 MiB -> "64.0M" (binary units, like top and cgtop).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(64 << 20), "64.0M");
    }

    #[test]
    fn timing_uses_the_contract_names() {
        let t = Timing {
            address: 1.0,
            total: 2.0,
            ..Default::default()
        };
        let v = serde_json::to_value(&t).unwrap();
        for k in ["address", "lock", "setup", "exec", "ready", "total"] {
            assert!(v.get(k).is_some_and(|x| x.is_number()), "{k} in {v}");
        }
        assert!(v.get("lock_record_age").is_none());
    }
}
