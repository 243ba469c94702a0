//! Guarantee 8, nothing untrusted steers root: a runtime dir another user
//! could write (or a symbolic link) is refused, a forged state file there
//! never gets a root process signalled, a planted `daemon.log` link is not
//! followed; and one runtime dir never has two daemons, even after it was
//! deleted under a running one.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn sleep_config(h: &Harness, id: &str) {
    h.write_config(
        "s.toml",
        &format!(
            r#"
[service.s]
command = ["{}", "sleep"]

[instance.{id}]
service = "s"
"#,
            example("testsvc").display()
        ),
    );
}

fn chown_r(path: &Path, uid: u32) {
    let mut c = Command::new("chown");
    c.arg("-R").arg(uid.to_string()).arg(path);
    run_cmd(c).ok();
}

/// A state record in the daemon's own format naming `pid` as the
/// instance's running process, with its true start time.
fn forged_state(id: &str, pid: i32) -> String {
    serde_json::json!({
        "id": id, "state": "running", "since": 0,
        "procs": [{"name": "s", "pid": pid, "start_time": start_time(pid).unwrap(),
                   "script": false, "exit": null}],
        "members": [[pid, start_time(pid).unwrap()]],
        "cgroup": null, "restarts": 0, "last_failure": null,
        "owned_address": false, "supervisor_pid": 1, "fingerprint": 0
    })
    .to_string()
}

#[test]
fn a_forged_state_in_a_user_writable_runtime_dir_never_gets_a_root_process_signalled() {
    require_root_cgroups();
    let user = TestUser::new("cohtf");
    let h = Harness::new();
    sleep_config(&h, "f1");
    let victim = Bystander::sleep();
    let vstart = start_time(victim.pid());
    // A user-owned dir, and a root-owned one everyone may write.
    for (owner, mode, fix) in [
        (user.uid, 0o700, format!("chown {}", 0)),
        (0, 0o777, "chmod go-w".to_string()),
    ] {
        let rt = h.other_runtime(&format!("rt-{owner}-{mode:o}"));
        std::fs::create_dir_all(rt.join("state")).unwrap();
        std::fs::write(rt.join("state/f1.json"), forged_state("f1", victim.pid())).unwrap();
        chown_r(&rt, owner);
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(mode)).unwrap();
        let rt_arg = |args: &[&str]| {
            let mut c = h.command(args);
            c.arg("--runtime-dir").arg(&rt);
            run_cmd(c)
        };
        // Root's stop: the state there is not believed, the cgroups say
        // nothing of f1 runs: stopped, and the victim is untouched.
        let out = rt_arg(&["stop", "f1"]).ok();
        assert!(
            out.stderr.contains("runtime dir refused") && out.stderr.contains(&fix),
            "{out}"
        );
        rt_arg(&["kill", "f1"]).ok();
        // Nothing adopts from there: start and the daemon refuse, naming the fix.
        for args in [&["start", "f1"][..], &["daemon", "--foreground"]] {
            let out = rt_arg(args).code(1);
            assert!(
                out.stderr.contains(&format!("{}", rt.display())) && out.stderr.contains(&fix),
                "{out}"
            );
        }
        assert!(!rt.join("daemon.pid").exists(), "no daemon ran there");
        assert!(
            alive(victim.pid()) && start_time(victim.pid()) == vstart,
            "the root process named by the forged state was signalled"
        );
    }
}

#[test]
fn a_symlinked_runtime_dir_is_refused() {
    require_root_cgroups();
    let h = Harness::new();
    sleep_config(&h, "l1");
    let real = h.path("real-run");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &h.runtime).unwrap();
    for args in [&["daemon", "--foreground"][..], &["start", "l1"]] {
        let out = h.run(args).code(1);
        assert!(
            out.stderr
                .contains(&format!("{} is a symbolic link", h.runtime.display())),
            "{out}"
        );
    }
    assert!(!real.join("daemon.pid").exists() && !real.join("cohost.sock").exists());
}

