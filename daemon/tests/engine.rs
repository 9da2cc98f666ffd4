//! The engine's transitions as table tests, and power loss at every persisted step across simulated reboots.

use otter_bootloader::fake::FakeBootloader;
use otter_bootloader::{BootBackend, Slot, SlotState};
use otterd::engine::{
    Action, ArtifactInfo, BootChange, BootView, Engine, EngineConfig, Event, FailureCause, Inhibits, JobPhase, Outcome,
    Persisted, PhaseName, RebootPolicy, Rejection,
};
use proptest::prelude::*;

const DEADLINE: u64 = 600;

fn config(reboot: RebootPolicy) -> EngineConfig {
    EngineConfig { reboot, commit_deadline: DEADLINE, image_security_version: 0 }
}

fn settled(primary: Slot) -> BootView {
    BootView { primary: Some(primary), a: SlotState::Good, b: SlotState::Good, security_version: 0 }
}

fn trying(target: Slot, left: u32) -> BootView {
    let mut v = BootView { primary: Some(target), a: SlotState::Good, b: SlotState::Good, security_version: 0 };
    match target {
        Slot::A => v.a = SlotState::Trying { attempts_left: left },
        Slot::B => v.b = SlotState::Trying { attempts_left: left },
    }
    v
}

fn artifact(v: &str, sv: u64) -> ArtifactInfo {
    ArtifactInfo { digest: format!("digest-{v}"), version: v.into(), security_version: sv }
}

fn started(policy: RebootPolicy) -> Engine {
    let mut e = Engine::new(Persisted::default(), config(policy));
    e.handle(Event::Started { booted: Slot::A, boot: settled(Slot::A), now: 0 }).unwrap();
    e
}

/// Requests an install and confirms the "mark target bad" store; returns the actions that follow it.
fn install(e: &mut Engine) -> Vec<Action> {
    request(e, false)
}

fn request(e: &mut Engine, automatic: bool) -> Vec<Action> {
    let remote_id = automatic.then(|| "7".to_string());
    let a = e.handle(Event::InstallRequested { source: "/x.otter".into(), automatic, remote_id, now: 1 }).unwrap();
    let target = e.job().unwrap().target;
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(target)])]);
    e.handle(Event::BootStored { now: 1 }).unwrap()
}

/// An engine whose job waits for the reboot (bootloader already flipped to B).
fn awaiting(policy: RebootPolicy) -> Engine {
    let mut e = started(policy);
    install(&mut e);
    e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    // 10:00 UTC: outside the maintenance windows the tests use.
    e.handle(Event::BootStored { now: 600 * 60 }).unwrap();
    e
}

/// The engine after the reboot into B: a fresh engine over the persisted state, started on B.
fn assessing() -> Engine {
    let e = awaiting(RebootPolicy::Immediate);
    assert_eq!(e.job().unwrap().phase, JobPhase::Rebooting);
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::B, boot: trying(Slot::B, 2), now: 10 }).unwrap();
    assert_eq!(a, vec![Action::StartHealthChecks]);
    e
}

fn outcome(actions: &[Action]) -> Option<Outcome> {
    actions.iter().find_map(|a| match a {
        Action::Finished(r) => Some(r.outcome.clone()),
        _ => None,
    })
}

#[test]
fn idle_start_reconfirms_the_running_slot() {
    let mut e = Engine::new(Persisted::default(), config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::A, boot: settled(Slot::A), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::A)])]);
    assert!(e.job().is_none());
}

#[test]
fn install_marks_the_target_bad_first_and_installs_into_the_other_slot() {
    let mut e = started(RebootPolicy::Immediate);
    let a = install(&mut e);
    assert!(matches!(&a[..], [Action::Install { target: Slot::B, min_security_version: 0, .. }]));
    let job = e.job().unwrap();
    assert_eq!((job.id, job.phase, job.from, job.target), (1, JobPhase::Installing, Slot::A, Slot::B));
}

#[test]
fn second_request_while_busy_is_refused() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    let before = e.persisted.clone();
    let r = e.handle(Event::InstallRequested { source: "/y".into(), automatic: false, remote_id: None, now: 2 });
    assert_eq!(r, Err(Rejection::Busy { id: 1, phase: JobPhase::Installing }));
    assert_eq!(e.persisted, before);
}

#[test]
fn request_before_start_is_refused() {
    let mut e = Engine::new(Persisted::default(), config(RebootPolicy::Immediate));
    assert!(matches!(
        e.handle(Event::InstallRequested { source: "/y".into(), automatic: false, remote_id: None, now: 0 }),
        Err(Rejection::NotBooted)
    ));
}

