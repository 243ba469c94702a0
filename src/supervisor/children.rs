//! Reaping: SIGCHLD (via the signalfd) -> `waitpid(-1, WNOHANG)` until
//! none is left. Every child is ours or an orphan re-parented to us (we are
//! a child subreaper); each exit becomes an event for its instance.

use std::io::Read;
use std::os::fd::RawFd;

use nix::sys::wait::WaitStatus;

use super::Daemon;
use super::fsm::Event;
use super::instance::ProcRole;
use super::registry::{Role, Source};
use crate::model::ServiceKind;
use crate::process::spawn;

/// "exited with status 1" / "killed by signal 9 (SIGKILL)", and whether
/// it was a clean exit (status 0).
pub fn describe(ws: WaitStatus) -> Option<(i32, String, bool)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((
            pid.as_raw(),
            format!("exited with status {code}"),
            code == 0,
        )),
        WaitStatus::Signaled(pid, sig, core) => Some((
            pid.as_raw(),
            format!(
                "killed by signal {} ({}){}",
                sig as i32,
                sig.as_str(),
                if core { ", core dumped" } else { "" }
            ),
            false,
        )),
        _ => None,
    }
}

impl Daemon {
    pub(super) fn reap(&mut self) {
        let mut orphans = false;
        // Reap everything that has exited first, then act on it: in a
        // burst (500 instances stopping) the last exit is reaped without
        // waiting for the bookkeeping of the others.
        let mut exited = Vec::new();
        while let Some(ws) = self.host.reap_one() {
            exited.extend(describe(ws));
        }
        for (pid, status, clean) in exited {
            match self.reg.reaped(pid) {
                Some(Role::Proc { idx }) => self.proc_exited(idx, pid, status, clean),
                Some(Role::StopCmd { idx }) => {
                    tracing::info!(instance = %self.insts[idx].id(), "stop command {status}");
                    self.insts[idx].stop_cmd = None;
                    self.post(idx, Event::StopCommandExited { ok: clean });
                    self.check_empty(idx);
                }
                Some(Role::Probe { idx, slot }) => {
                    self.probe_command_exited(idx, slot, pid, clean, &status)
                }
                Some(Role::Hook { idx }) => {
                    if !clean {
                        tracing::warn!(instance = %self.insts[idx].id(), pid, "event hook {status}");
                    }
                    self.hook_exited(idx);
                }
                Some(Role::Discard) => {}
                None => orphans = true,
            }
        }
        if orphans {
            // A double-forked process of some instance was re-parented to us
            // and died. Without cgroups its instance cannot be told from
            // the pid any more: look at every instance that is stopping.
            let stopping: Vec<usize> = (0..self.insts.len())
                .filter(|i| self.insts[*i].state() == super::fsm::State::Stopping)
                .collect();
            for idx in stopping {
                self.check_empty(idx);
            }
        }
    }

    fn proc_exited(&mut self, idx: usize, pid: i32, status: String, clean: bool) {
        self.claim_orphans(idx);
        let spawn_error = self.take_errpipe_of(pid);
        let kind = self.insts[idx].spec.kind;
        let id = self.insts[idx].id().to_string();
        let Some(p) = self.insts[idx].procs.iter_mut().find(|p| p.pid == pid) else {
            return;
        };
        p.exit = Some(status.clone());
        let (name, role) = (p.name.clone(), p.role);
        tracing::info!(instance = %id, process = %name, pid, "{status}");
        self.dirty.insert(idx);
        if let Some(err) = spawn_error {
            self.post(idx, Event::LaunchFailed(format!("{name}: {err}")));
        } else if role == ProcRole::StartScript {
            self.post(idx, Event::ScriptExited { ok: clean, status });
        } else if kind == ServiceKind::Simple && role == ProcRole::Main {
            self.post(
                idx,
                Event::ProcessExited {
                    name,
                    status,
                    clean,
                },
            );
        }
        self.check_empty(idx);
    }

    /// Without cgroups: a process of the instance that just died may have
    /// left children, which the kernel re-parented to us (the subreaper)
    /// before telling us. They are the instance's: a start script's daemon
    /// above all. Take them into the instance's tracking now, while that is
    /// still knowable. (A process orphaned by a death that is not ours to
    /// see, a double fork inside the service, is only found through
    /// cgroups: `status` says which tracking is in use.)
    fn claim_orphans(&mut self, idx: usize) {
        if self.insts[idx].cgroup.is_some() {
            return;
        }
        let me = std::process::id() as i32;
        let known: std::collections::BTreeSet<i32> = self
            .insts
            .iter()
            .flat_map(|i| i.procs.iter().map(|p| p.pid))
            .chain(self.reg.child_pids())
            .collect();
        for pid in crate::process::procfs::all_pids() {
            if known.contains(&pid) {
                continue;
            }
            let Some(st) = crate::process::procfs::stat(pid) else {
                continue;
            };
            if st.ppid != me || st.state == 'Z' {
                continue;
            }
            tracing::info!(instance = %self.insts[idx].id(), pid, comm = %st.comm, "orphaned process taken into the instance");
            self.reg.child(pid, Role::Proc { idx });
            self.insts[idx].procs.push(super::instance::Proc {
                name: st.comm.clone(),
                pid,
                start_time: st.start_time,
                role: ProcRole::Member,
                child: true,
                pidfd: None,
                exit: None,
            });
        }
    }

