//! `cohost plan --absorb DIR [--json]`: the answer of [`crate::plan`] as a
//! table of blockers (exit 1) or "this node can run both" (exit 0); an
//! instances file that does not load is exit 2 with its FILE:LINE errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::Ctx;
use crate::config::{self, Trust};
use crate::model::Config;
use crate::plan::{self, Plan, host::Real};

fn load(dir: &Path, whose: &str) -> Result<Config, (i32, String)> {
    config::load(dir, Trust::for_current_user()).map_err(|diags| {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        (
            2,
            format!(
                "{whose} instances file {} is invalid:\n{}",
                dir.display(),
                text.join("\n")
            ),
        )
    })
}

/// Memory and pids of this node's running instances, from its daemon
/// (none when no daemon runs: nothing of ours runs then).
fn running(ctx: &Ctx) -> Result<BTreeMap<String, (u64, u64)>, (i32, String)> {
    let list = super::observe::fetch(ctx).map_err(|e| (e.code(), e.to_string()))?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let u = s.usage?;
            Some((s.id, (u.memory_bytes.unwrap_or(0), u.pids.unwrap_or(0))))
        })
        .collect())
}

/// The blockers as an aligned table.
pub fn table(p: &Plan) -> String {
    let header = ["KIND", "INSTANCE", "PROBLEM", "FIX"].map(String::from);
    let rows: Vec<[String; 4]> = p
        .blockers
        .iter()
        .map(|b| {
            [
                b.kind.as_str().into(),
                b.instance.clone(),
                b.problem.clone(),
                b.fix.clone(),
            ]
        })
        .collect();
    let mut w = [0usize; 3];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for i in 0..3 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let _ = writeln!(
            out,
            "{:<a$}  {:<b$}  {:<c$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            a = w[0],
            b = w[1],
            c = w[2]
        );
    }
    out
}

fn summary(p: &Plan) -> String {
    let l = &p.load;
    format!(
        "{} instances here + {} of the peer: memory_max {:.1} of {:.1} GiB, cpu_max {:.2} of {} CPUs, pids_max {} of {}",
        p.local,
        p.peer,
        l.memory_bytes as f64 / (1u64 << 30) as f64,
        l.capacity.memory_bytes as f64 / (1u64 << 30) as f64,
        l.cpus,
        l.capacity.cpus,
        l.pids,
        l.capacity.pid_max
    )
}

pub fn run(ctx: &Ctx, peer_dir: &Path, json: bool) -> i32 {
    let res = (|| {
        let local = load(&ctx.config, "this node's")?;
        let peer_dir = std::path::absolute(peer_dir).unwrap_or_else(|_| peer_dir.to_path_buf());
        let peer = load(&peer_dir, "the peer's")?;
        let host = Real {
            running: running(ctx)?,
        };
        Ok::<_, (i32, String)>(plan::plan(&local, &peer, &host))
    })();
    let p = match res {
        Ok(p) => p,
        Err((code, msg)) => {
            eprintln!("cohost: {msg}");
            return code;
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
    } else if p.ok {
        outln!("this node can run both: {}", summary(&p));
    } else {
        out!("{}", table(&p));
        outln!(
            "this node cannot run both: {} blocker(s); {}",
            p.blockers.len(),
            summary(&p)
        );
    }
    if p.ok { 0 } else { 1 }
}