#[test]
fn success_flips_the_bootloader_then_reboots_immediately() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    let a = e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::TryNext(Slot::B)])]);
    assert_eq!(e.job().unwrap().phase, JobPhase::Installed);
    let a = e.handle(Event::BootStored { now: 3 }).unwrap();
    assert_eq!(a, vec![Action::Reboot]);
    assert_eq!(e.job().unwrap().phase, JobPhase::Rebooting);
}

#[test]
fn manual_policy_waits_for_the_request() {
    let mut e = awaiting(RebootPolicy::Manual);
    assert_eq!(e.job().unwrap().phase, JobPhase::AwaitingReboot);
    assert_eq!(e.handle(Event::Tick { now: 100 }).unwrap(), vec![]);
    assert_eq!(e.handle(Event::RebootRequested { now: 101 }).unwrap(), vec![Action::Reboot]);
    assert_eq!(e.job().unwrap().phase, JobPhase::Rebooting);
}

#[test]
fn reboot_request_without_a_pending_update_is_refused() {
    let mut e = started(RebootPolicy::Manual);
    assert_eq!(e.handle(Event::RebootRequested { now: 1 }), Err(Rejection::NoRebootPending));
}

#[test]
fn maintenance_window() {
    for (start, end, minute, reboots) in [
        (120, 240, 119, false),
        (120, 240, 120, true),
        (120, 240, 239, true),
        (120, 240, 240, false),
        // Wrapping past midnight: 23:00-01:00.
        (1380, 60, 1379, false),
        (1380, 60, 1439, true),
        (1380, 60, 0, true),
        (1380, 60, 60, false),
    ] {
        let mut e = awaiting(RebootPolicy::Window { start, end });
        let a = e.handle(Event::Tick { now: minute * 60 }).unwrap();
        assert_eq!(a == vec![Action::Reboot], reboots, "{start}-{end} at {minute}");
    }
}

#[test]
fn inhibitor_blocks_reboots_until_released() {
    let mut e = started(RebootPolicy::Immediate);
    // Taken while installing (an inhibitor held before the request refuses the install itself).
    install(&mut e);
    e.handle(Event::InhibitedChanged { inhibited: true, now: 1 }).unwrap();
    e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    assert_eq!(e.handle(Event::BootStored { now: 3 }).unwrap(), vec![]);
    assert_eq!(e.handle(Event::Tick { now: 4 }).unwrap(), vec![]);
    assert_eq!(e.handle(Event::RebootRequested { now: 5 }), Err(Rejection::Inhibited(Inhibits::Reboots)));
    let a = e.handle(Event::InhibitedChanged { inhibited: false, now: 6 }).unwrap();
    assert_eq!(a, vec![Action::Reboot]);
}

#[test]
fn inhibitor_blocks_install_start() {
    // (inhibited, automatic) -> accepted
    let table = [(false, false, true), (false, true, true), (true, false, false), (true, true, false)];
    for (inhibited, automatic, accepted) in table {
        let mut e = started(RebootPolicy::Immediate);
        e.handle(Event::InhibitedChanged { inhibited, now: 1 }).unwrap();
        let before = e.persisted.clone();
        let r = e.handle(Event::InstallRequested { source: "/x.otter".into(), automatic, remote_id: None, now: 2 });
        assert_eq!(r.is_ok(), accepted, "inhibited {inhibited}, automatic {automatic}: {r:?}");
        if !accepted {
            assert_eq!(r, Err(Rejection::Inhibited(Inhibits::Updates)));
            assert_eq!(e.persisted, before, "a refused request changes nothing");
        }
    }
    // Released: installs start again; a job already running is not affected by a later inhibitor.
    let mut e = started(RebootPolicy::Immediate);
    e.handle(Event::InhibitedChanged { inhibited: true, now: 1 }).unwrap();
    e.handle(Event::InhibitedChanged { inhibited: false, now: 2 }).unwrap();
    install(&mut e);
    e.handle(Event::InhibitedChanged { inhibited: true, now: 3 }).unwrap();
    assert_eq!(e.job().unwrap().phase, JobPhase::Installing);
}

#[test]
fn check_idle_refuses_while_a_job_runs() {
    let mut e = started(RebootPolicy::Manual);
    assert_eq!(e.check_idle(), Ok(()));
    install(&mut e);
    assert!(matches!(e.check_idle(), Err(Rejection::Busy { phase: JobPhase::Installing, .. })));
}

