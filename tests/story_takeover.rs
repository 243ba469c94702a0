//! Story 2, end to end: two "nodes" and a client in network namespaces
//! joined by a bridge, one cohost supervisor per node (own runtime dir and
//! node name), a shared directory tree as the shared disk. Node A dies
//! (SIGKILL of its supervisor and everything under it, address gone); the
//! address moves to node B, which already runs demo02; `cohost start
//! demo01` there brings demo01 back with its counter continuing, while
//! demo02 never blinks.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

struct Node {
    ns: Netns,
    config: PathBuf,
    runtime: PathBuf,
}

impl Node {
    fn cohost(&self, args: &[&str]) -> Out {
        let mut c = self.ns.cmd(&cohost_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(args);
        c.env_remove("COHOST_CONFIG")
            .env_remove("COHOST_RUNTIME_DIR");
        run_cmd(c)
    }
    fn status(&self, id: &str) -> serde_json::Value {
        first_status(self.cohost(&["status", id, "--json"]))
    }
}

/// One request from the client namespace; the counter's answer line.
fn client_ask(client: &Netns, addr: &str) -> Option<String> {
    let mut c = client.cmd(&example("counter"));
    c.args(["--ask", addr]);
    let out = run_cmd(c);
    (out.code == 0).then_some(out.stdout)
}

fn counter(line: &str) -> u64 {
    line.split_whitespace().last().unwrap().parse().unwrap()
}

fn host_of(line: &str) -> String {
    line.split_whitespace().nth(3).unwrap().to_string()
}

fn config_for(node: &str, shared: &Path, hook: &Path, v1: &str, v2: &str) -> String {
    let mut s = format!(
        "[supervisor]\nnode = \"{node}\"\non_event = [\"{}\"]\n\n[service.counter]\ncommand = [\"{}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"20s\" }}\nisolate = {{ uts = true }}\n",
        hook.display(),
        example("counter").display()
    );
    for (id, vip) in [("demo01", v1), ("demo02", v2)] {
        s.push_str(&format!(
            "\n[instance.{id}]\nservice = \"counter\"\naddress = \"{vip}\"\nport = 9003\nhostname = \"{id}.example\"\npaths = {{ data = \"{d}/{id}/data\", log = \"{d}/{id}/log\" }}\n",
            d = shared.display()
        ));
    }
    s
}

#[test]
fn story2_takeover_of_a_second_copy_on_a_node_that_runs_the_first() {
    require_root_cgroups();
    require_tools(&[("ip", "iproute2"), ("nsenter", "util-linux")]);
    let h = Harness::new();
    let tag = std::process::id() % 10_000;
    let net = format!("10.{}.{}", 180 + (tag % 50), tag % 250);
    let (vip1, vip2) = (format!("{net}.101"), format!("{net}.102"));

    // The network: a bridge in its own namespace, nodes A and B and a client.
    let sw = Netns::new(&format!("ch{tag}-sw"));
    sw.ip(&["link", "add", "br0", "type", "bridge"]);
    sw.ip(&["link", "set", "br0", "up"]);
    let mut nodes = Vec::new();
    for (n, host) in [("a", 1), ("b", 2), ("cl", 10)] {
        let ns = Netns::new(&format!("ch{tag}-{n}"));
        let (inside, port) = (format!("ch{tag}{n}0"), format!("ch{tag}{n}p"));
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &port,
        ]);
        ip(&["link", "set", &inside, "netns", &ns.0]);
        ip(&["link", "set", &port, "netns", &sw.0]);
        ns.ip(&["link", "set", &inside, "name", "eth0"]);
        sw.ip(&["link", "set", &port, "master", "br0", "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["addr", "add", &format!("{net}.{host}/24"), "dev", "eth0"]);
        nodes.push(ns);
    }
    let client = nodes.pop().unwrap();
    let ns_b = nodes.pop().unwrap();
    let ns_a = nodes.pop().unwrap();

    // The shared disk and an event hook that records what it is told.
    let shared = h.path("shared");
    for id in ["demo01", "demo02"] {
        std::fs::create_dir_all(shared.join(id).join("data")).unwrap();
        std::fs::create_dir_all(shared.join(id).join("log")).unwrap();
    }
    let events = h.path("events.log");
    let hook = h.path("hook.sh");
    write(
        &hook,
        &format!(
            "#!/bin/sh\necho \"$COHOST_NODE $COHOST_INSTANCE $COHOST_EVENT $COHOST_REASON\" >> {}\n",
            events.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mk = |name: &str, ns: Netns, runtime: PathBuf| {
        let config = h.path(&format!("{name}.d"));
        std::fs::create_dir_all(&config).unwrap();
        write(
            &config.join("cluster.toml"),
            &config_for(name, &shared, &hook, &vip1, &vip2),
        );
        Node {
            ns,
            config,
            runtime,
        }
    };
    let a = mk("nodeA", ns_a, h.runtime.clone());
    let b = mk("nodeB", ns_b, h.other_runtime("run-b"));

    // Normal operation: demo01 on A, demo02 on B, each with its address.
    a.ns.ip(&["addr", "add", &format!("{vip1}/24"), "dev", "eth0"]);
    b.ns.ip(&["addr", "add", &format!("{vip2}/24"), "dev", "eth0"]);
    a.cohost(&["start", "demo01"]).ok();
    b.cohost(&["start", "demo02"]).ok();
    let (s1, s2) = (format!("{vip1}:9003"), format!("{vip2}:9003"));
    let mut last1 = 0;
    for _ in 0..3 {
        let l = client_ask(&client, &s1).expect("demo01 answers from node A");
        assert_eq!(host_of(&l), "demo01.example", "{l}");
        last1 = counter(&l);
    }
    let first2 = counter(&client_ask(&client, &s2).expect("demo02 answers from node B"));
    let demo02 = b.status("demo02");
    let demo02_pids: Vec<i64> = demo02["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    let demo02_starts: Vec<Option<u64>> =
        demo02_pids.iter().map(|p| start_time(*p as i32)).collect();

    // The client keeps asking demo02 during the whole takeover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok2, failed2) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let poller = {
        let (stop, ok2, failed2) = (stop.clone(), ok2.clone(), failed2.clone());
        let (cl, s2) = (client.0.clone(), s2.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{cl}"))
                    .arg(example("counter"))
                    .args(["--ask", &s2]);
                if run_cmd(c).code == 0 {
                    ok2.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed2.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Node A dies: its supervisor and everything under it, and its address.
    let pid_a = std::fs::read_to_string(a.runtime.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse::<i32>()
        .unwrap();
    let demo01_on_a: Vec<i32> = a.status("demo01")["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    // SAFETY: kill(2) of node A's supervisor.
    unsafe { libc::kill(pid_a, libc::SIGKILL) };
    let cg_a = cohost::isolation::cgroup::CgroupRoot::base_for(
        &Default::default(),
        &cohost::isolation::cgroup::tag_for(&a.runtime),
    )
    .unwrap();
    kill_cgroup_tree(&cg_a);
    wait_for("node A's processes gone", || {
        !alive(pid_a) && demo01_on_a.iter().all(|p| !alive(*p))
    });
    a.ns.ip(&["addr", "del", &format!("{vip1}/24"), "dev", "eth0"]);
    assert!(
        client_ask(&client, &s1).is_none(),
        "demo01 is down with node A"
    );

    // The cluster moves the address to B; B starts the second copy.
    b.ns.ip(&["addr", "add", &format!("{vip1}/24"), "dev", "eth0"]);
    client.ip(&["neigh", "flush", "all"]);
    let out = b.cohost(&["start", "demo01"]).ok();
    assert!(out.stdout.contains("demo01 is running"), "{out}");
    let l = client_ask(&client, &s1).expect("demo01 answers again, from node B");
    assert_eq!(
        host_of(&l),
        "demo01.example",
        "the logical host name travels: {l}"
    );
    let after = counter(&l);
    // The counter continues from A's last value: no reset. Between the two
    // answers only B's readiness probe may have counted (one connection).
    assert!(
        after > last1 && after <= last1 + 3,
        "counter went from {last1} (node A) to {after} (node B)"
    );

    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    assert_eq!(
        failed2.load(Ordering::SeqCst),
        0,
        "demo02 never blinked ({} answers)",
        ok2.load(Ordering::SeqCst)
    );
    assert!(ok2.load(Ordering::SeqCst) > 0);
    let now2 = b.status("demo02");
    let pids_now: Vec<i64> = now2["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(pids_now, demo02_pids, "demo02's processes are the same");
    assert_eq!(
        pids_now
            .iter()
            .map(|p| start_time(*p as i32))
            .collect::<Vec<_>>(),
        demo02_starts
    );
    assert!(counter(&client_ask(&client, &s2).unwrap()) > first2);

    // B's supervisor announced the takeover (the lock named node A).
    let ev = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        ev.lines()
            .any(|l| l.starts_with("nodeB demo01 taken-over taken over from node nodeA")),
        "events:\n{ev}"
    );
    assert!(
        ev.lines().any(|l| l.starts_with("nodeB demo01 ready")),
        "events:\n{ev}"
    );

    // Stopping the taken-over copy leaves demo02 running.
    b.cohost(&["stop", "demo01"]).ok();
    assert_eq!(b.status("demo02")["state"], "running");
    assert!(client_ask(&client, &s2).is_some());
    b.cohost(&["shutdown"]).ok();
}
