//! The life-cycle table through its stories: start, stop, restart,
//! escalation, adoption (see `fsm.rs`; every pair is in `fsm_pairs_tests.rs`).

use super::*;
use crate::model::{RestartPolicy, RestartSpec, ServiceKind};
use std::time::{Duration, Instant};

pub(super) fn policy() -> Policy {
    Policy {
        kind: ServiceKind::Simple,
        restart: RestartSpec {
            policy: RestartPolicy::No,
            max: 2,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        },
        start_timeout: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(5),
        stop_signal: libc::SIGTERM,
        has_stop_command: false,
        has_ready_check: true,
        gate_address: false,
        owns_address: false,
        audit: false,
        address: None,
    }
}

/// Runs `events` from Stopped; returns the state after each.
fn run(p: &Policy, events: Vec<Event>) -> (Fsm, Vec<State>) {
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    let mut seen = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        f.step(e, t0 + Duration::from_secs(i as u64), p);
        seen.push(f.state());
    }
    (f, seen)
}

#[test]
fn start_ready_stop() {
    let (_, s) = run(
        &policy(),
        vec![
            Event::Start { timeout: None },
            Event::Launched,
            Event::Ready,
            Event::Stop { timeout: None },
            Event::Empty,
        ],
    );
    use State::*;
    assert_eq!(s, vec![Starting, Starting, Running, Stopping, Stopped]);
}

#[test]
fn table_of_meaningless_pairs_is_noop() {
    let p = policy();
    let t0 = Instant::now();
    for ev in [
        Event::Ready,
        Event::Empty,
        Event::Launched,
        Event::Timeout { stalled: None },
        Event::AddressReady,
    ] {
        let mut f = Fsm::new(t0);
        assert!(f.step(ev.clone(), t0, &p).is_empty(), "{ev:?} in stopped");
        assert_eq!(f.state(), State::Stopped);
    }
}

#[test]
fn address_gate_then_timeout_fails_and_kills() {
    let mut p = policy();
    p.gate_address = true;
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    let a = f.step(Event::Start { timeout: None }, t0, &p);
    assert!(a.contains(&Action::WaitAddress));
    assert_eq!(f.state(), State::WaitingAddress);
    let a = f.step(
        Event::Timeout { stalled: None },
        t0 + Duration::from_secs(10),
        &p,
    );
    assert!(
        a.contains(&Action::KillAll),
        "failed start leaves nothing behind"
    );
    assert_eq!(f.state(), State::Stopping);
    f.step(Event::Empty, t0 + Duration::from_secs(10), &p);
    assert_eq!(f.state(), State::Failed);
    assert!(
        f.last_failure
            .as_deref()
            .unwrap()
            .contains("address is not configured")
    );
}

#[test]
fn crash_without_policy_is_failed_and_kept() {
    let (f, s) = run(
        &policy(),
        vec![
            Event::Start { timeout: None },
            Event::Launched,
            Event::Ready,
            Event::ProcessExited {
                name: "counter".into(),
                status: "exited with status 3".into(),
                clean: false,
            },
        ],
    );
    assert_eq!(*s.last().unwrap(), State::Failed);
    assert_eq!(
        f.last_failure.as_deref(),
        Some("counter exited with status 3")
    );
}

#[test]
fn restarts_back_off_then_fail_at_max() {
    let mut p = policy();
    p.restart.policy = RestartPolicy::OnFailure;
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    let crash = || Event::ProcessExited {
        name: "c".into(),
        status: "killed by signal 9".into(),
        clean: false,
    };
    f.step(Event::Start { timeout: None }, t0, &p);
    f.step(Event::Launched, t0, &p);
    f.step(Event::Ready, t0, &p);
    let mut delays = Vec::new();
    for round in 0..2 {
        let now = t0 + Duration::from_secs(round * 10 + 1);
        f.step(crash(), now, &p);
        assert_eq!(f.state(), State::Stopping);
        let a = f.step(Event::Empty, now, &p);
        assert_eq!(f.state(), State::Restarting);
        let d = a.iter().find_map(|x| match x {
            Action::Deadline(Some(at)) => Some(*at - now),
            _ => None,
        });
        delays.push(d.unwrap());
        f.step(Event::Timeout { stalled: None }, now, &p);
        assert_eq!(f.state(), State::Starting);
        f.step(Event::Launched, now, &p);
        f.step(Event::Ready, now, &p);
    }
    assert_eq!(delays, vec![Duration::from_secs(1), Duration::from_secs(2)]);
    f.step(crash(), t0 + Duration::from_secs(30), &p);
    assert_eq!(
        f.state(),
        State::Failed,
        "third crash within the window exceeds max=2"
    );
    assert!(
        f.last_failure
            .as_deref()
            .unwrap()
            .contains("restart limit reached")
    );
    // reset clears the failed state
    f.step(Event::Reset, t0 + Duration::from_secs(31), &p);
    f.step(Event::Empty, t0 + Duration::from_secs(31), &p);
    assert_eq!(f.state(), State::Stopped);
    assert!(f.restarts.is_empty());
}

