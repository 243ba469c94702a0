//! The resource values of a service or instance: `umask` (octal),
//! `[rlimits]` by name, and `cpu_max` as a quota and a period.

use crate::config::reader::{At, Table};
use crate::model::Rlimit;

pub(super) fn parse_umask(t: &Table) -> Option<At<u32>> {
    let s = t.string("umask")?;
    match u32::from_str_radix(&s.v, 8) {
        Ok(m) if m <= 0o777 => Some(At { v: m, at: s.at }),
        _ => {
            t.error(
                &s.at,
                format!(
                    "`umask` in {} is an octal string like \"022\", not {:?}",
                    t.what, s.v
                ),
            );
            None
        }
    }
}

const RLIMITS: &[(&str, i32)] = &[
    ("as", libc::RLIMIT_AS as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("locks", libc::RLIMIT_LOCKS as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as i32),
    ("nice", libc::RLIMIT_NICE as i32),
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("rss", libc::RLIMIT_RSS as i32),
    ("rtprio", libc::RLIMIT_RTPRIO as i32),
    ("sigpending", libc::RLIMIT_SIGPENDING as i32),
    ("stack", libc::RLIMIT_STACK as i32),
];

pub(super) fn parse_rlimits(t: &Table) -> Option<At<Vec<Rlimit>>> {
    let entries = t.scalar_map("rlimits")?;
    let names: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
    let mut out = Vec::new();
    for (k, v) in entries {
        let Some((_, res)) = RLIMITS.iter().find(|(n, _)| *n == k.v) else {
            let hint = crate::config::reader::did_you_mean(&k.v, &names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_else(|| format!("; known: {}", names.join(", ")));
            t.error(
                &k.at,
                format!("unknown rlimit `{}` in {}{hint}", k.v, t.what),
            );
            continue;
        };
        // "SOFT:HARD", or one value for both.
        let (soft, hard) = match v.v.split_once(':') {
            Some((s, h)) => (s, h),
            None => (v.v.as_str(), v.v.as_str()),
        };
        match (
            crate::config::reader::parse_size(soft),
            crate::config::reader::parse_size(hard),
        ) {
            (Some(s), Some(h)) => out.push(Rlimit {
                resource: *res,
                name: k.v.clone(),
                soft: s,
                hard: h,
            }),
            _ => t.error(
                &v.at,
                format!(
                    "rlimit `{}` in {}: write a number, \"unlimited\" or \"SOFT:HARD\", not {:?}",
                    k.v, t.what, v.v
                ),
            ),
        }
    }
    Some(At {
        v: out,
        at: t.origin_of("rlimits"),
    })
}

/// "50%" of one CPU, "QUOTA PERIOD" in microseconds, or "max".
pub(super) fn parse_cpu_max(t: &Table) -> Option<At<Option<(u64, u64)>>> {
    let s = t.string("cpu_max")?;
    let v = s.v.trim();
    let parsed = if v == "max" {
        Some(None)
    } else if let Some(p) = v.strip_suffix('%') {
        p.trim()
            .parse::<u64>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| Some((p * 1000, 100_000)))
    } else {
        let mut it = v.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(q), Some(p), None) => match (q.parse(), p.parse()) {
                (Ok(q), Ok(p)) if q > 0 && p > 0 => Some(Some((q, p))),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        Some(x) => Some(At { v: x, at: s.at }),
        None => {
            t.error(
                &s.at,
                format!(
                    "`cpu_max` in {}: write \"50%\" (of one CPU), \"QUOTA PERIOD\" in µs, or \"max\", not {v:?}",
                    t.what
                ),
            );
            None
        }
    }
}
