//! The package under a real systemd as PID 1 (systemd 252 in systemd-nspawn,
//! tests/systemd/nspawn.sh), once in hybrid and once in pure cgroup2 mode,
//! the two side by side. In each: `dpkg -i` of the .deb (built here from the
//! test build with `cargo deb --no-build`), then systemctl start, status,
//! reload and stop of two instances; an upgrade (dpkg -i again) and a
//! supervisor SIGKILL that both leave the instances running with the same
//! pids and their units active; `systemctl stop cohost` that leaves every
//! instance unit inactive and no process behind; and 20 rounds of "the
//! supervisor crashes, then `systemctl stop cohost@demo02` runs before
//! systemd has restarted it", each leaving nothing in the unit's cgroup
//! (issue 16: the CLI used to fork a daemon there).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The payload both containers bind at /payload: the .deb, the demo
/// service, its instances file. Built once per test binary.
fn payload() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        require_tools(&[
            ("systemd-nspawn", "systemd-container"),
            ("debootstrap", "debootstrap"),
            ("nsenter", "util-linux"),
        ]);
        let has_cargo_deb = Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            has_cargo_deb,
            "cargo-deb is not installed: cargo install cargo-deb --version 3.8.0 --locked (tests/setup-host.sh does)"
        );
        let target = cohost_bin().parent().unwrap().parent().unwrap().to_path_buf();
        let dir = target.join("systemd-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The generated assets at the paths Cargo.toml's assets name.
        run_cmd({
            let mut c = Command::new(example("pkg-assets"));
            c.arg(target.join("pkg"));
            c
        })
        .ok();
        // The package of this build (the debug binary; CI also packages the
        // release one and installs it on the host).
        run_cmd({
            let mut c = Command::new("cargo");
            c.current_dir(root())
                .args(["deb", "--no-build", "--profile", "dev", "--fast", "-q", "-o"])
                .arg(dir.join("cohost.deb"));
            c
        })
        .ok();
        std::fs::copy(example("counter"), dir.join("counter")).unwrap();
        write(
            &dir.join("demo.toml"),
            r#"[service.counter]
command = ["counter"]
ready   = { tcp = "${address}:${port}", timeout = "10s" }
stop    = { timeout = "5s" }

[instance.demo01]
service  = "counter"
address  = "127.0.0.2"
port     = 9003
paths    = { data = "/srv/demo01" }

[instance.demo02]
service  = "counter"
address  = "127.0.0.3"
port     = 9003
paths    = { data = "/srv/demo02" }
"#,
        );
        dir
    })
}

fn nspawn() -> PathBuf {
    root().join("tests/systemd/nspawn.sh")
}

/// A booted container; powered off and its cgroups removed on drop.
struct Container {
    name: String,
    /// The cgroup2 mount inside the container.
    cgroot: &'static str,
}

impl Container {
    fn up(mode: &str) -> Container {
        let name = format!("cohost-t{}-{mode}", std::process::id());
        let c = Container {
            name,
            cgroot: if mode == "hybrid" {
                "/sys/fs/cgroup/unified"
            } else {
                "/sys/fs/cgroup"
            },
        };
        run_cmd({
            let mut cmd = Command::new(nspawn());
            cmd.args(["up", &c.name, mode]).arg(payload());
            cmd
        })
        .ok();
        c
    }

    fn sh(&self, script: &str) -> Out {
        run_cmd({
            let mut cmd = Command::new(nspawn());
            cmd.args(["in", &self.name, "sh", "-c", script]);
            cmd
        })
    }

    /// The units' journal (the last lines), for a failure's message.
    fn journal(&self, units: &[&str]) -> String {
        let us: Vec<String> = units.iter().map(|u| format!("-u {u}")).collect();
        self.sh(&format!(
            "journalctl --no-pager -n 60 {} 2>&1",
            us.join(" ")
        ))
        .stdout
    }

    /// Runs `script` inside; it must succeed; its trimmed stdout.
    fn ok(&self, script: &str) -> String {
        self.sh(script).ok().stdout.trim().to_string()
    }

    fn active(&self, unit: &str) -> String {
        self.sh(&format!("systemctl is-active {unit}"))
            .stdout
            .trim()
            .to_string()
    }

    fn main_pid(&self) -> i32 {
        self.ok("systemctl show -P MainPID cohost.service")
            .parse()
            .unwrap()
    }

