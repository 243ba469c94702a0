//! Whose is it: one registry from what the loop hears about (a child's
//! pid, a descriptor epoll reports, an inotify watch) to the instance and
//! the role it has there. The event loop dispatches through it; nothing
//! else keeps a map of its own.

use std::collections::HashMap;
use std::os::fd::RawFd;

use nix::sys::inotify::WatchDescriptor;

/// What a child of the daemon is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A process of an instance (or a forking service's start script).
    Proc {
        idx: usize,
    },
    StopCmd {
        idx: usize,
    },
    Probe {
        idx: usize,
        slot: usize,
    },
    /// An event hook of instance `idx`.
    Hook {
        idx: usize,
    },
    /// A probe command whose result no longer matters (reaped, ignored).
    Discard,
}

/// A child whose exec result is not known yet.
pub(crate) struct ExecPipe {
    pub idx: usize,
    pub child: crate::process::spawn::Child,
    /// What it has written so far (a failure report, or nothing).
    pub buf: Vec<u8>,
}

/// A descriptor the loop waits on for an instance.
pub(crate) enum Source {
    /// A child's exec-report pipe, until its exec is known.
    Exec(ExecPipe),
    /// The socket of a TCP probe in flight (instance, probe slot).
    Probe { idx: usize, slot: usize },
    /// The pidfd of an adopted process, which is not our child.
    Adopted { idx: usize, pid: i32 },
}

#[derive(Default)]
pub(crate) struct Registry {
    children: HashMap<i32, Role>,
    fds: HashMap<RawFd, Source>,
    watches: HashMap<WatchDescriptor, usize>,
}

impl Registry {
    pub fn child(&mut self, pid: i32, role: Role) {
        self.children.insert(pid, role);
    }

    /// Our own unreaped child: its pid cannot have been reused.
    pub fn is_child(&self, pid: i32) -> bool {
        self.children.contains_key(&pid)
    }

    /// At its reaping: what it was for.
    pub fn reaped(&mut self, pid: i32) -> Option<Role> {
        self.children.remove(&pid)
    }

    pub fn child_pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.children.keys().copied()
    }

    pub fn fd(&mut self, fd: RawFd, source: Source) {
        self.fds.insert(fd, source);
    }

    pub fn forget_fd(&mut self, fd: RawFd) -> Option<Source> {
        self.fds.remove(&fd)
    }

    pub fn exec_pipe(&mut self, fd: RawFd) -> Option<&mut ExecPipe> {
        match self.fds.get_mut(&fd) {
            Some(Source::Exec(e)) => Some(e),
            _ => None,
        }
    }

    pub fn take_exec_pipe(&mut self, fd: RawFd) -> Option<ExecPipe> {
        match self.fds.remove(&fd)? {
            Source::Exec(e) => Some(e),
            other => {
                self.fds.insert(fd, other);
                None
            }
        }
    }

    /// The exec pipe still kept for child `pid`, if any.
    pub fn exec_pipe_of(&self, pid: i32) -> Option<RawFd> {
        self.fds.iter().find_map(|(fd, s)| match s {
            Source::Exec(e) if e.child.pid == pid => Some(*fd),
            _ => None,
        })
    }

    pub fn probe(&self, fd: RawFd) -> Option<(usize, usize)> {
        match self.fds.get(&fd) {
            Some(Source::Probe { idx, slot }) => Some((*idx, *slot)),
            _ => None,
        }
    }

    pub fn take_adopted(&mut self, fd: RawFd) -> Option<(usize, i32)> {
        match self.fds.remove(&fd)? {
            Source::Adopted { idx, pid } => Some((idx, pid)),
            other => {
                self.fds.insert(fd, other);
                None
            }
        }
    }

    pub fn watch(&mut self, wd: WatchDescriptor, idx: usize) {
        self.watches.insert(wd, idx);
    }

    pub fn watched(&self, wd: WatchDescriptor) -> Option<usize> {
        self.watches.get(&wd).copied()
    }

    pub fn unwatch(&mut self, wd: WatchDescriptor) {
        self.watches.remove(&wd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_is_taken_only_as_what_it_was_registered_as() {
        let mut r = Registry::default();
        r.fd(7, Source::Probe { idx: 1, slot: 0 });
        r.fd(8, Source::Adopted { idx: 2, pid: 42 });
        assert!(r.take_exec_pipe(7).is_none(), "a probe is not an exec pipe");
        assert_eq!(r.take_adopted(7), None);
        assert_eq!(r.probe(7), Some((1, 0)), "and it is still there");
        assert_eq!(r.take_adopted(8), Some((2, 42)));
        assert_eq!(r.take_adopted(8), None, "taken once");
        assert!(r.forget_fd(7).is_some());
        assert_eq!(r.probe(7), None);
    }

    #[test]
    fn a_child_is_known_until_reaped() {
        let mut r = Registry::default();
        r.child(10, Role::Hook { idx: 0 });
        assert!(r.is_child(10));
        assert_eq!(r.reaped(10), Some(Role::Hook { idx: 0 }));
        assert!(!r.is_child(10));
        assert_eq!(r.reaped(10), None);
    }
}
