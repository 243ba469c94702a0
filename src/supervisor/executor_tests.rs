//! The executor against a recording fake of the OS ([`FakeHost`]), without
//! root: the daemon's own loop, table and worker, the real start
//! preparation on a temporary directory, and a fake for every process and
//! address effect. Each test is one fault of the issue "A fault stays in
//! its instance" that the real tests (`tests/section_faults.rs`) inject
//! with real processes, mounts and cgroups. Adoption is not here: it
//! verifies what it finds through real pidfds (`persist.rs`), and is
//! tested for real (`section_faults`, `section_reliability`).

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::fsm::{Event, State};
use super::host::{Host, Member, PrepareFn};
use super::worker::Progress;
use super::{Daemon, LogFormat, Options, prepare};
use crate::isolation::address::AddrError;
use crate::isolation::cgroup::{CgroupError, CgroupRoot, InstanceCgroup};
use crate::model::Limits;
use crate::process::spawn::{Child, ExecPlan, SpawnError};

/// What the executor asked of the OS, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Spawn { pid: i32, argv: Vec<String> },
    Signal { pid: i32, sig: i32 },
    CgroupCreate(String),
    CgroupKill(String),
    CgroupRemove(String),
}

/// The fake's world: its processes and what was asked of it.
#[derive(Default)]
struct World {
    calls: Vec<Call>,
    next_pid: i32,
    live: BTreeSet<i32>,
    exited: VecDeque<WaitStatus>,
    /// Processes that ignore SIGTERM (a service stuck in its shutdown).
    deaf: bool,
    /// Fake cgroups by name, with their members.
    cgroups: std::collections::BTreeMap<String, BTreeSet<i32>>,
    /// The cgroup the next spawn is born in.
    born_in: Option<String>,
}

impl World {
    fn spawns(&self) -> Vec<(i32, Vec<String>)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Spawn { pid, argv } => Some((*pid, argv.clone())),
                _ => None,
            })
            .collect()
    }

    fn signals_to(&self, pid: i32) -> Vec<i32> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Signal { pid: p, sig } if *p == pid => Some(*sig),
                _ => None,
            })
            .collect()
    }

    /// The process ends on its own (a crash: exit status `code`).
    fn exit(&mut self, pid: i32, code: i32) {
        assert!(self.live.remove(&pid), "{pid} was alive");
        self.exited
            .push_back(WaitStatus::Exited(Pid::from_raw(pid), code));
        self.leave_cgroups(pid);
    }

    fn leave_cgroups(&mut self, pid: i32) {
        for m in self.cgroups.values_mut() {
            m.remove(&pid);
        }
    }

    /// A process of the instance forks a child that is not ours (a double
    /// fork): only the cgroup knows it.
    fn fork_in(&mut self, cgroup: &str) -> i32 {
        self.next_pid += 1;
        let pid = 3_000_000 + self.next_pid;
        self.live.insert(pid);
        self.cgroups.get_mut(cgroup).unwrap().insert(pid);
        pid
    }

    fn calls_matching(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.calls.iter().filter(|c| f(c)).count()
    }
}

struct FakeHost {
    world: Rc<RefCell<World>>,
    prepare: PrepareFn,
}

impl Host for FakeHost {
    fn spawn(&mut self, plan: ExecPlan) -> Result<Child, SpawnError> {
        let mut w = self.world.borrow_mut();
        w.next_pid += 1;
        let pid = 3_000_000 + w.next_pid;
        let argv = plan
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        w.calls.push(Call::Spawn { pid, argv });
        w.live.insert(pid);
        if let Some(cg) = w.born_in.clone() {
            w.cgroups.get_mut(&cg).unwrap().insert(pid);
        }
        // Exec'd at once: the write end is closed, the loop reads EOF.
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        Ok(Child::made_elsewhere(pid, r))
    }

    fn reap_one(&mut self) -> Option<WaitStatus> {
        self.world.borrow_mut().exited.pop_front()
    }

    fn signal_child(&mut self, pid: i32, sig: i32) -> bool {
        let mut w = self.world.borrow_mut();
        w.calls.push(Call::Signal { pid, sig });
        let dies = sig == libc::SIGKILL || (sig == libc::SIGTERM && !w.deaf);
        let was = w.live.contains(&pid);
        if dies && w.live.remove(&pid) {
            let s = Signal::try_from(sig).unwrap();
            w.exited
                .push_back(WaitStatus::Signaled(Pid::from_raw(pid), s, false));
            w.leave_cgroups(pid);
        }
        was
    }