#[test]
fn a_planted_daemon_log_link_is_not_followed() {
    require_root_cgroups();
    let h = Harness::new();
    sleep_config(&h, "g1");
    std::fs::create_dir(&h.runtime).unwrap();
    std::fs::set_permissions(&h.runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = h.path("root-only");
    std::fs::write(&target, "root's own file\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&target, h.runtime.join("daemon.log")).unwrap();
    let out = h.run(&["start", "g1"]).code(1);
    assert!(
        out.stderr
            .contains("daemon.log: a symbolic link, which is never followed"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "root's own file\n",
        "the link's target was written"
    );
    // Once the link is gone, all is well.
    std::fs::remove_file(h.runtime.join("daemon.log")).unwrap();
    h.run(&["start", "g1"]).ok();
    assert!(std::fs::symlink_metadata(h.runtime.join("daemon.log")).is_ok_and(|m| m.is_file()));
}

/// Daemons for `rt` among the node's processes (by command line: counted,
/// never signalled).
fn daemons_for(rt: &Path) -> Vec<i32> {
    let want = rt.as_os_str().as_encoded_bytes();
    cohost::process::procfs::all_pids()
        .into_iter()
        .filter(|p| {
            let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.contains(&&b"daemon"[..]) && args.contains(&want) && alive(*p)
        })
        .collect()
}

#[test]
fn a_deleted_runtime_dir_does_not_give_a_second_daemon() {
    require_root_cgroups();
    let h = Harness::new();
    sleep_config(&h, "d1");
    h.run(&["start", "d1"]).ok();
    let first = h.daemon_pid().unwrap();
    let _cleanup = KillOnDrop::new(first);
    let member = h.members("d1");
    assert_eq!(member.len(), 1);
    std::fs::remove_dir_all(&h.runtime).unwrap();

    // start: refused, naming the daemon that still holds the dir and what to do.
    let out = h.run(&["start", "d1"]).code(1);
    assert!(
        out.stderr.contains(&format!("pid {first}"))
            && out.stderr.contains(&format!("kill -TERM {first}")),
        "{out}"
    );
    let out = h.run(&["daemon", "--foreground"]).code(1);
    assert!(out.stderr.contains(&format!("pid {first}")), "{out}");
    assert_eq!(daemons_for(&h.runtime), vec![first], "exactly one daemon");
    // stop cannot pretend: d1 still runs under the unreachable daemon.
    let out = h.run(&["stop", "d1"]).code(1);
    assert!(out.stderr.contains(&format!("kill -TERM {first}")), "{out}");
    assert!(alive(member[0]), "d1 untouched");

    // Doing what it says: the old daemon stops d1 and exits; all is normal again.
    // SAFETY: kill(2) of the test's own daemon.
    unsafe { libc::kill(first, libc::SIGTERM) };
    wait_for("the old daemon gone", || !alive(first));
    assert!(!alive(member[0]), "d1 stopped by its daemon");
    h.run(&["stop", "d1"]).ok();
    h.run(&["start", "d1"]).ok();
    assert_eq!(daemons_for(&h.runtime).len(), 1);
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_state_file_that_cannot_be_written_shows_in_status() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config(
        "w.toml",
        &format!(
            r#"
[service.s]
command = ["{}", "sleep"]

[instance.w1]
service = "s"

[instance.w2]
service = "s"
"#,
            example("testsvc").display()
        ),
    );
    std::fs::create_dir(&h.runtime).unwrap();
    let mut c = Command::new("mount");
    c.args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&h.runtime);
    run_cmd(c).ok();
    let _fs = Tmpfs(h.runtime.clone());
    h.run(&["start", "w1"]).ok();
    h.run(&["start", "w2"]).ok();
    // Dropped before the tmpfs is unmounted (the harness finds the daemon
    // through the runtime dir).
    let _daemon = KillOnDrop::new(h.daemon_pid().unwrap());
    // Fill the runtime dir's file system.
    let filler = h.runtime.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    h.run(&["stop", "w2"]).ok();
    // Written off the loop: the failure is reported once the writer tried.
    h.wait_for("the failed state write in status", || {
        let w = h.status_json("w2")["warnings"].to_string();
        w.contains("state file") && w.contains("not written")
    });
    assert!(
        !h.status_json("w1")["warnings"]
            .to_string()
            .contains("state file"),
        "only w2's write failed"
    );
    // Space back: the next write succeeds and the warning goes.
    std::fs::remove_file(&filler).unwrap();
    h.run(&["start", "w2"]).ok();
    h.wait_for("the warning gone", || {
        !h.status_json("w2")["warnings"]
            .to_string()
            .contains("state file")
    });
    h.wait_for("w2's state file says running", || {
        std::fs::read(h.runtime.join("state/w2.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["state"] == "running")
    });
    h.run(&["shutdown"]).ok();
}
