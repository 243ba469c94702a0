//! A long list is made a part at a time as the client takes it: an answer
//! nobody reads holds one part in the daemon, a client gone mid-list ends
//! it, and the exit finishes what can be finished without waiting on a
//! reader that does not read.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::fake::{Rig, rig};
use crate::control::server::{Conn, LINE_PART, MAX_BUSY_PER_USER};
use crate::supervisor::conn::EXIT_FLUSH;
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
    let ours = r.client(id, uid);
    r.d.fair.admit(uid).unwrap();
    r.d.fair.start(uid).unwrap();
    let mut c = r.d.conns.remove(&id).unwrap();
    c.phase = crate::control::server::Phase::Busy;
    r.d.register(
        c.fd(),
        tok::CONN | id,
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
    );
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
    // Being written, it is no longer a request in flight: the user's
    // other requests are not refused for it.
    for _ in 0..MAX_BUSY_PER_USER {
        r.d.fair.start(READER).expect("the list is not in flight");
    }
    for _ in 0..MAX_BUSY_PER_USER {
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

/// Reads `c` to its end on a thread, 16 KiB at a time with a `pause`
/// after each (a slow reader): what came, and when the first of it did.
fn read_all(c: UnixStream, pause: Duration) -> std::thread::JoinHandle<(Vec<u8>, Option<Instant>)> {
    std::thread::spawn(move || {
        let mut c = c;
        c.set_nonblocking(false).unwrap();
        let (mut got, mut first) = (Vec::new(), None);
        let mut buf = [0u8; 16384];
        while let Ok(n @ 1..) = c.read(&mut buf) {
            first.get_or_insert_with(Instant::now);
            got.extend_from_slice(&buf[..n]);
            std::thread::sleep(pause);
        }
        (got, first)
    })
}

#[test]
fn at_exit_the_shutdown_is_answered_first_and_unread_lists_cost_a_second_a_side() {
    let mut r = rig_of_many();
    let want = expected(&r);
    // Root's: six lists nobody reads, then the `cohost shutdown` waiting
    // for its answer (the newest connection).
    let root_stalled: Vec<UnixStream> = (0..6).map(|i| ask_list(&mut r, 9100 + i, 0)).collect();
    let caller = r.client(9150, 0);
    r.d.reply_done(9150, crate::control::exit::Exit::Ok, "stopped", None);
    let caller = read_all(caller, Duration::ZERO);
    // The status group's: eight lists nobody reads, and one read slowly
    // (1.4 MB in 16 KiB reads, a millisecond apart: a tenth of a second).
    let stalled: Vec<UnixStream> = (0..8).map(|i| ask_list(&mut r, 9200 + i, READER)).collect();
    let reader = read_all(ask_list(&mut r, 9300, READER + 1), Duration::from_millis(1));
    let t0 = Instant::now();
    r.d.flush_conns_at_exit();
    let took = t0.elapsed();
    // The daemon exits: every socket it holds closes.
    r.d.conns.clear();
    let (answer, at) = caller.join().unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("stopped"));
    let first = at.unwrap() - t0;
    assert!(
        first < EXIT_FLUSH,
        "the shutdown was answered after {first:?}"
    );
    // Root's stalled lists took their second, not the others'.
    assert!(
        reader.join().unwrap().0 == want,
        "the reading client's list is whole"
    );
    // A second for root's six, one for the others: not one each (a
    // generous bound, only that it is not six or fourteen).
    assert!(took < Duration::from_secs(5), "the exit waited {took:?}");
    drop((root_stalled, stalled));
}

#[test]
fn a_list_is_made_a_part_a_turn_and_other_requests_are_answered_between_parts() {
    let mut r = rig_of_many();
    let want = expected(&r);
    let reader = ask_list(&mut r, 9301, 0);
    let t = std::thread::spawn(move || {
        let mut reader = reader;
        reader.set_nonblocking(false).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        got
    });
    let first = r.d.listings[&9301].next;
    assert!(
        first > 0 && first < N / 4,
        "one part made at once: {first} statuses"
    );
    // A status asked now is answered in the next turn, the list still
    // being made (its reader takes everything as it comes).
    let mut other = r.client(9302, 0);
    let idx = r.idx("i7");
    r.d.reply_status(9302, idx);
    r.turns(1);
    let mut got = Vec::new();
    read_some(&mut other, &mut got);
    assert!(
        got.starts_with(b"{\"t\":\"done\",\"code\":3,"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let at = r.d.listings.get(&9301).map(|l| l.next);
    assert!(
        at.is_some_and(|n| n < N),
        "the list goes on after it: {at:?}"
    );
    r.until("the list's end", |r| r.d.listings.is_empty());
    r.turns(1);
    assert!(t.join().unwrap() == want);
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_whole_list() {
    let mut r = rig_of_many();
    let want = expected(&r);
    let mut ours = ask_list(&mut r, 9401, 0);
    // As `socat` does at the end of its input: no more to send, reading on.
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    r.until("the list read to its end", |_| {
        read_some(&mut ours, &mut got)
    });
    assert!(got == want, "{} of {} bytes", got.len(), want.len());
}

#[test]
fn a_request_sent_with_the_connect_is_answered_in_the_turn_it_is_accepted() {
    let mut r = super::fake::rig("[instance.a]\nservice = \"s\"\n", None);
    let sock = r
        .dir
        .path()
        .join("run")
        .join(crate::control::client::SOCKET_NAME);
    let mut c = UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut c, b"{\"op\":\"ping\"}\n").unwrap();
    c.set_nonblocking(true).unwrap();
    // One turn: accepted, read, answered and written (it took two: the
    // request was read only when its own readiness came up in the next).
    r.turns(1);
    let mut got = Vec::new();
    read_some(&mut c, &mut got);
    assert!(
        got.starts_with(b"{\"t\":\"done\",\"code\":0"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}
