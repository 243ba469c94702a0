//! What `status` and `list` answer: one instance's status, built from
//! memory (the free space of its log file system is asked for on a worker
//! and shown from the last answer).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::fsm::State;
use super::instance::Inst;
use super::{Daemon, Outcome};
use crate::control::exit::Exit;
use crate::control::observe::Usage;
use crate::control::server::{Conn, LINE_PART, Phase};
use crate::isolation::usage::Baseline;

/// One instance's part of a worker's read of every instance's usage.
pub struct UsageRead {
    idx: usize,
    v2: PathBuf,
    v1: Vec<PathBuf>,
    base: Baseline,
    /// When the instance entered the state it was in when asked: a state
    /// change since (a stop, a new run in a cgroup of the same name) makes
    /// the figures another run's.
    since: std::time::SystemTime,
    /// The figures, and when the worker had read them (a read of 10,000
    /// takes half a second or more: dated by when it was asked for, the
    /// figures were old on arrival and every list waited for a new read).
    usage: Option<(Instant, Usage)>,
}

/// A list being written on a connection (see [`Daemon::go_on_listing`]).
pub struct Listing {
    /// The next instance to write.
    pub(super) next: usize,
    /// The part being made.
    part: Vec<u8>,
}

/// Has figures to read: something of it may run, in a cgroup of its own.
fn wants_usage(i: &Inst) -> bool {
    i.state().may_have_processes() && i.cgroup.is_some()
}

impl Daemon {
    /// `status ID`: exits 0 while running, 3 otherwise.
    pub(super) fn reply_status(&mut self, conn: u64, idx: usize) {
        self.refresh_log_space(idx);
        let usage = self.usage_of(idx, std::time::Duration::ZERO);
        let exit = if self.insts[idx].state() == State::Running {
            Exit::Ok
        } else {
            Exit::NotRunning
        };
        let mut line = Conn::done_line(exit.code(), 1024);
        line.push(b'[');
        self.push_status(&mut line, idx, false, true, usage);
        line.push(b']');
        self.reply_done_line(conn, line);
    }

    /// `status` and `list`: every instance, without its members, with
    /// usage figures read less than `max_age` ago. When some are older,
    /// the answer waits for a worker to read every running instance's
    /// (five cgroup files each: one second for 10,000, which the loop
    /// would otherwise spend away from every other request and child).
    pub(super) fn reply_list(&mut self, conn: u64, max_age: Duration) {
        let now = Instant::now();
        let stale = self
            .insts
            .iter()
            .any(|i| wants_usage(i) && i.obs.usage_age(now).is_none_or(|age| age >= max_age));
        if !stale {
            return self.reply_list_now(conn);
        }
        self.list_waiters.push((conn, now, max_age));
        self.want_usage_read();
    }

    /// A read of every instance's usage is wanted: now, unless the last
    /// one ended less than its own duration ago, then once that gap is
    /// over. A reader sending `status` back to back (each wants figures
    /// read after it came) keeps a worker reading half the time at most,
    /// not all of it (at 10,000 instances: a CPU).
    pub(super) fn want_usage_read(&mut self) {
        if self.usage_read.is_some() || self.usage_scheduled {
            return;
        }
        match self.usage_rest_until {
            Some(at) if at > self.host.now() => {
                self.timers.add(at, super::timers::Key::UsageRead);
                self.usage_scheduled = true;
            }
            _ => self.read_all_usage(Instant::now()),
        }
    }

    /// Submits the read of every running instance's usage to a worker.
    fn read_all_usage(&mut self, now: Instant) {
        let subtree = self.cgroot.as_ref().ok().map(|r| r.base.clone());
        let todo: Vec<UsageRead> = self
            .insts
            .iter()
            .enumerate()
            .filter(|(_, i)| wants_usage(i))
            .filter_map(|(idx, i)| {
                let cg = i.cgroup.as_ref()?;
                Some(UsageRead {
                    idx,
                    v2: cg.dir(),
                    v1: cg.v1_dirs(),
                    base: i.obs.base,
                    since: i.since_wall,
                    usage: None,
                })
            })
            .collect();
        let (job, _) = self.worker.submit(move |_| {
            if let Some(dir) = &subtree {
                crate::isolation::usage::flush_subtree(dir);
            }
            let read = todo
                .into_iter()
                .map(|mut r| {
                    let dirs = crate::isolation::usage::Dirs {
                        v2: &r.v2,
                        v1: &r.v1,
                    };
                    let u = dirs.usage(&r.base);
                    r.usage = Some((Instant::now(), u));
                    r
                })
                .collect();
            Outcome::Usage { read }
        });
        self.usage_read = Some((job, now));
    }