#[test]
fn failed_artifact_is_not_retried_automatically() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    let a = e
        .handle(Event::InstallFailed {
            code: "corrupt-payload".into(),
            message: "chunk 3: sha256 mismatch".into(),
            digest: Some("bad-digest".into()),
            cause: FailureCause::Artifact,
            now: 2,
        })
        .unwrap();
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "corrupt-payload"));
    assert!(e.job().is_none());
    // A server-triggered retry carries the digest to refuse; a local, explicit install does not.
    let a = request(&mut e, true);
    assert!(matches!(&a[0], Action::Install { refuse, .. } if refuse == &vec!["bad-digest".to_string()]));
    e.handle(Event::InstallFailed {
        code: "previously-failed".into(),
        message: String::new(),
        digest: Some("bad-digest".into()),
        cause: FailureCause::Artifact,
        now: 4,
    })
    .unwrap();
    let a = install(&mut e);
    assert!(matches!(&a[0], Action::Install { refuse, .. } if refuse.is_empty()));
}

#[test]
fn network_failures_do_not_blacklist() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    e.handle(Event::InstallFailed {
        code: "connection-lost".into(),
        message: String::new(),
        digest: Some("d".into()),
        cause: FailureCause::Other,
        now: 2,
    })
    .unwrap();
    assert!(e.persisted.failed_digests.is_empty());
}

#[test]
fn cancel_in_each_phase() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    assert_eq!(e.handle(Event::CancelRequested { now: 2 }).unwrap(), vec![Action::CancelInstall]);
    let a = e
        .handle(Event::InstallFailed {
            code: "cancelled".into(),
            message: "install cancelled".into(),
            digest: None,
            cause: FailureCause::Cancelled,
            now: 3,
        })
        .unwrap();
    assert_eq!(outcome(&a), Some(Outcome::Cancelled));

    let mut e = awaiting(RebootPolicy::Manual);
    let a = e.handle(Event::CancelRequested { now: 4 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B)])]);
    // Cancelled only once the revert is durable.
    assert!(e.job().unwrap().cancel_requested);
    let a = e.handle(Event::BootStored { now: 4 }).unwrap();
    assert_eq!(outcome(&a), Some(Outcome::Cancelled));

    let mut e = assessing();
    assert_eq!(e.handle(Event::CancelRequested { now: 11 }), Err(Rejection::NotCancellable(JobPhase::Assessing)));
    let mut e = started(RebootPolicy::Immediate);
    assert_eq!(e.handle(Event::CancelRequested { now: 1 }), Err(Rejection::NothingToCancel));
}

#[test]
fn healthy_trial_commits_and_raises_the_security_version() {
    let mut e = assessing();
    let a = e.handle(Event::HealthPassed { now: 20 }).unwrap();
    // The floor rises in the bootloader env in the same store as the commit.
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::B), BootChange::RaiseSecurityVersion(3)])]);
    // Committed only once the bootloader change is durable.
    assert_eq!(e.job().unwrap().phase, JobPhase::Assessing);
    let a = e.handle(Event::BootStored { now: 21 }).unwrap();
    assert_eq!(outcome(&a), Some(Outcome::Committed));
    assert_eq!(e.persisted.security_version, 3);
    assert!(e.job().is_none());
    // The next install refuses anything older.
    let a = install(&mut e);
    assert!(matches!(&a[0], Action::Install { target: Slot::A, min_security_version: 3, .. }));
}

#[test]
fn health_failure_rolls_back() {
    let mut e = assessing();
    let a = e.handle(Event::HealthFailed { reason: "app: exit 1".into(), now: 20 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B)]), Action::Reboot]);
    assert_eq!(e.job().unwrap().phase, JobPhase::RollingBack);
    // The reboot brings the device back to A.
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let boot = BootView { primary: Some(Slot::A), a: SlotState::Good, b: SlotState::Bad, security_version: 0 };
    let a = e.handle(Event::Started { booted: Slot::A, boot, now: 30 }).unwrap();
    assert_eq!(a[0], Action::Boot(vec![BootChange::MarkBad(Slot::B), BootChange::MarkGood(Slot::A)]));
    match outcome(&a) {
        Some(Outcome::RolledBack { reason }) => assert!(reason.contains("app: exit 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.persisted.failed_digests, vec!["digest-2.0".to_string()]);
    assert_eq!(e.persisted.security_version, 0);
}

#[test]
fn commit_deadline_rolls_back() {
    let mut e = assessing();
    assert_eq!(e.handle(Event::Tick { now: 10 + DEADLINE - 1 }).unwrap(), vec![]);
    let a = e.handle(Event::Tick { now: 10 + DEADLINE }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B)]), Action::Reboot]);
    assert!(e.job().unwrap().rollback_reason.as_ref().unwrap().contains("did not pass within"));
    // A late "passed" cannot commit any more: the engine says it does not apply (the runtime logs that).
    let before = e.persisted.clone();
    assert_eq!(
        e.handle(Event::HealthPassed { now: 10 + DEADLINE + 1 }),
        Err(Rejection::WrongPhase { event: "health-passed", phase: PhaseName(Some(JobPhase::RollingBack)) })
    );
    assert_eq!(e.persisted, before);
}

