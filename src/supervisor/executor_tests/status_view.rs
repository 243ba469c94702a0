//! The status the daemon writes (a view borrowing from the instance) is
//! what the client reads as an `InstanceStatus`: the same fields, in the
//! same order, with the same text for the log directory and the tracking.

use super::fake::{data_paths, rig_with_cgroups};
use crate::control::observe::Usage;
use crate::control::proto::InstanceStatus;

#[test]
fn the_view_reads_back_as_an_instance_status_field_for_field() {
    let tmp = tempfile::tempdir().unwrap();
    // Escaped in TOML and in JSON: a quote, a space, a non-ASCII letter.
    let log = tmp.path().join("lo\"g é");
    std::fs::create_dir(&log).unwrap();
    let paths = data_paths(tmp.path().to_str().unwrap(), "a").replace(
        " }",
        &format!(
            ", log = \"{}\" }}",
            log.display().to_string().replace('"', "\\\"")
        ),
    );
    let mut r = rig_with_cgroups(&format!(
        "[instance.a]\nservice = \"s\"\naddress = \"127.0.0.2\"\nport = 9\n\
         hostname = \"h1\"\n{paths}\n[instance.b]\nservice = \"s\"\n"
    ));
    r.start("a");
    // Text that needs escaping, in what is written by hand and by serde.
    let ia = r.idx("a");
    r.d.insts[ia].fsm.last_failure = Some("exited 1: \"bad\"\n\u{1}é".into());
    r.d.insts[ia].warnings.push("a \\ warning".into());
    let usage = Usage {
        memory_bytes: Some(4096),
        cpu_usec: None,
        ..Usage::default()
    };
    for (id, running) in [("a", true), ("b", false)] {
        let idx = r.idx(id);
        let view = r.d.status_view(idx, true, Some(usage.clone()));
        let json = serde_json::to_string(&view).unwrap();
        // What the daemon writes by hand is what serde writes.
        let mut by_hand = Vec::new();
        view.write_json(&mut by_hand);
        assert_eq!(String::from_utf8(by_hand).unwrap(), json);
        let st: InstanceStatus =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        // Nothing left out, added or reordered: written again, the same text.
        assert_eq!(serde_json::to_string(&st).unwrap(), json);
        assert_eq!(st.log_dir, r.d.log_dir(idx).display().to_string());
        let cg = r.d.cgroot.as_ref().unwrap().instance(id).dir();
        let want = if running {
            format!("cgroup {}", cg.display())
        } else {
            format!("cgroup {} (when running)", cg.display())
        };
        assert_eq!(st.tracking, want);
        assert_eq!(st.usage.as_ref(), Some(&usage));
        assert_eq!(st.state, if running { "running" } else { "stopped" });
    }
    let a = r.idx("a");
    let st: InstanceStatus =
        serde_json::from_str(&serde_json::to_string(&r.d.status_view(a, false, None)).unwrap())
            .unwrap();
    assert_eq!(
        (st.address.as_deref(), st.port, st.hostname.as_deref()),
        (Some("127.0.0.2"), Some(9), Some("h1"))
    );
    assert_eq!(st.log_dir, log.display().to_string());
    assert_eq!(st.processes.len(), 1, "{:?}", st.processes);
    assert!(st.processes[0].alive && st.timing.is_some());
}
