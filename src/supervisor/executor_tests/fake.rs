//! The recording fake of the OS the executor tests run the daemon against:
//! a world of fake processes and cgroups, and a clock the test moves.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::isolation::address::AddrError;
use crate::isolation::cgroup::{CgroupError, CgroupRoot, InstanceCgroup};
use crate::model::Limits;
use crate::process::spawn::{Child, ExecPlan, SpawnError};
use crate::supervisor::fsm::{Event, State};
use crate::supervisor::host::{Host, Member, PrepareFn};
use crate::supervisor::{Daemon, LogFormat, Options, prepare};

/// What the executor asked of the OS, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Spawn { pid: i32, argv: Vec<String> },
    Signal { pid: i32, sig: i32 },
    CgroupCreate(String),
    CgroupKill(String),
    CgroupRemove(String),
}

/// The fake's world: its processes and what was asked of it.
#[derive(Default)]
pub(super) struct World {
    pub(super) calls: Vec<Call>,
    pub(super) next_pid: i32,
    pub(super) live: BTreeSet<i32>,
    pub(super) exited: VecDeque<WaitStatus>,
    /// Processes that ignore SIGTERM (a service stuck in its shutdown).
    pub(super) deaf: bool,
    /// Fake cgroups by name, with their members.
    pub(super) cgroups: std::collections::BTreeMap<String, BTreeSet<i32>>,
    /// The cgroup the next spawn is born in.
    pub(super) born_in: Option<String>,
    /// How far the test moved the daemon's clock ahead of the real one.
    pub(super) ahead: Duration,
}

impl World {
    pub(super) fn spawns(&self) -> Vec<(i32, Vec<String>)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Spawn { pid, argv } => Some((*pid, argv.clone())),
                _ => None,
            })
            .collect()
    }

    pub(super) fn signals_to(&self, pid: i32) -> Vec<i32> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Signal { pid: p, sig } if *p == pid => Some(*sig),
                _ => None,
            })
            .collect()
    }

    /// The process ends on its own (a crash: exit status `code`).
    pub(super) fn exit(&mut self, pid: i32, code: i32) {
        assert!(self.live.remove(&pid), "{pid} was alive");
        self.exited
            .push_back(WaitStatus::Exited(Pid::from_raw(pid), code));
        self.leave_cgroups(pid);
    }

    pub(super) fn leave_cgroups(&mut self, pid: i32) {
        for m in self.cgroups.values_mut() {
            m.remove(&pid);
        }
    }

    /// A process of the instance forks a child that is not ours (a double
    /// fork): only the cgroup knows it.
    pub(super) fn fork_in(&mut self, cgroup: &str) -> i32 {
        self.next_pid += 1;
        let pid = 3_000_000 + self.next_pid;
        self.live.insert(pid);
        self.cgroups.get_mut(cgroup).unwrap().insert(pid);
        pid
    }

    pub(super) fn calls_matching(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.calls.iter().filter(|c| f(c)).count()
    }
}

pub(super) struct FakeHost {
    pub(super) world: Rc<RefCell<World>>,
    pub(super) prepare: PrepareFn,
}

impl Host for FakeHost {
    fn now(&self) -> Instant {
        Instant::now() + self.world.borrow().ahead
    }

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
    cg.name()
}

/// A daemon on a temporary runtime dir with `instances` (TOML after the
/// common service `s`), and the fake world it acts on.
pub(super) struct Rig {
    pub(super) d: Daemon,
    pub(super) world: Rc<RefCell<World>>,
    pub(super) dir: tempfile::TempDir,
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

pub(super) fn rig(instances: &str, prepare: Option<PrepareFn>) -> Rig {
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
    /// A connection of `uid` the daemon answers on, as if it had accepted
    /// it (not registered with its epoll): our end, non-blocking.
    pub(super) fn client(&mut self, id: u64, uid: u32) -> std::os::unix::net::UnixStream {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let peer = crate::control::server::Peer {
            uid,
            gid: uid,
            pid: std::process::id() as i32,
        };
        self.d
            .conns
            .insert(id, crate::control::server::Conn::new(theirs, peer));
        ours
    }

    pub(super) fn idx(&self, id: &str) -> usize {
        self.d.idx_of(id).unwrap()
    }

    pub(super) fn state(&self, id: &str) -> State {
        self.d.insts[self.idx(id)].state()
    }

    pub(super) fn post(&mut self, id: &str, ev: Event) {
        let idx = self.idx(id);
        self.d.post(idx, ev);
    }

    /// Turns the loop (reaping what the fake says has exited) until `done`;
    /// bounded so that a bug cannot hang the test.
    pub(super) fn until(&mut self, what: &str, mut done: impl FnMut(&Rig) -> bool) {
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

    /// `n` turns of the loop with nothing awaited (each waits 5 ms at most).
    pub(super) fn turns(&mut self, n: usize) {
        let mut events = vec![nix::sys::epoll::EpollEvent::empty(); 16];
        for _ in 0..n {
            self.d.reap();
            self.d
                .turn(&mut events, Some(Duration::from_millis(5)))
                .unwrap();
        }
    }

    /// Moves the daemon's clock (not the real one) ahead.
    pub(super) fn advance(&mut self, by: Duration) {
        self.world.borrow_mut().ahead += by;
    }

    pub(super) fn start(&mut self, id: &str) {
        self.post(id, Event::Start { timeout: None });
        self.until(&format!("{id} running"), |r| r.state(id) == State::Running);
    }

    pub(super) fn pids(&self, id: &str) -> Vec<i32> {
        self.d.insts[self.idx(id)]
            .procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect()
    }
}

pub(super) fn data_paths(r: &str, id: &str) -> String {
    let d = std::path::Path::new(r).join(id);
    std::fs::create_dir_all(&d).unwrap();
    format!("paths = {{ data = \"{}\" }}", d.display())
}

/// The rig with cgroups (a fake hierarchy: the fake host makes, fills and
/// kills them), as on a node with a writable cgroup v2.
pub(super) fn rig_with_cgroups(instances: &str) -> Rig {
    let mut r = rig(instances, None);
    let base = r.dir.path().join("cgroup/cohost/test");
    r.d.cgroot = Ok(CgroupRoot::unchecked(r.dir.path().join("cgroup"), base));
    r
}
