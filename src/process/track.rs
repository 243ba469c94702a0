//! Tracking without cgroups: sessions and descendants.
//!
//! Every process cohost starts calls setsid(2), so its session id is its
//! pid. The instance is then every process in those sessions plus every
//! descendant (by ppid) of a member. A process that both leaves the session
//! (setsid) and is orphaned before it is seen escapes this view: that is why
//! cgroups are the tracking of choice, and `status` says which one is used.

use std::collections::{BTreeMap, BTreeSet};

use crate::process::procfs::{self, Stat};

/// Members now: (pid, start time). `seeds` are the processes cohost started
/// or has seen as members, with their start times (stale ones are dropped:
/// a reused pid is not a member).
pub fn session_members(seeds: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let stats: BTreeMap<i32, Stat> = procfs::all_pids()
        .into_iter()
        .filter_map(|p| procfs::stat(p).map(|s| (p, s)))
        .collect();
    members_in(&stats, seeds)
}

/// The pure part of [`session_members`], over a snapshot of /proc.
pub fn members_in(stats: &BTreeMap<i32, Stat>, seeds: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let live: Vec<i32> = seeds
        .iter()
        .filter(|(p, t)| {
            stats
                .get(p)
                .is_some_and(|s| s.start_time == *t && s.state != 'Z')
        })
        .map(|(p, _)| *p)
        .collect();
    // Only a session a seed leads is the instance's: cohost starts every
    // process with setsid, so its own processes lead theirs. A seed that
    // is a member of someone else's session (a stale or forged record, a
    // process that joined a shell's session) is taken alone, never with
    // the session around it.
    let sessions: BTreeSet<i32> = live
        .iter()
        .filter(|p| stats[p].session == **p)
        .map(|p| stats[p].session)
        .collect();
    let mut members: BTreeSet<i32> = live.iter().copied().collect();
    for s in stats.values() {
        if sessions.contains(&s.session) && s.session != 0 && s.state != 'Z' {
            members.insert(s.pid);
        }
    }
    // Descendants of members, to a fixed point.
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for s in stats.values() {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    let mut todo: Vec<i32> = members.iter().copied().collect();
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if stats[c].state != 'Z' && members.insert(*c) {
                todo.push(*c);
            }
        }
    }
    members
        .into_iter()
        .map(|p| (p, stats[&p].start_time))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(pid: i32, ppid: i32, session: i32, start: u64) -> (i32, Stat) {
        (
            pid,
            Stat {
                pid,
                comm: "x".into(),
                state: 'S',
                ppid,
                pgrp: session,
                session,
                start_time: start,
            },
        )
    }

    #[test]
    fn a_seed_that_does_not_lead_its_session_is_taken_alone() {
        let stats: BTreeMap<i32, Stat> = [
            st(1, 0, 1, 1),
            st(300, 1, 300, 70), // a login shell, session leader
            st(301, 300, 300, 71),
            st(302, 300, 300, 72),
        ]
        .into_iter()
        .collect();
        let m = members_in(&stats, &[(301, 71)]);
        assert_eq!(m, vec![(301, 71)], "not its siblings, not the shell");
        let m: Vec<i32> = members_in(&stats, &[(300, 70)])
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(m, vec![300, 301, 302], "a leader brings its session");
    }

    #[test]
    fn sessions_and_descendants_not_strangers() {
        let stats: BTreeMap<i32, Stat> = [
            st(1, 0, 1, 1),
            st(100, 1, 100, 50),   // our started process, session leader
            st(101, 100, 100, 51), // its child
            st(102, 101, 102, 52), // grandchild that called setsid but still linked
            st(103, 102, 102, 53), // its child
            st(200, 1, 200, 60),   // a bystander
        ]
        .into_iter()
        .collect();
        let m = members_in(&stats, &[(100, 50)]);
        let pids: Vec<i32> = m.iter().map(|(p, _)| *p).collect();
        assert_eq!(pids, vec![100, 101, 102, 103]);
    }

    #[test]
    fn reused_pid_is_not_a_member() {
        let stats: BTreeMap<i32, Stat> = [st(100, 1, 100, 999)].into_iter().collect();
        assert!(members_in(&stats, &[(100, 50)]).is_empty());
    }
}