#[test]
fn events_in_the_wrong_phase_are_refused_not_swallowed() {
    let wrong = |e: &mut Engine, event: Event| {
        let before = e.persisted.clone();
        let r = e.handle(event.clone());
        assert!(matches!(r, Err(Rejection::WrongPhase { .. })), "{event:?}: {r:?}");
        assert_eq!(e.persisted, before, "{event:?} changed nothing");
    };
    let mut e = started(RebootPolicy::Manual);
    wrong(&mut e, Event::InstallSucceeded { artifact: artifact("2.0", 1), now: 2 });
    wrong(
        &mut e,
        Event::InstallFailed {
            code: "x".into(),
            message: "x".into(),
            digest: None,
            cause: FailureCause::Other,
            now: 2,
        },
    );
    wrong(&mut e, Event::HealthPassed { now: 2 });
    wrong(&mut e, Event::HealthFailed { reason: "x".into(), now: 2 });
    let mut e = awaiting(RebootPolicy::Manual);
    wrong(&mut e, Event::BootStored { now: 3 });
    wrong(&mut e, Event::InstallSucceeded { artifact: artifact("2.0", 1), now: 3 });
    wrong(&mut e, Event::HealthPassed { now: 3 });
}

#[test]
fn bootloader_fallback_is_detected_after_reboot() {
    for phase_engine in [awaiting(RebootPolicy::Immediate), assessing()] {
        let mut e = Engine::new(phase_engine.persisted.clone(), config(RebootPolicy::Immediate));
        // B never came up (or hung in its trial): its attempts ran out and the bootloader booted A.
        let boot = BootView {
            primary: Some(Slot::A),
            a: SlotState::Good,
            b: SlotState::Trying { attempts_left: 0 },
            security_version: 0,
        };
        let a = e.handle(Event::Started { booted: Slot::A, boot, now: 50 }).unwrap();
        assert_eq!(a[0], Action::Boot(vec![BootChange::MarkBad(Slot::B), BootChange::MarkGood(Slot::A)]));
        assert!(matches!(outcome(&a), Some(Outcome::RolledBack { .. })));
    }
}

#[test]
fn daemon_restart_before_the_reboot_keeps_waiting() {
    let e = awaiting(RebootPolicy::Manual);
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Manual));
    let a = e.handle(Event::Started { booted: Slot::A, boot: trying(Slot::B, 3), now: 5 }).unwrap();
    assert_eq!(a, vec![]);
    assert_eq!(e.job().unwrap().phase, JobPhase::AwaitingReboot);
}

#[test]
fn restart_in_the_middle_of_an_install_fails_it_honestly() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let boot = BootView { primary: Some(Slot::A), a: SlotState::Good, b: SlotState::Bad, security_version: 0 };
    let a = e.handle(Event::Started { booted: Slot::A, boot, now: 5 }).unwrap();
    assert_eq!(a[0], Action::Boot(vec![BootChange::MarkBad(Slot::B), BootChange::MarkGood(Slot::A)]));
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "interrupted"));
}

#[test]
fn restart_after_install_before_the_flip_flips_again() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let boot = BootView { primary: Some(Slot::A), a: SlotState::Good, b: SlotState::Bad, security_version: 0 };
    let a = e.handle(Event::Started { booted: Slot::A, boot, now: 5 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::A), BootChange::TryNext(Slot::B)])]);
    assert_eq!(e.handle(Event::BootStored { now: 6 }).unwrap(), vec![Action::Reboot]);
}

#[test]
fn rollback_cut_before_its_store_is_redone() {
    let mut e = assessing();
    e.handle(Event::HealthFailed { reason: "x".into(), now: 20 }).unwrap();
    // Power lost before "B bad" was stored: the bootloader tries B once more.
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::B, boot: trying(Slot::B, 1), now: 30 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B)]), Action::Reboot]);
    assert_eq!(e.job().unwrap().phase, JobPhase::RollingBack);
}

#[test]
fn rollback_that_did_not_take_does_not_loop() {
    let mut e = assessing();
    e.handle(Event::HealthFailed { reason: "x".into(), now: 20 }).unwrap();
    let mut e = Engine::new(e.persisted.clone(), config(RebootPolicy::Immediate));
    let boot = BootView { primary: Some(Slot::B), a: SlotState::Good, b: SlotState::Bad, security_version: 0 };
    let a = e.handle(Event::Started { booted: Slot::B, boot, now: 30 }).unwrap();
    assert!(!a.contains(&Action::Reboot));
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "rollback-failed"));
}

