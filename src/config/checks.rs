//! Rules across instances: one address:port each, storage of their own,
//! `after` naming real instances without a cycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::parse::RawInstance;
use crate::config::reader::{At, Diags, did_you_mean};
use crate::config::resolve::paths_overlap;
use crate::model::InstanceSpec;

/// Two instances on one address:port would collide; a missing address
/// means "every address" and collides with any instance on that port.
pub fn check_addresses(instances: &BTreeMap<String, Arc<InstanceSpec>>, diags: &Diags) {
    let with_port: Vec<&Arc<InstanceSpec>> =
        instances.values().filter(|i| i.port.is_some()).collect();
    for (n, a) in with_port.iter().enumerate() {
        for b in &with_port[..n] {
            if a.port != b.port {
                continue;
            }
            let clash = match (a.address, b.address) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            };
            if clash {
                let addr = |i: &InstanceSpec| match i.address {
                    Some(ip) => format!("{ip}:{}", i.port.unwrap()),
                    None => format!("every address, port {}", i.port.unwrap()),
                };
                diags.push(
                    &a.origin,
                    format!(
                        "instances `{}` ({}) and `{}` ({}, {}) would listen on the same address and port; give each its own address",
                        a.id,
                        addr(a),
                        b.id,
                        addr(b),
                        b.origin
                    ),
                );
            }
        }
    }
}

/// Shared-storage paths of two instances must not overlap: one instance's
/// disk moves between nodes on its own.
pub fn check_paths(instances: &BTreeMap<String, Arc<InstanceSpec>>, diags: &Diags) {
    let all: Vec<(&Arc<InstanceSpec>, &String, &PathBuf)> = instances
        .values()
        .flat_map(|i| i.paths.iter().map(move |(k, p)| (i, k, p)))
        .collect();
    for (n, (ia, ka, pa)) in all.iter().enumerate() {
        for (ib, kb, pb) in &all[..n] {
            if ia.id != ib.id && paths_overlap(pa, pb) {
                diags.push(
                    &ia.origin,
                    format!(
                        "paths.{ka} of `{}` ({}) overlaps paths.{kb} of `{}` ({}, {}): each instance needs its own storage",
                        ia.id,
                        pa.display(),
                        ib.id,
                        pb.display(),
                        ib.origin
                    ),
                );
            }
        }
    }
}

pub fn check_after(
    raw: &[RawInstance],
    instances: &BTreeMap<String, Arc<InstanceSpec>>,
    declared: &BTreeMap<String, At<String>>,
    diags: &Diags,
) {
    for ri in raw {
        let Some(after) = &ri.after else { continue };
        let id = &ri.id.v;
        for dep in &after.v {
            if dep == id {
                diags.push(&after.at, format!("`{id}` lists itself in `after`"));
            } else if !declared.contains_key(dep) {
                let names: Vec<&str> = declared.keys().map(String::as_str).collect();
                let hint = did_you_mean(dep, &names)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                diags.push(
                    &after.at,
                    format!("`{id}` has after = [\"{dep}\"] but no instance `{dep}` exists{hint}"),
                );
            }
        }
    }
    if let Some(cycle) = find_cycle(instances) {
        let first = &instances[&cycle[0]];
        diags.push(
            &first.origin,
            format!("`after` forms a cycle: {}", cycle.join(" -> ")),
        );
    }
}

/// A cycle in the `after` graph, as a path that returns to its start.
pub fn find_cycle(instances: &BTreeMap<String, Arc<InstanceSpec>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> =
        instances.keys().map(|k| (k.as_str(), Mark::New)).collect();
    fn visit<'a>(
        id: &'a str,
        instances: &'a BTreeMap<String, Arc<InstanceSpec>>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        mark.insert(id, Mark::Active);
        stack.push(id);
        for dep in &instances[id].after {
            match mark.get(dep.as_str()) {
                Some(Mark::Active) => {
                    let start = stack.iter().position(|s| s == dep).unwrap();
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(dep.clone());
                    return Some(cycle);
                }
                Some(Mark::New) => {
                    if let Some(c) = visit(dep, instances, mark, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        mark.insert(id, Mark::Done);
        None
    }
    let ids: Vec<&str> = instances.keys().map(String::as_str).collect();
    for id in ids {
        if mark[id] == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(id, instances, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
