//! The rollout engine: every decision about one rollout, as a pure function of (state, event).
//!
//! [`Rollout::handle`] takes an [`Event`] (a scheduler tick, new action counts, an operator's approve / pause /
//! resume / cancel) and returns the [`Decision`]s to carry out, having changed the rollout in memory. It does no
//! I/O and reads no clock: the effects layer ([`super`]) loads the rollout inside a transaction, calls `handle`,
//! writes the changed state back with a compare-and-set and executes the decisions in the same transaction, so a
//! crash (or a power cut of the server) leaves either all of a step or none of it.
//!
//! Rollout states and the transitions between them (groups are started strictly in order):
//!
//! ```text
//! Scheduled        ─tick at the start time─►  Running | WaitingApproval | Finished (every group empty)
//! Running          ─group done─►              Running (next group) | WaitingApproval | Finished
//! Running          ─failures above threshold─► Paused (by itself)
//! WaitingApproval  ─approve─►                 Running
//! Scheduled | Running | WaitingApproval ─pause─► Paused
//! Paused           ─resume─►                  Scheduled | Running | WaitingApproval (where it stood)
//! any but Finished | Cancelled ─cancel─►      Cancelled
//! ```
//!
//! Rules:
//! - A group is *done* when its success share (devices whose action finished, of the group's devices) reaches its
//!   `success_threshold`; a group with no devices is done at once. The next group is then reached.
//! - Reaching a group that needs an approval waits for one ([`RolloutState::WaitingApproval`]); the approver must
//!   not be the rollout's creator (the API checks the role, the engine the identity). The gate holds even for a
//!   group with no devices, so no later group starts without it either.
//! - While a group runs, a failure share above its `error_threshold` pauses the rollout by itself, with a reason
//!   naming the group, the counts and the threshold. The error threshold is checked before the success threshold:
//!   a group that both fails too often and succeeds enough halts.
//! - Only the current group is checked: failures in a group that is already done do not pause the rollout (that
//!   group met its bar when it counted).
//! - Resume re-checks the current group. If it meets its success threshold, the next group is reached. Otherwise
//!   the group keeps running and the failures seen so far count as *accepted*: the operator looked at them and chose
//!   to go on (thresholds cannot be changed). The rollout pauses itself again only after a further failure that
//!   keeps the share above the threshold. A rollout paused before its first group resumes into `Scheduled` if its
//!   start time is still ahead; one paused while waiting for an approval resumes into waiting for it.
//! - Cancel ends the rollout and cancels its open actions; groups not started stay untouched.
//! - An event a state does not allow is a typed [`Refusal`], never a silent no-op: nothing changed.

use serde::{Deserialize, Serialize};

use crate::model::RolloutState;

/// Where one group of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupState {
    /// Not reached yet.
    Pending,
    /// Reached; waits for an approver before it starts.
    WaitingApproval,
    /// Started: its devices have (or are getting) actions.
    Running,
    /// Met its success threshold (or had no devices).
    Done,
}

impl GroupState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Pending => "pending",
            GroupState::WaitingApproval => "waiting-approval",
            GroupState::Running => "running",
            GroupState::Done => "done",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => GroupState::Pending,
            "waiting-approval" => GroupState::WaitingApproval,
            "running" => GroupState::Running,
            "done" => GroupState::Done,
            _ => return None,
        })
    }
}

/// How a group's devices stand, counted from its members and their actions in this rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Devices in the group.
    pub total: u64,
    /// Devices whose action finished with success.
    pub finished: u64,
    /// Devices whose action failed.
    pub failed: u64,
    /// Devices whose action was cancelled.
    pub canceled: u64,
    /// Devices whose action is still open.
    pub in_flight: u64,
}

impl Counts {
    /// Devices without an action yet (group not started, or the device was busy with another action).
    pub fn waiting(&self) -> u64 {
        self.total.saturating_sub(self.finished + self.failed + self.canceled + self.in_flight)
    }
}