#[test]
fn unknown_trial_is_adopted_and_assessed() {
    let mut e = Engine::new(Persisted::default(), config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::B, boot: trying(Slot::B, 2), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::StartHealthChecks]);
    assert_eq!(e.job().unwrap().phase, JobPhase::Assessing);
    e.handle(Event::HealthPassed { now: 1 }).unwrap();
    let a = e.handle(Event::BootStored { now: 2 }).unwrap();
    assert_eq!(outcome(&a), Some(Outcome::Committed));
}

#[test]
fn bootloader_failure_during_the_flip_fails_the_job() {
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    let a = e.handle(Event::BootFailed { message: "env corrupt".into(), now: 3 }).unwrap();
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "bootloader"));
}

#[test]
fn history_is_bounded() {
    let mut e = started(RebootPolicy::Immediate);
    for i in 0..30 {
        install(&mut e);
        e.handle(Event::CancelRequested { now: i }).unwrap();
        e.handle(Event::InstallFailed {
            code: "cancelled".into(),
            message: String::new(),
            digest: None,
            cause: FailureCause::Cancelled,
            now: i,
        })
        .unwrap();
    }
    assert_eq!(e.persisted.history.len(), otterd::engine::HISTORY_LEN);
    assert_eq!(e.persisted.history.back().unwrap().job.id, 30);
}

// ----- power loss at every persisted step -----

/// A simulated device: the fake bootloader decides every boot; the "disk" holds the last persisted state; a
/// power cut can strike at any numbered step (each persist, each bootloader store, each effect).
struct Device {
    boot: FakeBootloader,
    disk: Persisted,
    step: u32,
    cuts: Vec<u32>,
    health_ok: bool,
    install_ok: bool,
    requested: bool,
    /// The installer started writing the target at some point.
    wrote_target: bool,
    log: Vec<String>,
}

enum BootEnd {
    PowerCut,
    Rebooted,
    Settled,
}

impl Device {
    fn tick(&mut self, what: &str) -> bool {
        self.step += 1;
        self.log.push(format!("{}: {what}", self.step));
        self.cuts.contains(&self.step)
    }

    fn view(&self) -> BootView {
        BootView {
            primary: self.boot.primary(),
            a: self.boot.slot_state(Slot::A),
            b: self.boot.slot_state(Slot::B),
            security_version: self.boot.security_version().unwrap_or(0),
        }
    }

    /// One boot: what the runtime does, with a power cut possible at every step.
    fn run_boot(&mut self, now: &mut u64) -> BootEnd {
        let Some(booted) = self.boot.simulate_boot() else { panic!("no bootable slot: {:?}", self.log) };
        self.log.push(format!("boot {booted}"));
        let mut engine = Engine::new(self.disk.clone(), config(RebootPolicy::Immediate));
        let mut events = vec![Event::Started { booted, boot: self.view(), now: *now }];
        if !self.requested {
            self.requested = true;
            events.push(Event::InstallRequested {
                source: "/u.otter".into(),
                automatic: false,
                remote_id: None,
                now: *now,
            });
        }
        let mut queue: std::collections::VecDeque<Event> = events.into();
        while let Some(event) = queue.pop_front() {
            *now += 1;
            let Ok(actions) = engine.handle(event) else { continue };
            for action in actions {
                // Persist before each effect, exactly like the runtime.
                if engine.persisted != self.disk {
                    if self.tick("before persist") {
                        return BootEnd::PowerCut;
                    }
                    self.disk = engine.persisted.clone();
                }
                if self.tick(&format!("{action:?}")) {
                    return BootEnd::PowerCut;
                }
                match action {
                    Action::Boot(changes) => {
                        for c in &changes {
                            match *c {
                                BootChange::MarkBad(s) => self.boot.mark_bad(s).unwrap(),
                                BootChange::TryNext(s) => self.boot.set_try_next(s).unwrap(),
                                BootChange::MarkGood(s) => self.boot.mark_good(s).unwrap(),
                                BootChange::RaiseSecurityVersion(v) => self.boot.raise_security_version(v).unwrap(),
                            }
                        }
                        if self.tick("before store") {
                            return BootEnd::PowerCut;
                        }
                        self.boot.store().unwrap();
                        queue.push_back(Event::BootStored { now: *now });
                    }
                    Action::Install { target, .. } => queue.push_back(if self.install_ok {
                        // The target must already be durably marked bad when writing starts.
                        assert_eq!(self.boot.stored_state(target), SlotState::Bad, "{:?}", self.log);
                        self.wrote_target = true;
                        Event::InstallSucceeded { artifact: artifact("2.0", 1), now: *now }
                    } else {
                        self.wrote_target = true;
                        Event::InstallFailed {
                            code: "corrupt-payload".into(),
                            message: "x".into(),
                            digest: Some("d".into()),
                            cause: FailureCause::Artifact,
                            now: *now,
                        }
                    }),
                    Action::StartHealthChecks => queue.push_back(if self.health_ok {
                        Event::HealthPassed { now: *now }
                    } else {
                        Event::HealthFailed { reason: "unhealthy".into(), now: *now }
                    }),
                    Action::Reboot => {
                        if engine.persisted != self.disk {
                            self.disk = engine.persisted.clone();
                        }
                        return BootEnd::Rebooted;
                    }
                    Action::CancelInstall | Action::Finished(_) => {}
                }
            }
            if engine.persisted != self.disk {
                if self.tick("final persist") {
                    return BootEnd::PowerCut;
                }
                self.disk = engine.persisted.clone();
            }
        }
        BootEnd::Settled
    }
}