#[test]
fn on_failure_does_not_restart_clean_exit() {
    let mut p = policy();
    p.restart.policy = RestartPolicy::OnFailure;
    let (_, s) = run(
        &p,
        vec![
            Event::Start { timeout: None },
            Event::Launched,
            Event::Ready,
            Event::ProcessExited {
                name: "c".into(),
                status: "exited with status 0".into(),
                clean: true,
            },
        ],
    );
    assert_eq!(*s.last().unwrap(), State::Failed);
}

#[test]
fn stop_escalates_to_kill_at_deadline() {
    let p = policy();
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    f.step(Event::Start { timeout: None }, t0, &p);
    f.step(Event::Launched, t0, &p);
    f.step(Event::Ready, t0, &p);
    let a = f.step(Event::Stop { timeout: None }, t0, &p);
    assert!(a.contains(&Action::Signal(libc::SIGTERM)));
    assert!(a.contains(&Action::Deadline(Some(t0 + Duration::from_secs(5)))));
    let a = f.step(
        Event::Timeout { stalled: None },
        t0 + Duration::from_secs(5),
        &p,
    );
    assert!(a.contains(&Action::KillAll));
    f.step(Event::Empty, t0 + Duration::from_secs(6), &p);
    assert_eq!(f.state(), State::Stopped);
}

#[test]
fn failed_stop_command_falls_back_to_signal() {
    let mut p = policy();
    p.has_stop_command = true;
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    for e in [
        Event::Start { timeout: None },
        Event::Launched,
        Event::Ready,
    ] {
        f.step(e, t0, &p);
    }
    let a = f.step(Event::Stop { timeout: None }, t0, &p);
    assert!(a.contains(&Action::RunStopCommand));
    let a = f.step(Event::StopCommandExited { ok: false }, t0, &p);
    assert_eq!(a, vec![Action::Signal(libc::SIGTERM)]);
}

#[test]
fn forking_lives_after_script_and_fails_when_empty() {
    let mut p = policy();
    p.kind = ServiceKind::Forking;
    p.has_ready_check = false;
    let (_, s) = run(
        &p,
        vec![
            Event::Start { timeout: None },
            Event::Launched,
            Event::ScriptExited {
                ok: true,
                status: "exited with status 0".into(),
            },
            Event::Empty,
        ],
    );
    use State::*;
    assert_eq!(s, vec![Starting, Starting, Running, Failed]);
}

#[test]
fn start_while_stopping_is_queued() {
    let p = policy();
    let (_, s) = run(
        &p,
        vec![
            Event::Start { timeout: None },
            Event::Launched,
            Event::Ready,
            Event::Stop { timeout: None },
            Event::Start { timeout: None },
            Event::Empty,
        ],
    );
    assert_eq!(*s.last().unwrap(), State::Starting);
}

#[test]
fn failed_start_ready_failure_kills() {
    let p = policy();
    let t0 = Instant::now();
    let mut f = Fsm::new(t0);
    f.step(Event::Start { timeout: None }, t0, &p);
    f.step(Event::Launched, t0, &p);
    let a = f.step(
        Event::ReadyFailed("tcp 127.0.0.2:9003: connection refused".into()),
        t0,
        &p,
    );
    assert!(a.contains(&Action::KillAll));
    assert!(a.contains(&Action::CancelChecks));
    f.step(Event::Empty, t0, &p);
    assert_eq!(f.state(), State::Failed);
}

#[test]
fn adoption_is_decided_by_the_table() {
    let t0 = Instant::now();
    let p = policy();
    let o = |was, alive, dead: bool| Observed {
        was,
        alive,
        dead_main: dead.then(|| {
            (
                "s".to_string(),
                "exited while the supervisor was down".to_string(),
            )
        }),
        restarts: 2,
        last_failure: None,
        ran_for: Some(Duration::from_secs(60)),
    };
    let mut f = Fsm::new(t0);
    let a = f.step(Event::Adopted(o(State::Running, true, false)), t0, &p);
    assert_eq!(f.state(), State::Running);
    assert_eq!(
        f.since,
        t0 - Duration::from_secs(60),
        "running since its record"
    );
    assert_eq!(f.restart_count, 2);
    assert!(a.contains(&Action::StartHealth));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Hook {
            event: "adopted",
            ..
        }
    )));
    let mut f = Fsm::new(t0);
    f.step(Event::Adopted(o(State::Running, false, true)), t0, &p);
    assert_eq!(f.state(), State::Failed, "died while down, policy no");
    assert!(
        f.last_failure
            .as_deref()
            .unwrap()
            .contains("exited while the supervisor was down")
    );
    let mut f = Fsm::new(t0);
    f.step(Event::Adopted(o(State::Stopping, false, false)), t0, &p);
    assert_eq!(f.state(), State::Stopped);
    let mut f = Fsm::new(t0);
    let a = f.step(Event::Adopted(o(State::Stopping, true, false)), t0, &p);
    assert_eq!(f.state(), State::Stopping, "the stop is finished: {a:?}");
    let mut f = Fsm::new(t0);
    f.step(Event::Adopted(o(State::Failed, true, false)), t0, &p);
    assert_eq!(f.state(), State::Failed);
    // Found starting: running from now on (it was not ready before).
    let mut f = Fsm::new(t0);
    f.step(Event::Adopted(o(State::Starting, true, false)), t0, &p);
    assert_eq!((f.state(), f.since), (State::Running, t0));
}