/// One group as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name ("canary").
    pub name: String,
    /// Percent of the group's devices that must succeed before the next group starts.
    pub success_threshold: u32,
    /// Percent of the group's devices that may fail before the rollout pauses itself.
    pub error_threshold: u32,
    /// Whether an approver must approve before it starts.
    pub approval: bool,
    /// Where it stands.
    pub state: GroupState,
    /// Who approved it, once approved.
    pub approved_by: Option<String>,
    /// Failures an operator accepted by resuming after a self-pause (see the module doc).
    pub accepted_failures: u64,
    /// Its devices' counts.
    pub counts: Counts,
}

impl Group {
    /// Whether the success share reaches the threshold (a group with no devices always does).
    pub fn meets_success(&self) -> bool {
        // Integer form of finished / total ≥ threshold / 100, exact and free of division by zero.
        u128::from(self.counts.finished) * 100 >= u128::from(self.success_threshold) * u128::from(self.counts.total)
    }

    /// Whether the failure share is above the error threshold.
    pub fn exceeds_errors(&self) -> bool {
        u128::from(self.counts.failed) * 100 > u128::from(self.error_threshold) * u128::from(self.counts.total)
    }

    /// Why this group halts the rollout, for operators: "group canary: 1 of 2 devices failed (50 %), above its
    /// error threshold of 0 %".
    pub fn halt_reason(&self) -> String {
        let share = (self.counts.failed * 100).checked_div(self.counts.total).unwrap_or(0);
        format!(
            "group {}: {} of {} devices failed ({share} %), above its error threshold of {} %",
            self.name, self.counts.failed, self.counts.total, self.error_threshold
        )
    }
}

/// One rollout as the engine sees it: everything a decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Where the rollout stands.
    pub state: RolloutState,
    /// The group reached last (`groups.len()` once finished).
    pub current: usize,
    /// The groups, in order.
    pub groups: Vec<Group>,
    /// Who created it (may not approve its groups).
    pub creator: String,
    /// Not before this time (ms since the epoch).
    pub start_at_ms: Option<i64>,
    /// Why it is paused.
    pub reason: Option<String>,
}

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduler's clock: start a due rollout, re-check thresholds.
    Tick {
        /// Now (ms since the epoch).
        now: i64,
    },
    /// A group's counts changed (devices reported).
    GroupCounts {
        /// The group's index.
        group: usize,
        /// Its counts now.
        counts: Counts,
    },
    /// An approver approves the group that waits for it.
    Approve {
        /// The group's index.
        group: usize,
        /// The approver (`operator:NAME`).
        by: String,
    },
    /// An operator pauses the rollout.
    Pause {
        /// Who.
        by: String,
    },
    /// An operator resumes a paused rollout.
    Resume {
        /// Who.
        by: String,
        /// Now (ms since the epoch), for a start time still ahead.
        now: i64,
    },
    /// An operator cancels the rollout.
    Cancel {
        /// Who.
        by: String,
    },
}

impl Event {
    /// The event's name, for refusals and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Tick { .. } => "tick",
            Event::GroupCounts { .. } => "group-counts",
            Event::Approve { .. } => "approve",
            Event::Pause { .. } => "pause",
            Event::Resume { .. } => "resume",
            Event::Cancel { .. } => "cancel",
        }
    }
}

/// What to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The start time came: the rollout begins.
    Started,
    /// Create an action for every device of group `.0` (and for devices joining it later while it runs).
    StartGroup(usize),
    /// Group `.0` is reached and waits for an approver.
    WaitForApproval(usize),
    /// Group `.0` was approved.
    Approved {
        /// The group.
        group: usize,
        /// By whom.
        by: String,
    },
    /// Group `.0` met its success threshold (or had no devices).
    GroupDone(usize),
    /// The rollout is paused.
    Pause {
        /// Who paused it: `None` = the rollout itself (an error threshold).
        by: Option<String>,
        /// Why.
        reason: String,
    },
    /// The rollout was resumed; group `group` keeps running with `accepted_failures` failures accepted.
    Resumed {
        /// Who.
        by: String,
        /// The current group.
        group: usize,
        /// Failures accepted by this resume (0 if the group was not running).
        accepted_failures: u64,
    },
    /// Every group is done.
    Finish,
    /// The rollout was cancelled.
    Cancelled {
        /// Who.
        by: String,
    },
    /// Cancel the rollout's open actions.
    CancelOpenActions,
}