fn run_device(cuts: Vec<u32>, health_ok: bool, install_ok: bool) -> Device {
    let mut d = Device {
        boot: FakeBootloader::new(Slot::A),
        disk: Persisted::default(),
        step: 0,
        cuts,
        health_ok,
        install_ok,
        requested: false,
        wrote_target: false,
        log: Vec::new(),
    };
    let mut now = 1000;
    for _ in 0..20 {
        match d.run_boot(&mut now) {
            BootEnd::Settled => return d,
            BootEnd::PowerCut => d.log.push("power cut".into()),
            BootEnd::Rebooted => d.log.push("reboot".into()),
        }
    }
    panic!("device never settled: {:?}", d.log);
}

fn check_settled(d: &Device) {
    let booted = d.boot.boots().last().copied().flatten().expect("booted");
    let ctx = format!("{:?}", d.log);
    // The device runs a good slot that the bootloader will boot again, and no job is left hanging.
    assert_eq!(d.boot.stored_state(booted), SlotState::Good, "{ctx}");
    assert_eq!(d.boot.stored_primary(), Some(booted), "{ctx}");
    assert!(d.disk.job.is_none(), "{ctx}");
    // The outcome is honest: committed only if the device runs the new slot, else it runs the old one.
    if let Some(last) = d.disk.history.back() {
        match &last.outcome {
            Outcome::Committed => {
                assert_eq!(booted, last.job.target, "{ctx}");
                assert!(d.health_ok && d.install_ok, "{ctx}");
                // The floor rose with the commit, in the bootloader env as well as on disk, whatever the cuts.
                assert_eq!(d.boot.stored_vars().get("OTTER_SECURITY_VERSION").map(String::as_str), Some("1"), "{ctx}");
                assert_eq!(d.disk.security_version, 1, "{ctx}");
            }
            _ => {
                assert_eq!(booted, last.job.from, "{ctx}");
                // A slot the installer touched is never left looking good (untouched, it keeps its old image).
                if d.wrote_target {
                    assert_ne!(d.boot.stored_state(last.job.target), SlotState::Good, "{ctx}");
                }
            }
        }
    }
    // A healthy update with no interruption of the install commits; an unhealthy one never does.
    if !d.health_ok {
        assert!(d.disk.history.iter().all(|r| r.outcome != Outcome::Committed), "{ctx}");
    }
}

#[test]
fn every_single_cut_point_ends_in_a_good_slot_with_an_honest_outcome() {
    for health_ok in [true, false] {
        for install_ok in [true, false] {
            let total = run_device(Vec::new(), health_ok, install_ok).step;
            for cut in 1..=total {
                check_settled(&run_device(vec![cut], health_ok, install_ok));
            }
        }
    }
}

#[test]
fn every_pair_of_cut_points() {
    for health_ok in [true, false] {
        for install_ok in [true, false] {
            let total = run_device(Vec::new(), health_ok, install_ok).step + 4;
            for first in 1..=total {
                for second in first + 1..=total + 8 {
                    check_settled(&run_device(vec![first, second], health_ok, install_ok));
                }
            }
        }
    }
}

#[test]
fn uninterrupted_updates() {
    let d = run_device(Vec::new(), true, true);
    check_settled(&d);
    assert_eq!(d.disk.history.back().unwrap().outcome, Outcome::Committed);
    assert_eq!(d.boot.boots().last().copied().flatten(), Some(Slot::B));
    let d = run_device(Vec::new(), false, true);
    check_settled(&d);
    assert!(matches!(d.disk.history.back().unwrap().outcome, Outcome::RolledBack { .. }));
    assert_eq!(d.boot.boots().last().copied().flatten(), Some(Slot::A));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_cut_points(cuts in proptest::collection::vec(1u32..40, 0..4), health_ok: bool, install_ok: bool) {
        check_settled(&run_device(cuts, health_ok, install_ok));
    }
}