    /// The exec result of a child that has just died, if its pipe is still
    /// open: a failure report there explains an exit status 127.
    fn take_errpipe_of(&mut self, pid: i32) -> Option<spawn::SpawnError> {
        let fd = self.reg.exec_pipe_of(pid)?;
        let mut e = self.reg.take_exec_pipe(fd)?;
        self.deregister(&e.child.errpipe);
        // Reaped: it no longer runs on its plan and stack.
        let late = e.child.release();
        self.release_fds_later(late);
        // The child is dead: what it wrote is all there, then EOF.
        let _ = std::fs::File::from(e.child.errpipe.try_clone().ok()?).read_to_end(&mut e.buf);
        let _ = e.child.note_report(&mut e.buf);
        let failure = spawn::decode_failure(&e.child, &e.buf);
        if failure.is_none() {
            self.exec_done(e.idx);
        }
        failure
    }

    /// One more process of the current launch has exec'd: once all have,
    /// the instance is launched (systemd's Type=exec: `start` never says
    /// "running" for a process still in its set-up).
    fn exec_done(&mut self, idx: usize) {
        let inst = &mut self.insts[idx];
        inst.execs_pending = inst.execs_pending.saturating_sub(1);
        if inst.execs_pending == 0 {
            self.post_launched(idx);
        }
    }

    /// `Launched`, but a child that is already dead is reaped first: its
    /// exit then reaches the table before `Launched` does, and `start`
    /// never says "running" for a process that is gone (the close of the
    /// exec pipe looks the same for an exec and for a death before it).
    pub(super) fn post_launched(&mut self, idx: usize) {
        let dead = self.insts[idx]
            .live_children()
            .any(|p| crate::process::has_exited_child(p.pid));
        if dead {
            self.reap();
        }
        self.timing_launched(idx);
        self.post(idx, Event::Launched);
    }

    /// The exec-error pipe of a child became readable. EOF with nothing
    /// read: exec succeeded, forget it. A report: keep it for the reaper.
    pub(super) fn on_errpipe(&mut self, fd: RawFd) {
        let Some(e) = self.reg.exec_pipe(fd) else {
            return;
        };
        let mut buf = [0u8; 16];
        // Files a child that took them late no longer needs from us.
        let mut late = Vec::new();
        let eof = loop {
            match nix::unistd::read(&e.child.errpipe, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    e.buf.extend_from_slice(&buf[..n]);
                    late.extend(e.child.note_report(&mut e.buf));
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break false,
            }
        };
        self.release_fds_later(late);
        if !eof {
            return;
        }
        if let Some(mut d) = self.reg.take_exec_pipe(fd) {
            self.deregister(&d.child.errpipe);
            // EOF: the child has exec'd or died, either way it is out of
            // our memory.
            let late = d.child.release();
            self.release_fds_later(late);
            if d.buf.is_empty() {
                self.exec_done(d.idx);
            } else {
                // Keep the report (unregistered) for the reaper.
                d.buf.shrink_to_fit();
                self.reg.fd(fd, Source::Exec(d));
            }
        }
    }

    /// An adopted process (not our child) exited: its pidfd became readable.
    pub(super) fn on_pidfd(&mut self, fd: RawFd) {
        let Some((idx, pid)) = self.reg.take_adopted(fd) else {
            return;
        };
        let kind = self.insts[idx].spec.kind;
        let Some(p) = self.insts[idx].procs.iter_mut().find(|p| p.pid == pid) else {
            return;
        };
        if let Some(f) = p.pidfd.take() {
            let _ = self.epoll.delete(&f);
        }
        let status =
            "exited (status unknown: it was adopted from a previous supervisor)".to_string();
        p.exit = Some(status.clone());
        let (name, role) = (p.name.clone(), p.role);
        tracing::info!(instance = %self.insts[idx].id(), process = %name, pid, "{status}");
        self.dirty.insert(idx);
        if kind == ServiceKind::Simple && role == ProcRole::Main {
            self.post(
                idx,
                Event::ProcessExited {
                    name,
                    status,
                    clean: false,
                },
            );
        }
        self.check_empty(idx);
    }
}
