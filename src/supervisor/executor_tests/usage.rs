//! `status` and `list` while usage figures are read on a worker: the loop
//! never reads 10,000 instances' cgroup files itself.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::fake::{Rig, rig_with_cgroups};
use crate::supervisor::fsm::State;

/// What the daemon has sent on it so far.
fn answer(c: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    String::from_utf8(got).unwrap()
}

/// The worker's read of every instance's usage, taken by hand (it is not
/// delivered to the daemon until the test says so). Nothing else but a
/// file closing may be out on the worker then: it would be lost.
fn take_read(r: &mut Rig) -> (u64, Vec<crate::supervisor::status::UsageRead>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "the read never came");
        let mut got = None;
        for (j, o) in r.d.worker.take() {
            match o {
                crate::supervisor::Outcome::Usage { read } => got = Some((j, read)),
                // Files closed off the loop: done once the job ran.
                crate::supervisor::Outcome::Released => {}
                _ => panic!("job {j}: only the usage read was to be out"),
            }
        }
        if let Some(g) = got {
            return g;
        }
        std::thread::yield_now();
    }
}

/// The read out, and the one request waiting for it, moved `by` into the
/// past in the loop's view: as if the read had taken that long.
fn asked_earlier(r: &mut Rig, by: Duration) {
    let (job, asked) = r.d.usage_read.expect("a read is out");
    assert_eq!(r.d.list_waiters.len(), 1, "one request waits for it");
    r.d.usage_read = Some((job, asked - by));
    r.d.list_waiters[0].1 -= by;
}

#[test]
fn while_a_read_is_out_the_others_start_and_answer_and_a_gone_client_is_skipped() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n[instance.b]\nservice = \"s\"\n");
    r.start("a");
    let gone = r.client(5001, 0);
    let mut stays = r.client(5002, 0);
    r.d.reply_list(5001, Duration::ZERO);
    // Recent enough for this one: it shares the read out.
    r.d.reply_list(5002, Duration::from_secs(3600));
    let (job, read) = take_read(&mut r);
    // Meanwhile the loop serves on: another instance starts, a status
    // of the one being read is answered.
    r.start("b");
    let mut status = r.client(5003, 0);
    let a = r.idx("a");
    r.d.reply_status(5003, a);
    r.turns(1);
    let st = answer(&mut status);
    assert!(
        st.contains("\"t\":\"done\"") && st.contains("\"a\""),
        "{st}"
    );
    assert_eq!(answer(&mut stays), "", "the list waits for its read");
    // A client that gave up while waiting is skipped, not an error.
    drop(gone);
    r.d.on_usage_read(job, read);
    r.turns(1);
    let list = answer(&mut stays);
    assert!(
        list.contains("\"id\":\"a\"") && list.contains("\"id\":\"b\""),
        "both listed: {list}"
    );
    assert!(r.d.list_waiters.is_empty() && r.d.usage_read.is_none());
    assert_eq!(r.state("b"), State::Running);
}

#[test]
fn a_status_waits_for_one_worker_read_and_a_later_one_for_the_next() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n[instance.b]\nservice = \"s\"\n");
    r.start("a");
    r.start("b");
    let mut first = r.client(1001, 0);
    let mut second = r.client(1002, 0);

    r.d.reply_list(1001, Duration::ZERO);
    let (job, _) = r.d.usage_read.expect("the read is on a worker");
    r.turns(0);
    assert_eq!(answer(&mut first), "", "no answer before the read is back");
    // Arrives while that read is in flight: it wants figures read after it
    // came, so it waits for a second read rather than taking the first.
    r.d.reply_list(1002, Duration::ZERO);
    assert_eq!(
        r.d.usage_read.map(|(j, _)| j),
        Some(job),
        "no second read yet"
    );
    assert_eq!(r.d.list_waiters.len(), 2);

    r.until("the first read back", |r| r.d.list_waiters.len() < 2);
    // A second read for the second: out, or set for the end of the gap.
    let next = r.d.usage_read.map(|(j, _)| j);
    assert!(
        next.is_some_and(|j| j != job) || (next.is_none() && r.d.usage_scheduled),
        "a second read for the second"
    );
    // (Each turn ends by writing what it answered.)
    let a1 = answer(&mut first);
    assert!(
        a1.contains("\"t\":\"done\"") && a1.contains("\"a\""),
        "{a1}"
    );
    assert!(a1.contains("\"usage\""), "with figures: {a1}");
    assert_eq!(answer(&mut second), "", "the second waits for its read");

    r.until("the second read back", |r| r.d.list_waiters.is_empty());
    r.turns(1);
    let a2 = answer(&mut second);
    assert!(
        a2.contains("\"t\":\"done\"") && a2.contains("\"b\""),
        "{a2}"
    );
    assert!(r.d.list_waiters.is_empty());
}

