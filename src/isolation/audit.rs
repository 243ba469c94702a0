//! Bind audit: which of an instance's processes listen on the wildcard
//! address for its port. Such a listener makes a second copy on the same
//! node fail with "address in use" (the "port 94: In use. Waiting…" story).
//!
//! LISTEN sockets come from /proc/net/tcp and tcp6 (proc(5)); a socket's
//! inode is matched to a process through /proc/PID/fd links "socket:[N]".

use std::collections::BTreeMap;

/// One listening socket: (local address text, inode).
fn wildcard_listen_inodes(table: &str, port: u16, v6: bool) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((addr, p)) = f[1].split_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        if addr.bytes().all(|b| b == b'0') {
            let shown = if v6 {
                format!("[::]:{port}")
            } else {
                format!("0.0.0.0:{port}")
            };
            if let Ok(inode) = f[9].parse() {
                out.push((shown, inode));
            }
        }
    }
    out
}

/// (pid, comm, address) of every wildcard listener on `port` owned by one
/// of `pids`.
pub fn wildcard_listeners(pids: &[i32], port: u16) -> Vec<(i32, String, String)> {
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(t) = std::fs::read_to_string(file) {
            for (a, i) in wildcard_listen_inodes(&t, port, v6) {
                inodes.insert(i, a);
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let l = link.to_string_lossy();
            let Some(n) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) else {
                continue;
            };
            if let Some(addr) = n.parse::<u64>().ok().and_then(|i| inodes.get(&i)) {
                let comm = crate::process::procfs::stat(*pid)
                    .map(|s| s.comm)
                    .unwrap_or_default();
                out.push((*pid, comm, addr.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_wildcard_listeners_on_the_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:232B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0200007F:232B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n\
   3: 00000000:232B 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0\n";
        let got = wildcard_listen_inodes(t, 9003, false);
        assert_eq!(got, vec![("0.0.0.0:9003".to_string(), 111)]);
    }
}
