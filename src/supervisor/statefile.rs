//! Writing state files off the event loop. A durable replace (write,
//! fsync, rename, fsync of the directory) costs milliseconds on a real
//! disk (about 10 ms on the test VM); 500 instances starting at once would
//! stall the one loop for seconds, and with it every other instance's
//! answers (guarantee 6). So the loop hands the bytes to one writer thread
//! and goes on; the thread coalesces (the newest state of an instance
//! wins), writes each, fsyncs the directory once per batch, and reports
//! each outcome back, which the loop collects when it next writes or
//! answers (`Daemon::state_errors`). The loop never waits for it, except
//! at exit, when every pending state is written before the daemon ends.
//!
//! The thread is started from the loop, after the daemon blocked its
//! signals: it inherits that mask (pthread_sigmask(3)), so SIGTERM and
//! SIGCHLD keep arriving on the signalfd only.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::rundir::{RuntimeDir, WriteError};

/// A state file's new content.
struct Job {
    name: String,
    bytes: Vec<u8>,
}

/// The outcome of writing one file: its name and the error, if any.
/// (One directory fsync covers a batch: its failure is shared.)
pub(crate) type Outcome = (String, Result<(), std::sync::Arc<WriteError>>);

pub(crate) struct StateWriter {
    jobs: Option<Sender<Job>>,
    outcomes: Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
}

impl StateWriter {
    /// Starts the writer for `dir` (the state/ directory).
    pub fn start(dir: RuntimeDir) -> std::io::Result<StateWriter> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, outcomes) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || write_loop(&dir, &rx, &tx))?;
        Ok(StateWriter {
            jobs: Some(jobs),
            outcomes,
            thread: Some(thread),
        })
    }

    /// Queues `bytes` as the new content of `name`; never blocks.
    pub fn write(&self, name: String, bytes: Vec<u8>) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send(Job { name, bytes }).is_ok())
    }

    /// The outcomes reported since the last call.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.try_iter().collect()
    }

    /// Writes everything pending and stops the thread (at daemon exit).
    pub fn finish(&mut self) -> Vec<Outcome> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.outcomes()
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write_loop(dir: &RuntimeDir, rx: &Receiver<Job>, tx: &Sender<Outcome>) {
    while let Ok(first) = rx.recv() {
        // Everything queued meanwhile, the newest content per file.
        let mut batch = BTreeMap::new();
        batch.insert(first.name, first.bytes);
        for j in rx.try_iter() {
            batch.insert(j.name, j.bytes);
        }
        let mut written = Vec::new();
        for (name, bytes) in batch {
            match dir.replace_file(&name, &bytes) {
                Ok(()) => written.push(name),
                Err(e) => {
                    let _ = tx.send((name, Err(std::sync::Arc::new(e))));
                }
            }
        }
        // One directory fsync makes every rename of the batch durable.
        let synced = dir.sync().map_err(std::sync::Arc::new);
        for name in written {
            let _ = tx.send((name, synced.clone()));
        }
    }
}