    fn signal_member(&mut self, pid: i32, member: Member<'_>, sig: i32) -> bool {
        let mut w = self.world.borrow_mut();
        let Member::InCgroup(rel) = member else {
            panic!("signal {sig} to {pid}: only cgroup members are not our children here");
        };
        let name = rel.rsplit('/').next().unwrap().to_string();
        if !w.cgroups.get(&name).is_some_and(|m| m.contains(&pid)) {
            return false;
        }
        w.calls.push(Call::Signal { pid, sig });
        let dies = sig == libc::SIGKILL || (sig == libc::SIGTERM && !w.deaf);
        if dies {
            // Not our child: nobody reaps it here, it just goes.
            w.live.remove(&pid);
            w.leave_cgroups(pid);
        }
        true
    }

    fn session_members(&self, seeds: &[(i32, u64)]) -> Vec<(i32, u64)> {
        let w = self.world.borrow();
        seeds
            .iter()
            .filter(|(p, _)| w.live.contains(p))
            .copied()
            .collect()
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        self.world
            .borrow()
            .live
            .contains(&pid)
            .then_some(pid as u64)
    }

    fn add_address(&mut self, a: IpAddr, _: u8, i: &str) -> Result<(), AddrError> {
        panic!("no instance here owns an address ({a} on {i})")
    }

    fn remove_address(&mut self, a: IpAddr, _: u8, i: &str) -> Result<(), AddrError> {
        panic!("no instance here owns an address ({a} on {i})")
    }

    fn is_local(&self, _: IpAddr) -> std::io::Result<bool> {
        Ok(true)
    }

    fn announce(&mut self, _: IpAddr, _: &str) -> std::io::Result<bool> {
        Ok(false)
    }

    fn preparer(&self) -> PrepareFn {
        self.prepare.clone()
    }

    fn cgroup_create(
        &mut self,
        root: &CgroupRoot,
        id: &str,
        _: &Limits,
    ) -> Result<InstanceCgroup, CgroupError> {
        let mut w = self.world.borrow_mut();
        if w.cgroups.get(id).is_some_and(|m| !m.is_empty()) {
            return Err(CgroupError::Populated {
                path: root.base.join(id),
                pids: w.cgroups[id].iter().copied().collect(),
            });
        }
        w.calls.push(Call::CgroupCreate(id.to_string()));
        w.cgroups.insert(id.to_string(), BTreeSet::new());
        w.born_in = Some(id.to_string());
        Ok(root.instance(id))
    }