#[test]
fn a_state_that_cannot_be_saved_ends_the_job_before_the_switch_and_holds_it_after() {
    let not_saved = |now| Event::StateNotSaved { message: "read-only".into(), now };
    // Installing: the install is stopped and the job ends; nothing touches the bootloader.
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    let a = e.handle(not_saved(2)).unwrap();
    assert_eq!(a[0], Action::CancelInstall);
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "state-not-saved"), "{a:?}");
    assert!(a.iter().all(|x| matches!(x, Action::CancelInstall | Action::Finished(_))), "{a:?}");
    // Installed (the "try B" store was not taken): the job ends, B stays marked bad.
    let mut e = started(RebootPolicy::Immediate);
    install(&mut e);
    e.handle(Event::InstallSucceeded { artifact: artifact("2.0", 3), now: 2 }).unwrap();
    let a = e.handle(not_saved(3)).unwrap();
    assert!(matches!(outcome(&a), Some(Outcome::Failed { code, .. }) if code == "state-not-saved"), "{a:?}");
    // Rebooting (the reboot was not taken): back to waiting for it.
    let mut e = awaiting(RebootPolicy::Immediate);
    assert_eq!(e.job().unwrap().phase, JobPhase::Rebooting);
    assert_eq!(e.handle(not_saved(4)).unwrap(), vec![]);
    assert_eq!(e.job().unwrap().phase, JobPhase::AwaitingReboot);
}

#[test]
fn a_failed_reboot_is_fed_back_and_retried_with_backoff() {
    // Immediate policy: the update reboots at once; the command fails.
    let mut e = awaiting(RebootPolicy::Immediate);
    let t0 = 600 * 60;
    assert_eq!(e.job().unwrap().phase, JobPhase::Rebooting);
    assert_eq!(e.handle(Event::RebootFailed { message: "logind says no".into(), now: t0 }).unwrap(), vec![]);
    // Not stuck in Rebooting: waiting for the reboot again, with the error shown.
    assert_eq!(e.job().unwrap().phase, JobPhase::AwaitingReboot);
    let f = e.reboot_failure().unwrap();
    assert_eq!((f.message.as_str(), f.failures, f.retry_at), ("logind says no", 1, t0 + 5));
    // Backoff: no attempt before it is due, one when it is; each failure doubles the wait, up to 5 minutes.
    let mut now = t0;
    for (failures, wait) in [(1u32, 5u64), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 300), (8, 300)] {
        assert_eq!(e.reboot_failure().unwrap().failures, failures);
        assert_eq!(e.handle(Event::Tick { now: now + wait - 1 }).unwrap(), vec![], "failure {failures}");
        now += wait;
        assert_eq!(e.handle(Event::Tick { now }).unwrap(), vec![Action::Reboot], "failure {failures}");
        e.handle(Event::RebootFailed { message: "still no".into(), now }).unwrap();
    }
    // A request reboots at once, whatever the backoff; and Cancel works again.
    assert_eq!(e.handle(Event::RebootRequested { now: now + 1 }).unwrap(), vec![Action::Reboot]);
    e.handle(Event::RebootFailed { message: "no".into(), now: now + 1 }).unwrap();
    assert!(e.handle(Event::CancelRequested { now: now + 2 }).is_ok());
    e.handle(Event::BootStored { now: now + 2 }).unwrap();
    assert!(e.reboot_failure().is_none(), "the job ended, and its reboot error with it");

    // Rolling back: the reboot is repeated, not every tick, and backs off after failures.
    let mut e = assessing();
    let a = e.handle(Event::HealthFailed { reason: "x".into(), now: 20 }).unwrap();
    assert_eq!(a.last(), Some(&Action::Reboot));
    e.handle(Event::RebootFailed { message: "no".into(), now: 20 }).unwrap();
    assert_eq!(e.job().unwrap().phase, JobPhase::RollingBack);
    let reboots = |e: &mut Engine, from: u64, to: u64| {
        (from..to).filter(|&now| e.handle(Event::Tick { now }).unwrap() == vec![Action::Reboot]).count()
    };
    assert_eq!(reboots(&mut e, 21, 25), 0);
    assert_eq!(reboots(&mut e, 25, 26), 1);
    e.handle(Event::RebootFailed { message: "no".into(), now: 25 }).unwrap();
    assert_eq!(reboots(&mut e, 26, 35), 0);
    assert_eq!(reboots(&mut e, 35, 36), 1);
    // A wrong-phase failure is refused.
    let mut e = started(RebootPolicy::Immediate);
    assert!(matches!(e.handle(Event::RebootFailed { message: "x".into(), now: 1 }), Err(Rejection::WrongPhase { .. })));
}