    /// The pids of an instance's processes, from the supervisor.
    fn pids(&self, id: &str) -> Vec<i64> {
        let out = self.ok(&format!("cohost status {id} --json"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut p: Vec<i64> = v[0]["members"]
            .as_array()
            .unwrap_or_else(|| panic!("no members: {out}"))
            .iter()
            .map(|m| m.as_i64().unwrap())
            .collect();
        p.sort();
        p
    }

    /// Processes in a unit's own cgroup (none once it is gone).
    fn procs_in_unit(&self, unit: &str) -> String {
        self.ok(&format!(
            "p=$(systemctl show -P ControlGroup {unit}); d={}$p; \
             if [ -n \"$p\" ] && [ -d \"$d\" ]; then find \"$d\" -name cgroup.procs -exec cat {{}} +; fi",
            self.cgroot
        ))
    }

    /// Waits until cohost.service runs a daemon other than `old` that answers.
    fn wait_restarted(&self, old: i32) -> i32 {
        let mut new = 0;
        wait_for("cohost.service restarted with a new main pid", || {
            new = self.main_pid();
            new != 0
                && new != old
                && self.active("cohost.service") == "active"
                && self.sh("cohost list").code == 0
        });
        new
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let j = self.sh(
                "systemctl list-jobs --no-pager; systemctl status --no-pager 'cohost*'; \
                 journalctl --no-pager -n 80",
            );
            eprintln!("== {}:\n{}{}", self.name, j.stdout, j.stderr);
        }
        let out = run_cmd({
            let mut c = Command::new(nspawn());
            c.args(["down", &self.name]);
            c
        });
        if out.code != 0 {
            eprintln!("nspawn.sh down {}: {out}", self.name);
        }
    }
}

fn install(c: &Container) {
    let out = c.ok("dpkg -i /payload/cohost.deb 2>&1");
    assert!(out.contains("Setting up cohost"), "{out}");
    c.ok("install -m 755 /payload/counter /usr/local/bin/counter && \
         install -m 644 /payload/demo.toml /etc/cohost/instances.d/demo.toml && \
         mkdir -p /srv/demo01 /srv/demo02");
    // The installed units verify without a word; the reference file loads
    // nothing, so the directory holds exactly the two demo instances.
    let v = c.sh(
        "systemd-analyze verify --man=no /lib/systemd/system/cohost.service \
         /lib/systemd/system/cohost@demo01.service 2>&1",
    );
    assert!(v.code == 0 && v.stdout.trim().is_empty(), "{v}");
    let val = c.ok("cohost validate");
    assert!(val.contains("valid (2 instances"), "{val}");
    assert_eq!(c.ok("stat -c %a:%U /run/cohost"), "700:root");
}

fn scenario(mode: &str) {
    let c = Container::up(mode);
    // The mode is what we asked for.
    let fs = c.ok("stat -fc %T /sys/fs/cgroup");
    assert_eq!(
        fs,
        if mode == "hybrid" {
            "tmpfs"
        } else {
            "cgroup2fs"
        }
    );
    install(&c);

    // Start: Wants= pulls in cohost.service (Type=notify) first.
    c.ok("systemctl start cohost@demo01 cohost@demo02");
    assert_eq!(c.active("cohost.service"), "active");
    for id in ["demo01", "demo02"] {
        assert_eq!(c.active(&format!("cohost@{id}")), "active");
        assert_eq!(c.sh(&format!("cohost monitor {id}")).code, 0);
        let st = c.sh(&format!("systemctl status cohost@{id} --no-pager"));
        assert!(st.stdout.contains("active (exited)"), "{st}");
        // The instance's processes are the supervisor's (Delegate=yes), and
        // nothing stays in the oneshot unit.
        assert_eq!(c.procs_in_unit(&format!("cohost@{id}.service")), "");
    }
    let answers = |addr: &str| {
        c.sh(&format!("counter --ask {addr}"))
            .stdout
            .contains(" counter ")
    };
    assert!(answers("127.0.0.2:9003") && answers("127.0.0.3:9003"));
    let cg = c.ok("systemctl show -P ControlGroup cohost.service");
    let tracked = c.ok("cohost status demo01");
    assert!(tracked.contains(&format!("{}{cg}/", c.cgroot)), "{tracked}");

    // Upgrade (the same version again: prerm upgrade, postinst configure)
    // stops nothing.
    let (p1, p2, main) = (c.pids("demo01"), c.pids("demo02"), c.main_pid());
    let up = c.ok("dpkg -i /payload/cohost.deb 2>&1");
    assert!(up.contains("Setting up cohost"), "{up}");
    assert_eq!(
        (c.pids("demo01"), c.pids("demo02"), c.main_pid()),
        (p1.clone(), p2.clone(), main)
    );
    assert_eq!(c.active("cohost@demo01"), "active");

    // Reload rereads the instances file: a new instance becomes known.
    c.ok("sed 's/demo02/demo03/; s/127.0.0.3/127.0.0.4/' /etc/cohost/instances.d/demo.toml \
          | sed -n '/instance.demo03/,$p' > /etc/cohost/instances.d/more.toml && mkdir -p /srv/demo03");
    c.ok("systemctl reload cohost");
    wait_for("reload seen", || {
        c.sh("cohost list").stdout.contains("demo03")
    });
    assert_eq!(c.main_pid(), main, "reload is not a restart");

    // A CLI in a unit of its own (here a transient one) for another runtime
    // dir, with no supervisor for it: the daemon it needs becomes a transient
    // unit of its own, not a process of the caller's unit (which would die
    // with it, taking demo03 along).
    c.ok("systemd-run --wait --quiet cohost --runtime-dir /run/cohost-alt start demo03");
    let alt = r"cohost-daemon-run-cohost\x2dalt.service";
    assert_eq!(c.active(&format!("'{alt}'")), "active");
    assert_eq!(
        c.sh("cohost --runtime-dir /run/cohost-alt monitor demo03")
            .code,
        0
    );
    c.ok("cohost --runtime-dir /run/cohost-alt shutdown");
    wait_for("the transient daemon unit gone", || {
        c.active(&format!("'{alt}'")) != "active"
    });

    // (a) A supervisor crash: systemd restarts cohost.service, the new
    // daemon adopts both instances, the instance units are not touched.
    c.ok(&format!("kill -KILL {main}"));
    let main = c.wait_restarted(main);
    assert_eq!(
        (c.pids("demo01"), c.pids("demo02")),
        (p1.clone(), p2.clone()),
        "adopted, same pids"
    );
    for id in ["demo01", "demo02"] {
        assert_eq!(c.active(&format!("cohost@{id}")), "active");
        assert_eq!(c.sh(&format!("cohost monitor {id}")).code, 0);
    }

    // (b) The crash, then a stop of an instance unit while no supervisor
    // runs: the CLI has systemd start cohost.service (never forks one into
    // the unit), which adopts and stops; nothing stays in the unit's cgroup.
    let mut main = main;
    for round in 1..=20 {
        // 20 crashes in a minute would trip systemd's start limit (5 starts
        // in 10 s: then it stops restarting a crash-looping cohost.service,
        // as it should); each round here is one crash.
        c.ok("systemctl reset-failed cohost.service");
        c.ok(&format!("kill -KILL {main}"));
        let t = std::time::Instant::now();
        let stop = c.sh("systemctl stop cohost@demo02");
        assert_eq!(stop.code, 0, "round {round}: {stop}");
        assert_eq!(c.active("cohost@demo02"), "inactive", "round {round}");
        assert_eq!(
            c.procs_in_unit("cohost@demo02.service"),
            "",
            "round {round}"
        );
        assert_eq!(c.sh("cohost monitor demo02").code, 7, "round {round}");
        main = c.wait_restarted(main);
        assert_eq!(c.pids("demo01"), p1, "round {round}: demo01 adopted");
        eprintln!(
            "{mode}: round {round}: crash + stop in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let start = c.sh("systemctl start cohost@demo02");
        assert_eq!(
            start.code,
            0,
            "round {round}: {start}\n{}",
            c.journal(&["cohost@demo02.service", "cohost.service"])
        );
        assert_eq!(
            c.procs_in_unit("cohost@demo02.service"),
            "",
            "round {round}"
        );
    }

    // A stop of the supervisor stops every instance unit, then itself.
    c.ok("systemctl stop cohost");
    for u in ["cohost.service", "cohost@demo01", "cohost@demo02"] {
        assert_eq!(c.active(u), "inactive", "{u}");
    }
    assert_eq!(
        c.ok("grep -lx counter /proc/[0-9]*/comm || true"),
        "",
        "no counter left"
    );
    assert_eq!(c.ok("pgrep -x cohost || true"), "", "no cohost left");
    assert_eq!(
        c.ok("systemctl list-units --failed --plain --no-legend"),
        ""
    );
}

#[test]
fn systemd_pid1_hybrid() {
    scenario("hybrid");
}

#[test]
fn systemd_pid1_unified() {
    scenario("unified");
}
