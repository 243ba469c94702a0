//! Rules across instances: one address:port each, storage of their own,
//! `after` naming real instances without a cycle.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::parse::RawInstance;
use crate::config::reader::{At, Diags, did_you_mean};
use crate::model::InstanceSpec;

/// Two instances on one address:port would collide; a missing address
/// means "every address" and collides with any instance on that port.
/// Each instance is compared with the earlier ones it can clash with,
/// found by port and address (10,000 instances on one port: no pairs).
pub fn check_addresses(instances: &BTreeMap<String, Arc<InstanceSpec>>, diags: &Diags) {
    let with_port: Vec<&Arc<InstanceSpec>> =
        instances.values().filter(|i| i.port.is_some()).collect();
    // Earlier instances by port, by port and address, and without address.
    let mut on_port: HashMap<u16, Vec<usize>> = HashMap::new();
    let mut on_addr: HashMap<(u16, IpAddr), Vec<usize>> = HashMap::new();
    let mut wildcard: HashMap<u16, Vec<usize>> = HashMap::new();
    for (n, a) in with_port.iter().enumerate() {
        let port = a.port.unwrap_or_default();
        let mut earlier: Vec<usize> = match a.address {
            None => on_port.get(&port).cloned().unwrap_or_default(),
            Some(ip) => {
                let mut v = wildcard.get(&port).cloned().unwrap_or_default();
                v.extend(on_addr.get(&(port, ip)).into_iter().flatten());
                v.sort_unstable();
                v
            }
        };
        earlier.dedup();
        for b in earlier.into_iter().map(|m| with_port[m]) {
            address_clash(a, b, diags);
        }
        on_port.entry(port).or_default().push(n);
        match a.address {
            None => wildcard.entry(port).or_default().push(n),
            Some(ip) => on_addr.entry((port, ip)).or_default().push(n),
        }
    }
}

fn address_clash(a: &InstanceSpec, b: &InstanceSpec, diags: &Diags) {
    let addr = |i: &InstanceSpec| match i.address {
        Some(ip) => format!("{ip}:{}", i.port.unwrap_or_default()),
        None => format!("every address, port {}", i.port.unwrap_or_default()),
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

/// Shared-storage paths of two instances must not overlap: one instance's
/// disk moves between nodes on its own. Two paths overlap when one is an
/// ancestor of (or equal to) the other: each path's ancestors are looked
/// up, so 10,000 instances with three paths each are 30,000 look-ups of a
/// few components, not 450 million comparisons.
pub fn check_paths(instances: &BTreeMap<String, Arc<InstanceSpec>>, diags: &Diags) {
    let all: Vec<(&Arc<InstanceSpec>, &String, &PathBuf)> = instances
        .values()
        .flat_map(|i| i.paths.iter().map(move |(k, p)| (i, k, p)))
        .collect();
    let mut by_path: HashMap<&Path, Vec<usize>> = HashMap::new();
    for (n, (_, _, p)) in all.iter().enumerate() {
        by_path.entry(p.as_path()).or_default().push(n);
    }
    // (later, earlier) pairs, reported in the order of the later one, as
    // comparing every path with each earlier one did.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (n, (ia, _, p)) in all.iter().enumerate() {
        for anc in p.ancestors() {
            for &m in by_path.get(anc).into_iter().flatten() {
                if m != n && all[m].0.id != ia.id {
                    pairs.push((n.max(m), n.min(m)));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    for (n, m) in pairs {
        let ((ia, ka, pa), (ib, kb, pb)) = (all[n], all[m]);
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
        Active,
        Done,
    }
    // Only instances with an `after` can be on a cycle: the others (most
    // of 10,000) are never marked nor looked up by name.
    let mut mark: HashMap<&str, Mark> = HashMap::new();
    fn visit<'a>(
        id: &'a str,
        instances: &'a BTreeMap<String, Arc<InstanceSpec>>,
        mark: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        mark.insert(id, Mark::Active);
        stack.push(id);
        for dep in instances.get(id).map_or(&[][..], |s| &s.after[..]) {
            match mark.get(dep.as_str()) {
                Some(Mark::Active) => {
                    let start = stack.iter().position(|s| s == dep).unwrap();
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(dep.clone());
                    return Some(cycle);
                }
                None if instances
                    .get(dep.as_str())
                    .is_some_and(|s| !s.after.is_empty()) =>
                {
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
    for (id, spec) in instances {
        if !spec.after.is_empty() && !mark.contains_key(id.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(id, instances, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
