//! Every state × event pair of the life-cycle table (see `fsm.rs`): a
//! machine in each state, every event; the meaningless pairs change
//! nothing, and the pairs where the answer matters say so.

use super::tests::policy;
use super::*;
use crate::model::RestartPolicy;
use std::time::Instant;

fn every_event() -> Vec<Event> {
    vec![
        Event::Start { timeout: None },
        Event::Stop { timeout: None },
        Event::Kill,
        Event::Reset,
        Event::AddressReady,
        Event::Launched,
        Event::LaunchFailed("x".into()),
        Event::ScriptExited {
            ok: true,
            status: "exited with status 0".into(),
        },
        Event::ScriptExited {
            ok: false,
            status: "exited with status 1".into(),
        },
        Event::Ready,
        Event::ReadyFailed("x".into()),
        Event::ProcessExited {
            name: "p".into(),
            status: "exited with status 1".into(),
            clean: false,
        },
        Event::Empty,
        Event::StopCommandExited { ok: true },
        Event::StopCommandExited { ok: false },
        Event::Timeout { stalled: None },
        Event::Timeout {
            stalled: Some("paths.data /x".into()),
        },
        Event::Audited,
        Event::Violation("x".into()),
        Event::Adopted(Observed {
            was: State::Running,
            alive: true,
            dead_main: None,
            restarts: 0,
            last_failure: None,
            ran_for: None,
        }),
    ]
}

/// Drives a fresh table into each state (with each kind of stop).
fn in_every_state(p: &Policy, t0: Instant) -> Vec<Fsm> {
    let mut v = Vec::new();
    let mut f = Fsm::new(t0);
    v.push(f.clone()); // stopped
    let mut gated = p.clone();
    gated.gate_address = true;
    let mut g = Fsm::new(t0);
    g.step(Event::Start { timeout: None }, t0, &gated);
    v.push(g); // waiting-address
    f.step(Event::Start { timeout: None }, t0, p);
    v.push(f.clone()); // starting
    f.step(Event::Launched, t0, p);
    f.step(Event::Ready, t0, p);
    v.push(f.clone()); // running
    let mut s = f.clone();
    s.step(Event::Stop { timeout: None }, t0, p);
    v.push(s.clone()); // stopping, not killed
    s.step(Event::Timeout { stalled: None }, t0, p);
    v.push(s); // stopping, killed
    let mut r = f.clone();
    let mut rp = p.clone();
    rp.restart.policy = RestartPolicy::Always;
    r.step(
        Event::ProcessExited {
            name: "p".into(),
            status: "killed".into(),
            clean: false,
        },
        t0,
        &rp,
    );
    r.step(Event::Empty, t0, &rp);
    v.push(r); // restarting
    let mut x = f.clone();
    x.step(
        Event::ProcessExited {
            name: "p".into(),
            status: "killed".into(),
            clean: false,
        },
        t0,
        p,
    );
    v.push(x); // failed
    v
}

#[test]
fn every_pair_is_handled() {
    let t0 = Instant::now();
    for kind in [ServiceKind::Simple, ServiceKind::Forking] {
        let mut p = policy();
        p.kind = kind;
        let states = in_every_state(&p, t0);
        let names: Vec<State> = states.iter().map(|f| f.state()).collect();
        use State::*;
        assert_eq!(
            names,
            vec![
                Stopped,
                WaitingAddress,
                Starting,
                Running,
                Stopping,
                Stopping,
                Restarting,
                Failed
            ]
        );
        for f in &states {
            for ev in every_event() {
                let mut g = f.clone();
                let from = g.state();
                let actions = g.step(ev.clone(), t0 + Duration::from_secs(1), &p);
                // A transition is announced exactly when the state
                // changes; the table never leaves it silently.
                let announced = actions
                    .iter()
                    .filter(|a| matches!(a, Action::Transition { .. }))
                    .count();
                if g.state() != from {
                    assert!(announced >= 1, "{from:?} x {ev:?}: {actions:?}");
                }
                // Killing is always followed by a deadline: a kill that
                // does not empty the instance is reported, not waited on
                // for ever.
                if actions.contains(&Action::KillAll) {
                    assert!(
                        actions
                            .iter()
                            .any(|a| matches!(a, Action::Deadline(Some(_)))),
                        "{from:?} x {ev:?}: {actions:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn meaningless_pairs_change_nothing() {
    let t0 = Instant::now();
    let p = policy();
    let states = in_every_state(&p, t0);
    let running = &states[3];
    for ev in [
        Event::Start { timeout: None },
        Event::Reset,
        Event::AddressReady,
        Event::Launched,
        Event::Ready,
        Event::StopCommandExited { ok: true },
        Event::Timeout { stalled: None },
    ] {
        let mut g = running.clone();
        assert!(g.step(ev.clone(), t0, &p).is_empty(), "running x {ev:?}");
        assert_eq!(g.state(), State::Running);
    }
    let stopping = &states[4];
    for ev in [
        Event::Ready,
        Event::Launched,
        Event::ProcessExited {
            name: "p".into(),
            status: "x".into(),
            clean: false,
        },
        Event::Audited,
    ] {
        let mut g = stopping.clone();
        assert!(g.step(ev.clone(), t0, &p).is_empty(), "stopping x {ev:?}");
    }
}

#[test]
fn sigkill_that_does_not_empty_is_reported_not_a_fake_transition() {
    let t0 = Instant::now();
    let p = policy();
    let states = in_every_state(&p, t0);
    let mut f = states[5].clone(); // stopping, killed
    let a = f.step(Event::Timeout { stalled: None }, t0, &p);
    assert!(a.contains(&Action::Answer(Answer::StopStuck)), "{a:?}");
    assert!(!a.iter().any(|x| matches!(x, Action::Transition { .. })));
    assert_eq!(f.state(), State::Stopping);
}
#[test]
fn start_of_a_failed_instance_stops_what_is_left_first() {
    let t0 = Instant::now();
    let p = policy();
    let mut f = in_every_state(&p, t0)[7].clone();
    let a = f.step(Event::Start { timeout: None }, t0, &p);
    assert_eq!(f.state(), State::Stopping);
    assert!(a.contains(&Action::Signal(libc::SIGTERM)));
    f.step(Event::Empty, t0, &p);
    assert_eq!(f.state(), State::Starting, "then it starts");
}
