//! Work that may block, kept off the event loop (guarantee 6: a fault
//! stays in its instance).
//!
//! A call on an instance's shared storage (stat, open, a lock, even the
//! close of a file there, which waits for the flush) or on the name
//! service can block for as long as the SAN path or the LDAP server is
//! gone: on a FUSE or hard NFS mount the caller sleeps uninterruptibly
//! (D state) and no signal frees it. On the one loop that would freeze
//! every instance's `monitor`. Such work runs here instead, on a pool of
//! threads that grows when every thread is busy (a hung job holds its
//! thread until the storage answers, and must not hold up anyone else's
//! job). A finished job's outcome is queued and the loop is woken through
//! an eventfd in its epoll set; the loop bounds each wait with the
//! instance's own deadline, and a job that outlives it is discarded when
//! it returns (its files are closed here, again off the loop).
//!
//! Each job reports the step it is in ([`Progress`]), so that a timeout
//! can say what did not answer: "paths.data /u01/x did not answer within
//! 10s".

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

/// Identifies a submitted job in its outcome.
pub type JobId = u64;

/// The step a job is in, for the message when it does not finish in time.
#[derive(Debug, Default)]
pub struct Progress(Mutex<String>);

impl Progress {
    pub fn set(&self, step: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = step.into();
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

type Task<T> = (JobId, Arc<Progress>, Box<dyn FnOnce(&Progress) -> T + Send>);

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    wake: Condvar,
    done: Mutex<Vec<(JobId, T)>>,
    /// The eventfd the loop waits on; owned by `Worker`, which outlives
    /// every write (threads hold an `Arc` to a duplicate).
    efd: OwnedFd,
}

struct Queue<T> {
    tasks: VecDeque<Task<T>>,
    /// Threads waiting for a task.
    idle: usize,
    threads: usize,
}

/// The pool, with `T` the outcome type of its jobs.
pub struct Worker<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    next: JobId,
}

/// Stack of a worker thread: look-ups and file calls, no deep recursion
/// (NSS modules included: glibc's own threads use 8 MiB but touch little).
const STACK: usize = 512 * 1024;

impl<T: Send + 'static> Worker<T> {
    pub fn new() -> std::io::Result<Worker<T>> {
        // SAFETY: eventfd(2) with flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Worker {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    tasks: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                }),
                wake: Condvar::new(),
                done: Mutex::new(Vec::new()),
                efd,
            }),
            next: 1,
        })
    }

    /// The fd to put in the epoll set: readable when outcomes wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.efd.as_fd()
    }

    /// Runs `job` on a pool thread; its outcome comes back from [`Self::take`].
    pub fn submit(
        &mut self,
        job: impl FnOnce(&Progress) -> T + Send + 'static,
    ) -> (JobId, Arc<Progress>) {
        let id = self.next;
        self.next += 1;
        let progress = Arc::new(Progress::default());
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.tasks.push_back((id, progress.clone(), Box::new(job)));
        // Every waiting thread takes one task: spawn when there are more
        // tasks than waiting threads (the busy ones may be hung).
        if q.idle >= q.tasks.len() {
            self.shared.wake.notify_one();
        } else {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("cohost-worker".into())
                .stack_size(STACK)
                .spawn(move || run(shared));
            match spawned {
                Ok(_) => q.threads += 1,
                Err(e) => {
                    // The task stays queued for a thread that frees up.
                    tracing::error!("starting a worker thread: {e}");
                    self.shared.wake.notify_one();
                }
            }
        }
        (id, progress)
    }

    /// Outcomes of finished jobs; call when [`Self::fd`] is readable.
    pub fn take(&self) -> Vec<(JobId, T)> {
        let mut n = [0u8; 8];
        // SAFETY: read(2) of the 8-byte counter into a buffer of 8.
        let _ = unsafe { libc::read(self.shared.efd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many threads wait for work.
    pub fn idle(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle
    }

    /// How many threads exist (a hung job holds one each).
    pub fn threads(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .threads
    }
}

fn run<T: Send + 'static>(shared: Arc<Shared<T>>) {
    loop {
        let (id, progress, job) = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(t) = q.tasks.pop_front() {
                    break t;
                }
                q.idle += 1;
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                q.idle -= 1;
            }
        };
        let out = job(&progress);
        shared
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, out));
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes to the eventfd, which `Shared` owns.
        let _ = unsafe {
            libc::write(
                shared.efd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn wait_readable(fd: BorrowedFd<'_>) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd; bounded so a bug cannot hang.
        let n = unsafe { libc::poll(&mut pfd, 1, 60_000) };
        assert_eq!(n, 1, "the eventfd became readable");
    }

    #[test]
    fn a_hung_job_does_not_hold_up_the_next() {
        let mut w: Worker<&'static str> = Worker::new().unwrap();
        let (release, hung) = mpsc::channel::<()>();
        let (a, pa) = w.submit(move |p| {
            p.set("paths.data /hung");
            let _ = hung.recv();
            "late"
        });
        let (b, _) = w.submit(|_| "quick");
        wait_readable(w.fd());
        let mut got = w.take();
        while got.is_empty() {
            wait_readable(w.fd());
            got = w.take();
        }
        assert_eq!(got, vec![(b, "quick")], "the second job finished first");
        // The hung job runs on a thread of its own, which may not have
        // reached its first line yet when the quick one is done.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pa.get() != "paths.data /hung" && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(pa.get(), "paths.data /hung", "the step is visible");
        assert_eq!(w.threads(), 2, "a thread for the hung one, one more");
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut late = Vec::new();
        while late.is_empty() && std::time::Instant::now() < deadline {
            wait_readable(w.fd());
            late = w.take();
        }
        assert_eq!(late, vec![(a, "late")]);
    }

    #[test]
    fn idle_threads_are_reused() {
        let mut w: Worker<u32> = Worker::new().unwrap();
        for i in 0..20 {
            let (id, _) = w.submit(move |_| i);
            let mut got = Vec::new();
            while got.is_empty() {
                wait_readable(w.fd());
                got = w.take();
            }
            assert_eq!(got, vec![(id, i)]);
            // The thread goes back to wait after handing its outcome over:
            // the next job is for it (bounded, so a bug cannot hang here).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while w.idle() == 0 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        assert_eq!(w.threads(), 1, "one thread for 20 jobs, one at a time");
    }
}