#[test]
fn cancel_is_reported_only_once_the_revert_is_durable_and_a_cancelled_trial_is_never_adopted() {
    let mut e = awaiting(RebootPolicy::Manual);
    e.handle(Event::CancelRequested { now: 4 }).unwrap();
    // Storing "mark bad" failed: not cancelled; the job stays, and never reboots into the new slot.
    assert_eq!(e.handle(Event::BootFailed { message: "read-only".into(), now: 5 }).unwrap(), vec![]);
    let job = e.job().unwrap().clone();
    assert_eq!((job.phase, job.cancel_requested), (JobPhase::AwaitingReboot, true));
    assert_eq!(e.handle(Event::Tick { now: 6 }).unwrap(), vec![]);
    assert_eq!(e.handle(Event::RebootRequested { now: 6 }), Err(Rejection::NoRebootPending));

    // The device rebooted anyway (power cut) into the trial the bootloader still holds: roll back, don't assess.
    let mut e2 = Engine::new(e.persisted.clone(), config(RebootPolicy::Manual));
    let a = e2.handle(Event::Started { booted: Slot::B, boot: trying(Slot::B, 2), now: 7 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B)]), Action::Reboot]);
    assert_eq!(e2.job().unwrap().phase, JobPhase::RollingBack);
    e2.handle(Event::BootStored { now: 7 }).unwrap();
    // Back in A: the revert is stored again, then the job ends cancelled (not rolled back: the artifact is fine).
    let mut e3 = Engine::new(e2.persisted.clone(), config(RebootPolicy::Manual));
    let a = e3.handle(Event::Started { booted: Slot::A, boot: settled(Slot::A), now: 8 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B), BootChange::MarkGood(Slot::A)])]);
    assert!(e3.job().is_some(), "not reported before the store");
    let a = e3.handle(Event::BootStored { now: 8 }).unwrap();
    assert_eq!(outcome(&a), Some(Outcome::Cancelled));
    assert!(e3.persisted.failed_digests.is_empty());

    // Restarted in the old slot before the revert was stored: the same, without a reboot.
    let mut e4 = Engine::new(e.persisted.clone(), config(RebootPolicy::Manual));
    let a = e4.handle(Event::Started { booted: Slot::A, boot: trying(Slot::B, 3), now: 9 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkBad(Slot::B), BootChange::MarkGood(Slot::A)])]);
    assert_eq!(outcome(&e4.handle(Event::BootStored { now: 9 }).unwrap()), Some(Outcome::Cancelled));
}

fn with_floor(view: BootView, security_version: u64) -> BootView {
    BootView { security_version, ..view }
}

#[test]
fn the_floor_is_the_maximum_of_state_env_and_committed_image_and_never_goes_down() {
    // The state file was lost (or corrupt): the environment still holds the floor.
    let mut e = Engine::new(Persisted::default(), config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::A, boot: with_floor(settled(Slot::A), 5), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::A)])], "nothing to raise");
    assert_eq!(e.persisted.security_version, 5);
    assert!(matches!(&install(&mut e)[..], [Action::Install { min_security_version: 5, .. }]));

    // The environment was reset: the state file raises it back.
    let p = Persisted { security_version: 6, ..Persisted::default() };
    let mut e = Engine::new(p, config(RebootPolicy::Immediate));
    let a = e.handle(Event::Started { booted: Slot::A, boot: with_floor(settled(Slot::A), 2), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::A), BootChange::RaiseSecurityVersion(6)])]);

    // A fresh device is seeded from its (committed) image.
    let cfg = EngineConfig { image_security_version: 4, ..config(RebootPolicy::Immediate) };
    let mut e = Engine::new(Persisted::default(), cfg);
    let a = e.handle(Event::Started { booted: Slot::A, boot: settled(Slot::A), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::A), BootChange::RaiseSecurityVersion(4)])]);
    assert_eq!(e.persisted.security_version, 4);

    // A trial's image does not count until it commits; an adopted trial (state lost) raises it when it does.
    let cfg = EngineConfig { image_security_version: 7, ..config(RebootPolicy::Immediate) };
    let mut e = Engine::new(Persisted::default(), cfg);
    let a = e.handle(Event::Started { booted: Slot::B, boot: with_floor(trying(Slot::B, 2), 3), now: 0 }).unwrap();
    assert_eq!(a, vec![Action::StartHealthChecks]);
    assert_eq!(e.persisted.security_version, 3, "not raised by a trial");
    let a = e.handle(Event::HealthPassed { now: 1 }).unwrap();
    assert_eq!(a, vec![Action::Boot(vec![BootChange::MarkGood(Slot::B), BootChange::RaiseSecurityVersion(7)])]);
    assert_eq!(outcome(&e.handle(Event::BootStored { now: 2 }).unwrap()), Some(Outcome::Committed));
    assert_eq!(e.persisted.security_version, 7);
}
