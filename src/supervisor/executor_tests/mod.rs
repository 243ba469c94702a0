//! The executor against a recording fake of the OS ([`FakeHost`]), without
//! root: the daemon's own loop, table and worker, the real start
//! preparation on a temporary directory, and a fake for every process and
//! address effect. Each test is one fault of the issue "A fault stays in
//! its instance" that the real tests (`tests/section_faults.rs`) inject
//! with real processes, mounts and cgroups. Adoption is not here: it
//! verifies what it finds through real pidfds (`persist.rs`), and is
//! tested for real (`section_faults`, `section_reliability`).

mod fake;
mod listing;
mod status_view;
mod usage;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use fake::{Call, data_paths, rig, rig_with_cgroups};

use super::fsm::{Event, State};
use super::host::PrepareFn;
use super::prepare;
use super::worker::Progress;

#[test]
fn a_start_forks_its_process_with_its_lock_and_reports_running() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = data_paths(tmp.path().to_str().unwrap(), "a");
    let mut r = rig(&format!("[instance.a]\nservice = \"s\"\n{paths}\n"), None);
    r.start("a");
    let spawns = r.world.borrow().spawns();
    assert_eq!(spawns.len(), 1, "{spawns:?}");
    assert_eq!(spawns[0].1, ["/bin/true", "serve"]);
    assert_eq!(r.pids("a"), [spawns[0].0]);
    assert!(r.d.insts[r.idx("a")].lock.is_some(), "the lock is held");
    assert!(tmp.path().join("a/.cohost.lock").exists());
}

#[test]
fn a_stop_that_sigterm_does_not_end_escalates_to_sigkill_at_its_timeout() {
    let mut r = rig("[instance.a]\nservice = \"s\"\n", None);
    r.start("a");
    let pid = r.pids("a")[0];
    r.world.borrow_mut().deaf = true;
    let hour = Duration::from_secs(3600);
    r.post(
        "a",
        Event::Stop {
            timeout: Some(hour),
        },
    );
    r.until("SIGTERM sent", |r| {
        r.world.borrow().signals_to(pid).contains(&libc::SIGTERM)
    });
    // On the daemon's clock: nothing more until the timeout, however
    // often the loop turns; SIGKILL once it has passed.
    r.turns(20);
    r.advance(hour - Duration::from_secs(1));
    r.turns(5);
    assert_eq!(r.state("a"), State::Stopping);
    assert_eq!(
        r.world.borrow().signals_to(pid),
        [libc::SIGTERM, libc::SIGCONT],
        "no SIGKILL before the stop timeout"
    );
    r.advance(Duration::from_secs(2));
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    assert_eq!(
        r.world.borrow().signals_to(pid),
        [libc::SIGTERM, libc::SIGCONT, libc::SIGKILL],
        "TERM (and CONT for a stopped one), then KILL at the timeout"
    );
    assert!(r.pids("a").is_empty());
}

#[test]
fn kill_sends_sigkill_at_once_and_the_instance_ends_stopped() {
    let mut r = rig("[instance.a]\nservice = \"s\"\n", None);
    r.start("a");
    let pid = r.pids("a")[0];
    r.post("a", Event::Kill);
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    assert_eq!(r.world.borrow().signals_to(pid), [libc::SIGKILL]);
}

#[test]
fn a_crash_under_on_failure_restarts_until_its_max_then_fails() {
    let mut r = rig(
        "[instance.a]\nservice = \"s\"\nrestart = { policy = \"on-failure\", max = 2, window = \"5m\", backoff = \"10ms\" }\n",
        None,
    );
    r.start("a");
    for n in 2..=3 {
        let pid = r.pids("a")[0];
        r.world.borrow_mut().exit(pid, 1);
        r.until(&format!("start number {n}"), |r| {
            r.world.borrow().spawns().len() == n && r.state("a") == State::Running
        });
    }
    let pid = r.pids("a")[0];
    r.world.borrow_mut().exit(pid, 1);
    r.until("a failed", |r| r.state("a") == State::Failed);
    assert_eq!(r.world.borrow().spawns().len(), 3, "two restarts, no more");
    let why = r.d.insts[r.idx("a")].fsm.last_failure.clone().unwrap();
    assert!(why.contains("exited with status 1"), "{why}");
}

