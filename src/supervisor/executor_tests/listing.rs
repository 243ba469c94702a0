//! A long list is made a part at a time as the client takes it: an answer
//! nobody reads holds one part in the daemon, a client gone mid-list ends
//! it, and the exit finishes what can be finished without waiting on a
//! reader that does not read.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::fake::{Rig, rig};
use crate::control::server::{Conn, LINE_PART, MAX_BUSY_PER_USER, Peer};
use crate::supervisor::tok;

const N: usize = 3000;
/// Not root, not the daemon's user: capped as a status-group reader is.
const READER: u32 = 4_000_123;

fn rig_of_many() -> Rig {
    let text: String = (0..N)
        .map(|i| format!("[instance.i{i}]\nservice = \"s\"\n"))
        .collect();
    rig(&text, None)
}

/// A connection of `uid` that has asked for the list, registered with the
/// daemon's epoll as an accepted one is; our end, non-blocking.
fn ask_list(r: &mut Rig, id: u64, uid: u32) -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    let peer = Peer {
        uid,
        gid: uid,
        pid: std::process::id() as i32,
    };
    r.d.fair.admit(uid).unwrap();
    r.d.fair.start(uid).unwrap();
    r.d.register(
        theirs.as_fd(),
        tok::CONN | id,
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
    );
    let mut c = Conn::new(theirs, peer);
    c.phase = crate::control::server::Phase::Busy;
    r.d.conns.insert(id, c);
    r.d.reply_list(id, Duration::MAX);
    ours
}

/// Reads what is there; true at end of file.
fn read_some(c: &mut UnixStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
}

/// The answer the daemon's statuses give as one serde text.
fn expected(r: &Rig) -> Vec<u8> {
    let views: Vec<_> = (0..N).map(|i| r.d.status_view(i, false, None)).collect();
    let mut line = Conn::done_line(0, 0);
    serde_json::to_writer(&mut line, &views).unwrap();
    line.extend_from_slice(b"}\n");
    line
}

#[test]
fn an_unread_list_holds_one_part_and_the_rest_is_made_as_it_is_read() {
    let mut r = rig_of_many();
    let want = expected(&r);
    assert!(
        want.len() > 8 * LINE_PART,
        "{} bytes: too few parts",
        want.len()
    );
    let mut ours = ask_list(&mut r, 9001, READER);
    r.turns(3);
    let held = r.d.conns[&9001].queued();
    assert!(
        r.d.listings.contains_key(&9001) && held <= 2 * LINE_PART,
        "an unread list of {} bytes holds {held} in the daemon",
        want.len()
    );
    // Still busy: the user's in-flight requests count it until its end.
    for _ in 1..MAX_BUSY_PER_USER {
        r.d.fair.start(READER).unwrap();
    }
    assert!(r.d.fair.start(READER).is_err(), "the list is in flight");
    for _ in 1..MAX_BUSY_PER_USER {
        r.d.fair.done(READER);
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_some(&mut ours, &mut got) {
        assert!(Instant::now() < deadline, "the list never ended");
        r.turns(1);
    }
    assert!(got == want, "the list in parts differs from serde's text");
    assert!(r.d.listings.is_empty() && !r.d.conns.contains_key(&9001));
    for _ in 0..MAX_BUSY_PER_USER {
        r.d.fair
            .start(READER)
            .expect("the list's end gave its slot back");
    }
}

#[test]
fn a_client_gone_mid_list_ends_it_and_gives_its_slot_back() {
    let mut r = rig_of_many();
    let mut ours = ask_list(&mut r, 9002, READER);
    let mut got = Vec::new();
    read_some(&mut ours, &mut got);
    r.turns(1);
    assert!(!got.is_empty() && r.d.listings.contains_key(&9002));
    drop(ours);
    r.until("the list dropped", |r| {
        r.d.listings.is_empty() && r.d.conns.is_empty()
    });
    for _ in 0..MAX_BUSY_PER_USER {
        r.d.fair
            .start(READER)
            .expect("the closed list gave its slot back");
    }
    // The daemon serves on.
    let mut next = ask_list(&mut r, 9003, 0);
    let mut got = Vec::new();
    r.until("the next list", |_| read_some(&mut next, &mut got));
    assert!(got == expected(&r));
}

#[test]
fn at_exit_a_reading_client_gets_its_whole_list_and_unread_ones_cost_one_wait() {
    let mut r = rig_of_many();
    let stalled: Vec<UnixStream> = (0..8)
        .map(|i| ask_list(&mut r, 9100 + i, READER + i as u32))
        .collect();
    let mut reader = ask_list(&mut r, 9200, 0);
    let want = expected(&r);
    let t = std::thread::spawn(move || {
        reader.set_nonblocking(false).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        got
    });
    let t0 = Instant::now();
    r.d.flush_conns_at_exit();
    let took = t0.elapsed();
    assert!(t.join().unwrap() == want, "the reader's list is whole");
    // One shared second for the eight, not one each (a generous bound:
    // only that it is not eight).
    assert!(took < Duration::from_secs(5), "the exit waited {took:?}");
    assert!(r.d.conns.keys().all(|id| (9100..9108).contains(id)));
    drop(stalled);
}