#[test]
fn a_list_within_a_second_of_the_last_read_is_answered_at_once() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let mut c = r.client(2001, 0);
    r.d.reply_list(2001, Duration::from_secs(3600));
    r.until("the read back", |r| r.d.usage_read.is_none());
    r.turns(1);
    assert!(answer(&mut c).contains("\"t\":\"done\""));

    let mut again = r.client(2002, 0);
    r.d.reply_list(2002, Duration::from_secs(3600));
    assert!(r.d.usage_read.is_none(), "no read: the figures are recent");
    r.turns(1);
    assert!(answer(&mut again).contains("\"t\":\"done\""));
    // `status` wants figures read now: it never takes the kept ones.
    let mut status = r.client(2003, 0);
    r.d.reply_list(2003, Duration::ZERO);
    assert!(r.d.usage_read.is_some(), "status reads anew");
    r.until("that read back", |r| r.d.usage_read.is_none());
    r.turns(1);
    assert!(answer(&mut status).contains("\"t\":\"done\""));
}

#[test]
fn with_nothing_running_a_list_is_answered_without_a_read() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    let mut c = r.client(3001, 0);
    r.d.reply_list(3001, Duration::ZERO);
    assert!(r.d.usage_read.is_none(), "nothing to read");
    r.turns(1);
    assert!(answer(&mut c).contains("\"stopped\""));
}

#[test]
fn figures_read_before_a_state_change_are_not_shown_for_the_new_state() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let idx = r.idx("a");
    let dir = r.d.insts[idx].cgroup.as_ref().unwrap().dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("memory.current"), "111\n").unwrap();
    let mut c = r.client(4001, 0);
    r.d.reply_list(4001, Duration::ZERO);
    // The worker's read, taken by hand so that what happens between the
    // read and its arrival is the test's to say.
    let (job, read) = take_read(&mut r);
    // Meanwhile the instance moved on (as a stop and a new run in a
    // cgroup of the same name would), and its cgroup counts anew.
    r.d.insts[idx].since_wall = std::time::SystemTime::now();
    std::fs::write(dir.join("memory.current"), "222\n").unwrap();
    r.d.on_usage_read(job, read);
    r.turns(1);
    let a = answer(&mut c);
    assert!(a.contains("\"memory_bytes\":222"), "the new figures: {a}");
}

#[test]
fn figures_are_dated_by_when_they_were_read_not_by_when_the_read_was_asked() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let mut first = r.client(6001, 0);
    r.d.reply_list(6001, crate::supervisor::timing::USAGE_MAX_AGE);
    let (job, read) = take_read(&mut r);
    // As if that read had taken two seconds (10,000 instances on a busy
    // node): asked for two seconds ago, its figures read just now.
    asked_earlier(&mut r, Duration::from_secs(2));
    r.d.on_usage_read(job, read);
    r.turns(1);
    assert!(answer(&mut first).contains("\"t\":\"done\""));
    // A list right after it takes those figures: they are fresh. Dated by
    // the ask, they were two seconds old on arrival and every list waited.
    let mut next = r.client(6002, 0);
    r.d.reply_list(6002, crate::supervisor::timing::USAGE_MAX_AGE);
    assert!(
        r.d.usage_read.is_none(),
        "no second read for figures just read"
    );
    r.turns(1);
    assert!(answer(&mut next).contains("\"t\":\"done\""));
}

#[test]
fn back_to_back_status_reads_leave_a_gap_as_long_as_the_read() {
    let mut r = rig_with_cgroups("[instance.a]\nservice = \"s\"\n");
    r.start("a");
    let mut first = r.client(7001, 0);
    r.d.reply_list(7001, Duration::ZERO);
    let (job, read) = take_read(&mut r);
    // As if that read had taken an hour (only the loop's view of it).
    asked_earlier(&mut r, Duration::from_secs(3600));
    let mut second = r.client(7002, 0);
    r.d.reply_list(7002, Duration::ZERO);
    r.d.on_usage_read(job, read);
    r.turns(1);
    assert!(answer(&mut first).contains("\"t\":\"done\""));
    // The second wants figures read after it came: not at once, but once
    // the worker has rested as long as it read.
    assert!(r.d.usage_read.is_none() && r.d.usage_scheduled);
    let mut third = r.client(7003, 0);
    r.d.reply_list(7003, Duration::ZERO);
    assert!(r.d.usage_read.is_none(), "a third waits with it");
    r.turns(2);
    assert!(r.d.usage_read.is_none(), "still resting");
    assert_eq!(answer(&mut second), "");
    r.advance(Duration::from_secs(3601));
    r.until("the next read out", |r| r.d.usage_read.is_some());
    r.until("both answered", |r| r.d.list_waiters.is_empty());
    r.turns(1);
    assert!(answer(&mut second).contains("\"t\":\"done\""));
    assert!(answer(&mut third).contains("\"t\":\"done\""));
}
