//! Many instances on one node (issue 17), end to end with the real binary:
//! an `up` of more instances than the daemon has descriptors for starting
//! at once.

mod common;
use common::*;
use std::os::unix::process::CommandExt;

/// A daemon with 400 descriptors (window: 21 starts at once) brings 300
/// instances up: each start holds a few descriptors until its exec is
/// confirmed, so 300 (or 64) at once failed with EMFILE ("Too many open files");
/// the batch keeps the rest pending until a start of the window ends.
#[test]
fn up_of_more_instances_than_descriptors_allow_at_once() {
    require_root_cgroups();
    const N: usize = 300;
    let h = Harness::new();
    let mut cfg = format!(
        "[service.s]\ncommand = [\"{}\", \"sleep\"]\n",
        example("testsvc").display()
    );
    for i in 0..N {
        cfg += &format!("\n[instance.w{i}]\nservice = \"s\"\n");
    }
    h.write_config("a.toml", &cfg);
    let mut up = h.command(&["up"]);
    // SAFETY: setrlimit(2) only, async-signal-safe; the daemon the client
    // launches inherits the limit (soft and hard: it cannot raise it).
    unsafe {
        up.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 400,
                rlim_max: 400,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let out = run_cmd(up);
    assert_eq!(out.code, 0, "{out}\n{}", h.daemon_log());
    assert!(
        out.stdout.contains(&format!("{N} instance(s) started")),
        "{out}"
    );
    let list = h.run(&["list", "--json"]).ok();
    assert_eq!(list.stdout.matches("\"running\"").count(), N, "{list}");
    // The daemon writes a list in parts of 128 KiB as it makes it, and
    // the client indents each as it comes: the same text as a whole.
    let v: Vec<cohost::control::proto::InstanceStatus> =
        serde_json::from_str(&list.stdout).unwrap_or_else(|e| panic!("{e}\n{list}"));
    let compact = serde_json::to_string(&v).unwrap().len();
    assert!(
        compact > 128 * 1024,
        "{compact} bytes: one part, the parts untested"
    );
    assert_eq!(
        list.stdout,
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    );
    let down = h.run(&["down"]).ok();
    assert!(
        down.stdout.contains(&format!("{N} instance(s) stopped")),
        "{down}"
    );
}