/// Why an event was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The rollout is over; nothing moves it again.
    #[error("the rollout is {}: {event} does not apply", .state.as_str())]
    Terminal {
        /// The event's name.
        event: &'static str,
        /// Finished or cancelled.
        state: RolloutState,
    },
    /// The rollout has no such group.
    #[error("the rollout has no group {group} (it has {len})")]
    NoSuchGroup {
        /// The index asked for.
        group: usize,
        /// How many groups there are.
        len: usize,
    },
    /// Approving a group that does not wait for an approval.
    #[error("group {group} is not waiting for an approval (the rollout is {}, at group {current})", .state.as_str())]
    NotWaitingApproval {
        /// The group asked for.
        group: usize,
        /// The rollout's state.
        state: RolloutState,
        /// Its current group.
        current: usize,
    },
    /// The creator tried to approve their own rollout.
    #[error("{by} created this rollout and may not approve it")]
    ApproverIsCreator {
        /// The approver.
        by: String,
    },
    /// Pausing a rollout that is already paused.
    #[error("the rollout is already paused")]
    AlreadyPaused,
    /// Resuming a rollout that is not paused.
    #[error("the rollout is {}, not paused", .0.as_str())]
    NotPaused(RolloutState),
}

impl Rollout {
    /// Handles an event, changing the rollout in memory (nothing is persisted here). `Err`: refused, unchanged.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Decision>, Refusal> {
        if self.state.is_terminal() {
            return Err(Refusal::Terminal { event: event.name(), state: self.state });
        }
        let mut out = Vec::new();
        match event {
            Event::Tick { now } => {
                if self.state == RolloutState::Scheduled && self.start_at_ms.is_none_or(|t| t <= now) {
                    out.push(Decision::Started);
                    self.reach(0, &mut out);
                }
                self.evaluate(&mut out);
            }
            Event::GroupCounts { group, counts } => {
                self.group_index(group)?;
                self.groups[group].counts = counts;
                self.evaluate(&mut out);
            }
            Event::Approve { group, by } => self.approve(group, by, &mut out)?,
            Event::Pause { by } => self.pause(by, &mut out)?,
            Event::Resume { by, now } => self.resume(by, now, &mut out)?,
            Event::Cancel { by } => {
                self.state = RolloutState::Cancelled;
                self.reason = None;
                out.push(Decision::Cancelled { by });
                out.push(Decision::CancelOpenActions);
            }
        }
        Ok(out)
    }

    fn group_index(&self, group: usize) -> Result<(), Refusal> {
        if group >= self.groups.len() {
            return Err(Refusal::NoSuchGroup { group, len: self.groups.len() });
        }
        Ok(())
    }

    /// Moves to group `i`: finishes past the last group, waits for an approval the group needs, or starts it.
    fn reach(&mut self, i: usize, out: &mut Vec<Decision>) {
        self.current = i;
        let Some(group) = self.groups.get_mut(i) else {
            self.state = RolloutState::Finished;
            self.reason = None;
            out.push(Decision::Finish);
            return;
        };
        if group.approval && group.approved_by.is_none() {
            group.state = GroupState::WaitingApproval;
            self.state = RolloutState::WaitingApproval;
            out.push(Decision::WaitForApproval(i));
        } else {
            group.state = GroupState::Running;
            self.state = RolloutState::Running;
            out.push(Decision::StartGroup(i));
        }
    }

    /// Checks the running group's thresholds, advancing through every group that is done at once.
    fn evaluate(&mut self, out: &mut Vec<Decision>) {
        while self.state == RolloutState::Running {
            let i = self.current;
            let Some(group) = self.groups.get_mut(i) else { return };
            if group.state != GroupState::Running {
                return;
            }
            if group.counts.failed > group.accepted_failures && group.exceeds_errors() {
                let reason = group.halt_reason();
                self.state = RolloutState::Paused;
                self.reason = Some(reason.clone());
                out.push(Decision::Pause { by: None, reason });
                return;
            }
            if !group.meets_success() {
                return;
            }
            group.state = GroupState::Done;
            out.push(Decision::GroupDone(i));
            self.reach(i + 1, out);
        }
    }

    fn approve(&mut self, group: usize, by: String, out: &mut Vec<Decision>) -> Result<(), Refusal> {
        self.group_index(group)?;
        if self.state != RolloutState::WaitingApproval
            || self.current != group
            || self.groups[group].state != GroupState::WaitingApproval
        {
            return Err(Refusal::NotWaitingApproval { group, state: self.state, current: self.current });
        }
        if by == self.creator {
            return Err(Refusal::ApproverIsCreator { by });
        }
        self.groups[group].approved_by = Some(by.clone());
        out.push(Decision::Approved { group, by });
        self.reach(group, out);
        self.evaluate(out);
        Ok(())
    }

    fn pause(&mut self, by: String, out: &mut Vec<Decision>) -> Result<(), Refusal> {
        if self.state == RolloutState::Paused {
            return Err(Refusal::AlreadyPaused);
        }
        let reason = format!("paused by {by}");
        self.state = RolloutState::Paused;
        self.reason = Some(reason.clone());
        out.push(Decision::Pause { by: Some(by), reason });
        Ok(())
    }

    fn resume(&mut self, by: String, now: i64, out: &mut Vec<Decision>) -> Result<(), Refusal> {
        if self.state != RolloutState::Paused {
            return Err(Refusal::NotPaused(self.state));
        }
        self.reason = None;
        let i = self.current;
        let group_state = self.groups.get(i).map(|g| g.state);
        let mut accepted = 0;
        match group_state {
            Some(GroupState::Running) => {
                let group = &mut self.groups[i];
                // The failures seen so far were looked at; only a further one halts again (module doc).
                group.accepted_failures = group.counts.failed;
                accepted = group.accepted_failures;
                self.state = RolloutState::Running;
            }
            Some(GroupState::WaitingApproval) => self.state = RolloutState::WaitingApproval,
            // Paused before the group was reached: before the first group (start time) or in no other case, as
            // every other transition reaches its group in the same step.
            Some(GroupState::Pending) | Some(GroupState::Done) | None => {
                self.state = RolloutState::Scheduled;
            }
        }
        out.push(Decision::Resumed { by, group: i, accepted_failures: accepted });
        if self.state == RolloutState::Scheduled && self.start_at_ms.is_none_or(|t| t <= now) {
            out.push(Decision::Started);
            self.reach(i, out);
        }
        self.evaluate(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, total: u64, success: u32, error: u32, approval: bool) -> Group {
        Group {
            name: name.into(),
            success_threshold: success,
            error_threshold: error,
            approval,
            state: GroupState::Pending,
            approved_by: None,
            accepted_failures: 0,
            counts: Counts { total, ..Counts::default() },
        }
    }

    fn rollout(groups: Vec<Group>) -> Rollout {
        Rollout {
            state: RolloutState::Scheduled,
            current: 0,
            groups,
            creator: "operator:alice".into(),
            start_at_ms: None,
            reason: None,
        }
    }

    fn counts(total: u64, finished: u64, failed: u64) -> Counts {
        Counts { total, finished, failed, canceled: 0, in_flight: total - finished - failed }
    }

    fn tick(r: &mut Rollout) -> Vec<Decision> {
        r.handle(Event::Tick { now: 1_000 }).unwrap()
    }

    #[test]
    fn groups_advance_in_order_on_their_success_threshold() {
        let mut r = rollout(vec![group("canary", 2, 100, 0, false), group("rest", 4, 50, 50, false)]);
        assert_eq!(tick(&mut r), vec![Decision::Started, Decision::StartGroup(0)]);
        assert_eq!(tick(&mut r), vec![], "a second tick with nothing new decides nothing");
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(2, 1, 0) }).unwrap();
        assert_eq!(d, vec![]);
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(2, 2, 0) }).unwrap();
        assert_eq!(d, vec![Decision::GroupDone(0), Decision::StartGroup(1)]);
        assert_eq!((r.state, r.current), (RolloutState::Running, 1));
        // 50 % is enough for the last group; one failure of four is within its 50 % error threshold.
        let d = r.handle(Event::GroupCounts { group: 1, counts: counts(4, 2, 1) }).unwrap();
        assert_eq!(d, vec![Decision::GroupDone(1), Decision::Finish]);
        assert_eq!((r.state, r.current), (RolloutState::Finished, 2));
    }

    #[test]
    fn empty_groups_are_done_at_once() {
        let mut r = rollout(vec![group("a", 0, 100, 0, false), group("b", 0, 100, 0, false)]);
        assert_eq!(
            tick(&mut r),
            vec![
                Decision::Started,
                Decision::StartGroup(0),
                Decision::GroupDone(0),
                Decision::StartGroup(1),
                Decision::GroupDone(1),
                Decision::Finish
            ]
        );
        assert_eq!(r.state, RolloutState::Finished);
    }

    #[test]
    fn a_failure_above_the_error_threshold_pauses_with_a_reason() {
        let mut r = rollout(vec![group("canary", 2, 100, 0, false), group("rest", 8, 100, 10, false)]);
        tick(&mut r);
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(2, 1, 1) }).unwrap();
        let reason = "group canary: 1 of 2 devices failed (50 %), above its error threshold of 0 %";
        assert_eq!(d, vec![Decision::Pause { by: None, reason: reason.into() }]);
        assert_eq!((r.state, r.reason.as_deref(), r.current), (RolloutState::Paused, Some(reason), 0));
        assert_eq!(r.groups[1].state, GroupState::Pending, "the later group is untouched");
        // While paused, ticks and counts decide nothing.
        assert_eq!(tick(&mut r), vec![]);
        assert_eq!(r.handle(Event::GroupCounts { group: 0, counts: counts(2, 1, 1) }).unwrap(), vec![]);
    }

    #[test]
    fn the_error_threshold_is_a_share_and_is_checked_before_success() {
        let mut r = rollout(vec![group("wide", 10, 50, 10, false)]);
        tick(&mut r);
        // 1 of 10 = 10 %: not above 10 %.
        assert_eq!(r.handle(Event::GroupCounts { group: 0, counts: counts(10, 4, 1) }).unwrap(), vec![]);
        // 6 succeeded (enough) but 2 of 10 failed: halts rather than advancing.
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(10, 6, 2) }).unwrap();
        assert!(matches!(d.as_slice(), [Decision::Pause { by: None, .. }]), "{d:?}");
    }

    #[test]
    fn resume_continues_when_the_group_met_its_success_threshold() {
        let mut r = rollout(vec![group("canary", 4, 50, 0, false), group("rest", 3, 100, 0, false)]);
        tick(&mut r);
        r.handle(Event::GroupCounts { group: 0, counts: counts(4, 1, 1) }).unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        r.groups[0].counts = counts(4, 2, 1);
        let d = r.handle(Event::Resume { by: "operator:bob".into(), now: 0 }).unwrap();
        assert_eq!(
            d,
            vec![
                Decision::Resumed { by: "operator:bob".into(), group: 0, accepted_failures: 1 },
                Decision::GroupDone(0),
                Decision::StartGroup(1)
            ]
        );
        assert_eq!((r.state, r.reason.as_ref()), (RolloutState::Running, None));
    }

    #[test]
    fn resume_keeps_running_the_group_and_halts_again_only_on_a_new_failure() {
        let mut r = rollout(vec![group("canary", 4, 100, 0, false), group("rest", 3, 100, 0, false)]);
        tick(&mut r);
        r.handle(Event::GroupCounts { group: 0, counts: counts(4, 0, 1) }).unwrap();
        let d = r.handle(Event::Resume { by: "operator:bob".into(), now: 0 }).unwrap();
        assert_eq!(d, vec![Decision::Resumed { by: "operator:bob".into(), group: 0, accepted_failures: 1 }]);
        assert_eq!((r.state, r.current), (RolloutState::Running, 0));
        assert_eq!(tick(&mut r), vec![], "the accepted failure does not halt again");
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(4, 1, 2) }).unwrap();
        assert!(matches!(d.as_slice(), [Decision::Pause { by: None, .. }]), "{d:?}");
    }

    #[test]
    fn an_approval_gates_its_group_and_the_creator_may_not_give_it() {
        let mut r = rollout(vec![group("canary", 1, 100, 0, false), group("wide", 5, 100, 0, true)]);
        tick(&mut r);
        let d = r.handle(Event::GroupCounts { group: 0, counts: counts(1, 1, 0) }).unwrap();
        assert_eq!(d, vec![Decision::GroupDone(0), Decision::WaitForApproval(1)]);
        assert_eq!((r.state, r.groups[1].state), (RolloutState::WaitingApproval, GroupState::WaitingApproval));
        assert_eq!(tick(&mut r), vec![], "time alone does not start it");
        assert_eq!(
            r.handle(Event::Approve { group: 1, by: "operator:alice".into() }),
            Err(Refusal::ApproverIsCreator { by: "operator:alice".into() })
        );
        assert_eq!(r.state, RolloutState::WaitingApproval);
        let d = r.handle(Event::Approve { group: 1, by: "operator:carol".into() }).unwrap();
        assert_eq!(d, vec![Decision::Approved { group: 1, by: "operator:carol".into() }, Decision::StartGroup(1)]);
        assert_eq!(r.groups[1].approved_by.as_deref(), Some("operator:carol"));
    }

    #[test]
    fn approving_a_group_that_does_not_wait_is_refused() {
        let mut r = rollout(vec![group("canary", 1, 100, 0, false), group("wide", 5, 100, 0, true)]);
        tick(&mut r);
        assert_eq!(
            r.handle(Event::Approve { group: 1, by: "operator:carol".into() }),
            Err(Refusal::NotWaitingApproval { group: 1, state: RolloutState::Running, current: 0 })
        );
        assert_eq!(
            r.handle(Event::Approve { group: 7, by: "operator:carol".into() }),
            Err(Refusal::NoSuchGroup { group: 7, len: 2 })
        );
        assert_eq!(r.groups[1].approved_by, None);
    }

    #[test]
    fn an_approval_is_needed_even_for_the_first_group() {
        let mut r = rollout(vec![group("canary", 1, 100, 0, true)]);
        assert_eq!(tick(&mut r), vec![Decision::Started, Decision::WaitForApproval(0)]);
        let d = r.handle(Event::Approve { group: 0, by: "operator:carol".into() }).unwrap();
        assert_eq!(d, vec![Decision::Approved { group: 0, by: "operator:carol".into() }, Decision::StartGroup(0)]);
    }

    #[test]
    fn an_empty_group_still_waits_for_its_approval() {
        let mut r = rollout(vec![group("gate", 0, 100, 0, true), group("wide", 5, 100, 0, false)]);
        assert_eq!(tick(&mut r), vec![Decision::Started, Decision::WaitForApproval(0)]);
        let d = r.handle(Event::Approve { group: 0, by: "operator:carol".into() }).unwrap();
        assert_eq!(
            d,
            vec![
                Decision::Approved { group: 0, by: "operator:carol".into() },
                Decision::StartGroup(0),
                Decision::GroupDone(0),
                Decision::StartGroup(1)
            ]
        );
        assert_eq!(
            r.handle(Event::GroupCounts { group: 2, counts: Counts::default() }),
            Err(Refusal::NoSuchGroup { group: 2, len: 2 })
        );
    }

    #[test]
    fn a_future_start_time_keeps_it_scheduled() {
        let mut r = rollout(vec![group("all", 3, 100, 0, false)]);
        r.start_at_ms = Some(5_000);
        assert_eq!(r.handle(Event::Tick { now: 4_999 }).unwrap(), vec![]);
        assert_eq!(r.state, RolloutState::Scheduled);
        assert_eq!(r.handle(Event::Tick { now: 5_000 }).unwrap(), vec![Decision::Started, Decision::StartGroup(0)]);
    }

    #[test]
    fn a_rollout_paused_before_its_start_resumes_into_scheduled() {
        let mut r = rollout(vec![group("all", 3, 100, 0, false)]);
        r.start_at_ms = Some(5_000);
        r.handle(Event::Pause { by: "operator:bob".into() }).unwrap();
        assert_eq!(r.handle(Event::Tick { now: 6_000 }).unwrap(), vec![], "paused: the start time passes unused");
        let d = r.handle(Event::Resume { by: "operator:bob".into(), now: 4_000 }).unwrap();
        assert_eq!(d, vec![Decision::Resumed { by: "operator:bob".into(), group: 0, accepted_failures: 0 }]);
        assert_eq!(r.state, RolloutState::Scheduled);
        r.handle(Event::Pause { by: "operator:bob".into() }).unwrap();
        let d = r.handle(Event::Resume { by: "operator:bob".into(), now: 6_000 }).unwrap();
        assert_eq!(
            d,
            vec![
                Decision::Resumed { by: "operator:bob".into(), group: 0, accepted_failures: 0 },
                Decision::Started,
                Decision::StartGroup(0)
            ]
        );
    }

    #[test]
    fn a_rollout_paused_while_waiting_for_approval_waits_again_on_resume() {
        let mut r = rollout(vec![group("canary", 1, 100, 0, true)]);
        tick(&mut r);
        r.handle(Event::Pause { by: "operator:bob".into() }).unwrap();
        assert!(matches!(
            r.handle(Event::Approve { group: 0, by: "operator:carol".into() }),
            Err(Refusal::NotWaitingApproval { state: RolloutState::Paused, .. })
        ));
        r.handle(Event::Resume { by: "operator:bob".into(), now: 0 }).unwrap();
        assert_eq!(r.state, RolloutState::WaitingApproval);
    }

    #[test]
    fn pause_and_resume_are_checked() {
        let mut r = rollout(vec![group("all", 3, 100, 0, false)]);
        assert_eq!(
            r.handle(Event::Resume { by: "b".into(), now: 0 }),
            Err(Refusal::NotPaused(RolloutState::Scheduled))
        );
        let d = r.handle(Event::Pause { by: "operator:bob".into() }).unwrap();
        assert_eq!(
            d,
            vec![Decision::Pause { by: Some("operator:bob".into()), reason: "paused by operator:bob".into() }]
        );
        assert_eq!(r.handle(Event::Pause { by: "operator:bob".into() }), Err(Refusal::AlreadyPaused));
    }

    #[test]
    fn cancel_cancels_open_actions_and_ends_everything() {
        let mut r = rollout(vec![group("canary", 2, 100, 0, false), group("rest", 2, 100, 0, false)]);
        tick(&mut r);
        let d = r.handle(Event::Cancel { by: "operator:bob".into() }).unwrap();
        assert_eq!(d, vec![Decision::Cancelled { by: "operator:bob".into() }, Decision::CancelOpenActions]);
        assert_eq!((r.state, r.groups[1].state), (RolloutState::Cancelled, GroupState::Pending));
        let frozen = r.clone();
        for e in [
            Event::Tick { now: 0 },
            Event::Resume { by: "operator:bob".into(), now: 0 },
            Event::Pause { by: "operator:bob".into() },
            Event::Cancel { by: "operator:bob".into() },
            Event::GroupCounts { group: 0, counts: counts(2, 2, 0) },
        ] {
            let name = e.name();
            assert_eq!(r.handle(e), Err(Refusal::Terminal { event: name, state: RolloutState::Cancelled }));
        }
        assert_eq!(r, frozen);
    }

    #[test]
    fn resuming_a_finished_rollout_is_refused() {
        let mut r = rollout(vec![group("all", 0, 100, 0, false)]);
        tick(&mut r);
        assert_eq!(r.state, RolloutState::Finished);
        assert_eq!(
            r.handle(Event::Resume { by: "operator:bob".into(), now: 0 }),
            Err(Refusal::Terminal { event: "resume", state: RolloutState::Finished })
        );
    }

    #[test]
    fn failures_in_a_done_group_do_not_halt() {
        let mut r = rollout(vec![group("canary", 4, 50, 50, false), group("rest", 4, 100, 0, false)]);
        tick(&mut r);
        r.handle(Event::GroupCounts { group: 0, counts: counts(4, 2, 0) }).unwrap();
        assert_eq!(r.current, 1);
        assert_eq!(r.handle(Event::GroupCounts { group: 0, counts: counts(4, 2, 2) }).unwrap(), vec![]);
        assert_eq!(r.state, RolloutState::Running);
    }

    mod property {
        use proptest::prelude::*;

        use super::*;

        fn arb_event(groups: usize) -> impl Strategy<Value = Event> {
            let who = prop_oneof![Just("operator:alice".to_owned()), Just("operator:carol".to_owned())];
            prop_oneof![
                3 => (0i64..10_000).prop_map(|now| Event::Tick { now }),
                4 => (0..groups + 1, 0u64..6, 0u64..6, 0u64..6).prop_map(|(group, total, a, b)| {
                    let finished = a.min(total);
                    let failed = b.min(total - finished);
                    Event::GroupCounts {
                        group,
                        counts: Counts { total, finished, failed, canceled: 0, in_flight: total - finished - failed },
                    }
                }),
                2 => (0..groups + 1, who.clone()).prop_map(|(group, by)| Event::Approve { group, by }),
                1 => who.clone().prop_map(|by| Event::Pause { by }),
                1 => (who, 0i64..10_000).prop_map(|(by, now)| Event::Resume { by, now }),
                1 => Just(Event::Cancel { by: "operator:bob".into() }),
            ]
        }

        fn arb_rollout() -> impl Strategy<Value = Rollout> {
            let g = (0u64..4, 0u32..=100, 0u32..=100, any::<bool>()).prop_map(|(total, s, e, approval)| Group {
                name: "g".into(),
                success_threshold: s,
                error_threshold: e,
                approval,
                state: GroupState::Pending,
                approved_by: None,
                accepted_failures: 0,
                counts: Counts { total, ..Counts::default() },
            });
            (proptest::collection::vec(g, 1..5), proptest::option::of(0i64..10_000)).prop_map(|(groups, start)| {
                Rollout {
                    state: RolloutState::Scheduled,
                    current: 0,
                    groups,
                    creator: "operator:alice".into(),
                    start_at_ms: start,
                    reason: None,
                }
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn random_events_keep_the_invariants(
                mut r in arb_rollout(),
                events in proptest::collection::vec(arb_event(4), 0..40),
            ) {
                let mut started: Vec<usize> = Vec::new();
                let mut approved: Vec<usize> = Vec::new();
                for e in events {
                    let before = r.clone();
                    match r.handle(e) {
                        Err(refusal) => {
                            prop_assert_eq!(&r, &before, "a refusal ({}) changed the rollout", refusal);
                        }
                        Ok(decisions) => {
                            prop_assert!(!before.state.is_terminal(), "a terminal rollout accepted an event");
                            for d in decisions {
                                match d {
                                    Decision::Approved { group, by } => {
                                        prop_assert_ne!(by, r.creator.clone());
                                        approved.push(group);
                                    }
                                    Decision::StartGroup(i) => {
                                        prop_assert_eq!(i, started.len(), "group {} started out of order", i);
                                        prop_assert!(!r.groups[i].approval || approved.contains(&i),
                                            "group {} started without its approval", i);
                                        started.push(i);
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    if before.state.is_terminal() {
                        prop_assert_eq!(r.state, before.state, "left a terminal state");
                    }
                    prop_assert!(r.current <= r.groups.len());
                    // Groups before the current one are done; after it, untouched.
                    for (i, g) in r.groups.iter().enumerate() {
                        if i < r.current {
                            prop_assert_eq!(g.state, GroupState::Done);
                        } else if i > r.current {
                            prop_assert_eq!(g.state, GroupState::Pending);
                        }
                    }
                }
            }
        }
    }
}
