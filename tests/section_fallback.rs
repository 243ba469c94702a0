//! Tracking without cgroups (`[supervisor] cgroup = "off"`, or a host
//! without a writable cgroup v2): sessions, descendants and orphans
//! re-parented to the supervisor. `status` names the tracking in use.

mod common;
use common::*;

#[test]
fn forking_and_background_children_are_tracked_and_stopped() {
    let h = Harness::new();
    let addr = format!("{}:7020", h.addr(20));
    let testsvc = example("testsvc");
    h.write_config(
        "f.toml",
        &format!(
            "[supervisor]\ncgroup = \"off\"\n\n\
             [service.oserv]\ntype = \"forking\"\ncommand = [\"{t}\", \"forking\", \"{addr}\"]\nready = {{ tcp = \"{addr}\", timeout = \"20s\" }}\n\n\
             [service.bg]\ncommand = \"{t} sleep & exec {t} sleep\"\nshell = true\nstop = {{ timeout = \"3s\" }}\n\n\
             [instance.f1]\nservice = \"oserv\"\n\n[instance.b1]\nservice = \"bg\"\n",
            t = testsvc.display()
        ),
    );
    let bystander = Bystander::sleep();

    h.run(&["start", "f1"]).ok();
    let st = h.status_json("f1");
    assert!(
        st["tracking"]
            .as_str()
            .unwrap()
            .starts_with("process-group and session"),
        "{st}"
    );
    let daemons = h.members("f1");
    assert_eq!(
        daemons.len(),
        1,
        "the daemon left by the start script is tracked: {st}"
    );
    assert!(ask(&addr).unwrap().starts_with("forked"));
    h.run(&["stop", "f1"]).ok();
    assert!(!alive(daemons[0]), "stop reached the orphaned daemon");

    h.run(&["start", "b1"]).ok();
    h.wait_for("both sleeps of b1", || h.members("b1").len() == 2);
    let m = h.members("b1");
    h.run(&["stop", "b1"]).ok();
    for p in m {
        assert!(!alive(p), "{p} of b1 survived");
    }
    assert!(alive(bystander.pid()));
}