    fn cgroup_pids(&self, cg: &InstanceCgroup) -> Vec<i32> {
        let w = self.world.borrow();
        w.cgroups
            .get(name_of(cg))
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    fn cgroup_populated(&self, cg: &InstanceCgroup) -> bool {
        !self.cgroup_pids(cg).is_empty()
    }

    fn cgroup_kill(&mut self, cg: &mut InstanceCgroup) -> std::io::Result<()> {
        cg.killed = true;
        let mut w = self.world.borrow_mut();
        let name = name_of(cg).to_string();
        w.calls.push(Call::CgroupKill(name.clone()));
        let members: Vec<i32> = w.cgroups[&name].iter().copied().collect();
        for pid in members {
            w.live.remove(&pid);
            w.leave_cgroups(pid);
            if w.spawns().iter().any(|(p, _)| *p == pid) {
                let s = Signal::SIGKILL;
                w.exited
                    .push_back(WaitStatus::Signaled(Pid::from_raw(pid), s, false));
            }
        }
        Ok(())
    }

    fn cgroup_remove(&mut self, cg: &InstanceCgroup) {
        let mut w = self.world.borrow_mut();
        let name = name_of(cg).to_string();
        assert!(
            w.cgroups.get(&name).is_none_or(|m| m.is_empty()),
            "{name} removed while populated"
        );
        w.calls.push(Call::CgroupRemove(name.clone()));
        w.cgroups.remove(&name);
        if w.born_in.as_deref() == Some(&name) {
            w.born_in = None;
        }
    }

    fn cgroup_join_files(
        &self,
        cg: &InstanceCgroup,
    ) -> std::io::Result<(std::os::fd::OwnedFd, Vec<std::os::fd::OwnedFd>)> {
        let w = self.world.borrow();
        let name = name_of(cg);
        if !w.cgroups.contains_key(name) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        // Any directory: the fake's spawn does not use it.
        let dir = std::fs::File::open("/").map(std::os::fd::OwnedFd::from)?;
        drop(w);
        self.world.borrow_mut().born_in = Some(name.to_string());
        Ok((dir, Vec::new()))
    }
}

fn name_of(cg: &InstanceCgroup) -> &str {
    cg.dir.file_name().and_then(|n| n.to_str()).unwrap()
}

/// A daemon on a temporary runtime dir with `instances` (TOML after the
/// common service `s`), and the fake world it acts on.
struct Rig {
    d: Daemon,
    world: Rc<RefCell<World>>,
    dir: tempfile::TempDir,
}

const SERVICE: &str = r#"
[supervisor]
cgroup = "off"

[service.s]
command = ["/bin/true", "serve"]
ready   = { timeout = "10s" }
stop    = { timeout = "300ms" }
restart = { policy = "no" }
"#;

fn rig(instances: &str, prepare: Option<PrepareFn>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("instances.d");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("a.toml"), format!("{SERVICE}{instances}")).unwrap();
    let world = Rc::new(RefCell::new(World::default()));
    let host = FakeHost {
        world: world.clone(),
        prepare: prepare.unwrap_or_else(|| Arc::new(prepare::prepare)),
    };
    let opts = Options {
        runtime_dir: dir.path().join("run"),
        config_dir,
        log_format: LogFormat::Text,
        log_level: tracing::Level::INFO,
        notify_fd: None,
    };
    let d = Daemon::with_host(opts, Box::new(host)).unwrap_or_else(|e| panic!("{e}"));
    Rig { d, world, dir }
}

impl Rig {
    fn idx(&self, id: &str) -> usize {
        self.d.idx_of(id).unwrap()
    }

    fn state(&self, id: &str) -> State {
        self.d.insts[self.idx(id)].state()
    }

    fn post(&mut self, id: &str, ev: Event) {
        let idx = self.idx(id);
        self.d.post(idx, ev);
    }

    /// Turns the loop (reaping what the fake says has exited) until `done`;
    /// bounded so that a bug cannot hang the test.
    fn until(&mut self, what: &str, done: impl Fn(&Rig) -> bool) {
        let mut events = vec![nix::sys::epoll::EpollEvent::empty(); 16];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(Instant::now() < deadline, "never: {what}");
            self.d.reap();
            self.d
                .turn(&mut events, Some(Duration::from_millis(5)))
                .unwrap();
        }
    }

    fn start(&mut self, id: &str) {
        self.post(id, Event::Start { timeout: None });
        self.until(&format!("{id} running"), |r| r.state(id) == State::Running);
    }

    fn pids(&self, id: &str) -> Vec<i32> {
        self.d.insts[self.idx(id)]
            .procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect()
    }
}

fn data_paths(r: &str, id: &str) -> String {
    let d = std::path::Path::new(r).join(id);
    std::fs::create_dir_all(&d).unwrap();
    format!("paths = {{ data = \"{}\" }}", d.display())
}

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
    let asked = Instant::now();
    r.post("a", Event::Stop { timeout: None });
    r.until("a stopped", |r| r.state("a") == State::Stopped);
    let sigs = r.world.borrow().signals_to(pid);
    assert_eq!(
        sigs,
        [libc::SIGTERM, libc::SIGCONT, libc::SIGKILL],
        "TERM (and CONT for a stopped one), then KILL"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "SIGKILL only at the stop timeout"
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

/// The rig with cgroups (a fake hierarchy: the fake host makes, fills and
/// kills them), as on a node with a writable cgroup v2.
fn rig_with_cgroups(instances: &str) -> Rig {
    let mut r = rig(instances, None);
    let base = r.dir.path().join("cgroup/cohost/test");
    r.d.cgroot = Ok(CgroupRoot::unchecked(r.dir.path().join("cgroup"), base));
    r
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