#[test]
fn a_start_whose_storage_hangs_fails_at_its_timeout_and_another_starts_meanwhile() {
    let (release, hang) = mpsc::channel::<()>();
    let hang = Arc::new(Mutex::new(hang));
    let prep: PrepareFn = Arc::new(move |req: prepare::Request, p: &Progress| {
        if req.spec.id == "h1" {
            p.set("paths.data /san/h1");
            let _ = hang.lock().unwrap().recv();
        }
        prepare::prepare(req, p)
    });
    let mut r = rig(
        "[instance.h1]\nservice = \"s\"\n\n[instance.o1]\nservice = \"s\"\n",
        Some(prep),
    );
    r.post(
        "h1",
        Event::Start {
            timeout: Some(Duration::from_millis(400)),
        },
    );
    r.until("h1 preparing", |r| {
        r.d.insts[r.idx("h1")].preparing.is_some()
    });
    // o1 starts and stops while h1's storage does not answer.
    r.start("o1");
    assert_eq!(r.state("h1"), State::Starting);
    r.post("o1", Event::Stop { timeout: None });
    r.until("o1 stopped", |r| r.state("o1") == State::Stopped);
    r.until("h1 failed", |r| r.state("h1") == State::Failed);
    let why = r.d.insts[r.idx("h1")].fsm.last_failure.clone().unwrap();
    assert!(
        why.contains("paths.data /san/h1 did not answer within"),
        "{why}"
    );
    assert_eq!(r.world.borrow().spawns().len(), 1, "only o1 was forked");
    // Still hung: a new start fails at once, saying so.
    r.post("h1", Event::Reset);
    r.until("h1 reset", |r| r.state("h1") == State::Stopped);
    r.post("h1", Event::Start { timeout: None });
    r.until("h1 refused", |r| r.state("h1") == State::Failed);
    let why = r.d.insts[r.idx("h1")].fsm.last_failure.clone().unwrap();
    assert!(why.contains("still does not answer"), "{why}");
    // The storage answers again: h1 starts, without a restart of anything.
    release.send(()).unwrap();
    r.until("the stuck check returned", |r| {
        r.d.insts[r.idx("h1")].preparing.is_none()
    });
    r.post("h1", Event::Reset);
    r.until("h1 reset", |r| r.state("h1") == State::Stopped);
    // The next start's check answers too.
    release.send(()).unwrap();
    r.start("h1");
    assert_eq!(r.world.borrow().spawns().len(), 2, "o1 once, h1 once");
}

#[test]
fn a_reload_leaves_a_running_instance_alone_until_its_next_start() {
    let mut r = rig("[instance.a]\nservice = \"s\"\n", None);
    r.start("a");
    let pid = r.pids("a")[0];
    let file = r.dir.path().join("instances.d/a.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"serve\"", "\"serve\", \"--v2\"")).unwrap();
    if let Err(e) = r.d.reload() {
        panic!("{e}");
    }
    assert!(r.world.borrow().signals_to(pid).is_empty(), "not signalled");
    assert_eq!(r.pids("a"), [pid], "still the same process");
    r.post("a", Event::Stop { timeout: None });
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    r.start("a");
    let spawns = r.world.borrow().spawns();
    assert_eq!(spawns.last().unwrap().1, ["/bin/true", "serve", "--v2"]);
}

#[test]
fn kill_reaches_a_double_forked_process_only_the_cgroup_knows_and_the_cgroup_is_never_reused() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let main = r.pids("a")[0];
    let orphan = r.world.borrow_mut().fork_in("a");
    assert!(r.d.members(r.idx("a")).iter().any(|(p, _)| *p == orphan));
    r.post("a", Event::Kill);
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    {
        let w = r.world.borrow();
        assert!(
            !w.live.contains(&main) && !w.live.contains(&orphan),
            "both gone"
        );
        assert_eq!(w.calls_matching(|c| *c == Call::CgroupKill("a".into())), 1);
        assert_eq!(
            w.calls_matching(|c| *c == Call::CgroupRemove("a".into())),
            1
        );
    }
    r.start("a");
    let creates = r
        .world
        .borrow()
        .calls_matching(|c| *c == Call::CgroupCreate("a".into()));
    assert_eq!(
        creates, 2,
        "a killed cgroup is made anew for the next start"
    );
}

#[test]
fn stop_signals_every_member_and_keeps_the_empty_cgroup_for_the_next_start() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let main = r.pids("a")[0];
    let orphan = r.world.borrow_mut().fork_in("a");
    r.post("a", Event::Stop { timeout: None });
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    {
        let w = r.world.borrow();
        assert_eq!(w.signals_to(main)[0], libc::SIGTERM);
        assert_eq!(w.signals_to(orphan)[0], libc::SIGTERM, "the orphan too");
        assert_eq!(w.calls_matching(|c| matches!(c, Call::CgroupKill(_))), 0);
        assert_eq!(w.calls_matching(|c| matches!(c, Call::CgroupRemove(_))), 0);
    }
    r.start("a");
    let w = r.world.borrow();
    assert_eq!(
        w.calls_matching(|c| *c == Call::CgroupCreate("a".into())),
        1,
        "the empty, never killed cgroup is reused"
    );
    assert_eq!(w.cgroups["a"].len(), 1, "the new process was born in it");
}

#[test]
fn a_start_into_a_cgroup_that_still_holds_a_process_is_refused_naming_it() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    let stray = {
        let mut w = r.world.borrow_mut();
        w.cgroups.insert("a".into(), BTreeSet::new());
        w.fork_in("a")
    };
    r.post("a", Event::Start { timeout: None });
    r.until("a failed", |r| r.state("a") == State::Failed);
    let why = r.d.insts[r.idx("a")].fsm.last_failure.clone().unwrap();
    assert!(why.contains(&stray.to_string()), "{why}");
    assert!(r.world.borrow().spawns().is_empty(), "no second copy");
    assert!(
        r.world.borrow().live.contains(&stray),
        "and the stray untouched"
    );
}