    /// The worker's read is back: kept for the instances still in the run
    /// it was read for, each dated by when it was read; the requests it is
    /// recent enough for are answered (asked no more than their `max_age`
    /// before they arrived), the others wait for the next read.
    pub(super) fn on_usage_read(&mut self, job: u64, read: Vec<UsageRead>) {
        let Some((_, at)) = self.usage_read.take_if(|(j, _)| *j == job) else {
            return;
        };
        self.usage_rest_until = Some(self.host.now() + at.elapsed());
        for r in read {
            let Some(inst) = self.insts.get_mut(r.idx) else {
                continue;
            };
            let same_run = wants_usage(inst)
                && inst.since_wall == r.since
                && inst.obs.base == r.base
                && inst.cgroup.as_ref().is_some_and(|c| c.dir() == r.v2);
            if let (true, Some((read_at, u))) = (same_run, r.usage) {
                inst.obs.keep_usage(read_at, u);
            }
        }
        let (answer, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.list_waiters)
            .into_iter()
            .partition(|(_, since, max_age)| since.saturating_duration_since(at) <= *max_age);
        for (conn, _, _) in answer {
            self.reply_list_now(conn);
        }
        if !later.is_empty() {
            self.list_waiters = later;
            self.want_usage_read();
        }
    }

    /// The list, from the figures kept (an instance started since the
    /// last read is read here, alone). It is written as it is made, a
    /// part at a time, so the client indents one while the next is made.
    fn reply_list_now(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.phase == Phase::Busy {
            c.phase = Phase::Answering;
            self.fair.done(c.peer.uid);
        }
        let mut part = Conn::done_line(Exit::Ok.code(), LINE_PART + 4096);
        part.push(b'[');
        self.listings.insert(conn, Listing { next: 0, part });
        self.go_on_listing(conn);
    }

    /// Makes and writes the next part of `conn`'s list; the one after it
    /// at the end of a turn in which the loop found the socket writable
    /// with all of this one taken ([`Self::on_conn`]; the connection is
    /// registered for that as long as its list is not done). So an answer
    /// nobody reads holds a part, not 7.5 MB, and every other request of a
    /// turn is answered before its lists' parts are made (a part of 32 KiB
    /// is some 45 statuses), not after whole lists. Each instance is as it
    /// is when its part is made (the instances are only ever appended to:
    /// the cursor is an index).
    pub(super) fn go_on_listing(&mut self, conn: u64) {
        let Some(l) = self.listings.get_mut(&conn) else {
            return;
        };
        let (mut next, mut part) = (l.next, std::mem::take(&mut l.part));
        while next < self.insts.len() && part.len() < LINE_PART {
            let usage = self.usage_of(next, Duration::MAX);
            self.push_status(&mut part, next, next > 0, false, usage);
            next += 1;
        }
        if next >= self.insts.len() {
            self.listings.remove(&conn);
            part.push(b']');
            self.reply_done_line(conn, part);
            // Made at the end of a turn, after its replies were written.
            return self.flush_conn(conn);
        }
        if let Some(l) = self.listings.get_mut(&conn) {
            l.next = next;
        }
        self.reply_part(conn, &mut part);
        // The connection may be gone (a failed write closes it).
        if let Some(l) = self.listings.get_mut(&conn) {
            l.part = part;
        }
    }

    /// Appends one instance's status to a JSON array begun before `buf`
    /// (after a `comma` unless it is the first), in the status's own order
    /// of fields (a Value would sort them).
    fn push_status(
        &self,
        buf: &mut Vec<u8>,
        idx: usize,
        comma: bool,
        detail: bool,
        usage: Option<Usage>,
    ) {
        if comma {
            buf.push(b',');
        }
        self.status_view(idx, detail, usage).write_json(buf);
    }

    /// The log file system's free space, asked for on the worker (the log
    /// directory is often on the instance's storage: a statfs there hangs
    /// with it). A status shows the last answer; it asks again when that
    /// is over a second old and no question is out. Nothing asks unless a
    /// status is requested.
    fn refresh_log_space(&mut self, idx: usize) {
        let ls = &self.insts[idx].log_space;
        let fresh = ls.asked.is_some_and(|t| {
            self.host.now().saturating_duration_since(t) < std::time::Duration::from_secs(1)
        });
        if ls.job.is_some() || fresh || self.insts[idx].state() != State::Running {
            return;
        }
        let dir = self.log_dir(idx);
        let (job, _) = self.worker.submit(move |p| {
            p.set(format!("free space in {}", dir.display()));
            super::Outcome::LogSpace {
                idx,
                warning: log_space_warning(&dir),
            }
        });
        let ls = &mut self.insts[idx].log_space;
        ls.job = Some(job);
        ls.asked = Some(self.host.now());
    }

    pub(super) fn on_log_space(&mut self, idx: usize, job: u64, warning: Option<String>) {
        let ls = &mut self.insts[idx].log_space;
        if ls.job == Some(job) {
            ls.job = None;
            ls.warning = warning;
        }
    }
}

/// "log filesystem full" when the log directory has no space left.
fn log_space_warning(dir: &std::path::Path) -> Option<String> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    if st.blocks_available() == 0 {
        Some(format!(
            "no space left for logs in {}: output is being lost until space returns",
            dir.display()
        ))
    } else {
        None
    }
}
