//! Rollouts against a real (temporary) SQLite database: devices' outcomes are simulated by moving their actions
//! with `actions::transition`, as the device API does on feedback; the scheduler is driven by calling `tick` with
//! chosen times.

use std::collections::{BTreeMap, BTreeSet};

use otter_server::actions::{self, Action};
use otter_server::config::Config;
use otter_server::db::{Engine, now_ms};
use otter_server::error::HttpError;
use otter_server::model::{ActionKind, ActionState, Filter, GroupSpec, RolloutSpec, RolloutState, Speed};
use otter_server::rollout::engine::GroupState;
use otter_server::rollout::{self, CreateRollout, RolloutView};
use otter_server::{AppState, audit, devices};
use sqlx::Row;

mod common;
use common::Backend;

const ALICE: &str = "operator:alice";
const CAROL: &str = "operator:carol";

struct Fleet {
    dir: tempfile::TempDir,
    database: Option<String>,
    state: AppState,
    artifact: i64,
}

async fn fleet(b: Backend) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.path().join("fleet")).unwrap();
    let database = b.url();
    let mut config = Config::new(dir.path().join("data"), dir.path().join("fleet.pub"));
    config.database = database.clone();
    let state = AppState::open(config).await.unwrap();
    let artifact = sqlx::query(
        "INSERT INTO artifacts (sha256, sha1, md5, size, filename, version, compatible, security_version, signer, \
         uploaded_by, created_ms) VALUES ($1, 'x', 'x', 1, 'r.otter', '2.0', '[\"gw-a\"]', 1, 'fleet', $2, 0) RETURNING id",
    )
    .bind("a".repeat(64))
    .bind(ALICE)
    .fetch_one(&state.db.pool)
    .await
    .unwrap()
    .try_get("id")
    .unwrap();
    Fleet { dir, database, state, artifact }
}

impl Fleet {
    /// Another server instance on the same data directory and database.
    async fn second_instance(&self) -> AppState {
        let dir = self.dir.path();
        let mut config = Config::new(dir.join("data"), dir.join("fleet.pub"));
        config.database = self.database.clone();
        AppState::open(config).await.unwrap()
    }

    async fn device(&self, id: &str, compatible: &str, tags: &[&str]) -> i64 {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        devices::register(&self.state.db, id, Some(compatible), &tags, false, ALICE).await.unwrap().0.id
    }

    async fn devices(&self, n: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(self.device(&format!("gw-{i:03}"), "gw-a", &[]).await);
        }
        ids
    }

    async fn create(&self, spec: RolloutSpec) -> HttpResult {
        let req =
            CreateRollout { name: "release 2.0".into(), artifact_id: self.artifact, filter: Filter::default(), spec };
        rollout::create(&self.state, req, ALICE).await
    }

    async fn get(&self, id: i64) -> RolloutView {
        rollout::get(&self.state.db, id).await.unwrap()
    }

    async fn tick(&self) -> usize {
        rollout::tick(&self.state, now_ms()).await.unwrap()
    }

    /// The rollout's actions, by group.
    async fn actions(&self, rollout: i64) -> BTreeMap<i64, Vec<Action>> {
        let rows = sqlx::query("SELECT * FROM actions WHERE rollout_id = $1 ORDER BY id")
            .bind(rollout)
            .fetch_all(&self.state.db.pool)
            .await
            .unwrap();
        let mut out: BTreeMap<i64, Vec<Action>> = BTreeMap::new();
        for r in rows {
            let a = actions::from_row(&r).unwrap();
            out.entry(a.group_idx.unwrap()).or_default().push(a);
        }
        out
    }

    async fn group_actions(&self, rollout: i64, group: i64) -> Vec<Action> {
        self.actions(rollout).await.remove(&group).unwrap_or_default()
    }

    /// The device reports the end of its action.
    async fn report(&self, action: &Action, ok: bool) {
        let to = if ok { ActionState::Finished } else { ActionState::Error };
        let from = [ActionState::WaitConfirmation, ActionState::Running, ActionState::Downloaded];
        assert!(actions::transition(&self.state.db, action.id, &from, to, Some("reported")).await.unwrap());
    }

    async fn report_group(&self, rollout: i64, group: i64, ok: bool) {
        for a in self.group_actions(rollout, group).await.iter().filter(|a| !a.state.is_terminal()) {
            self.report(a, ok).await;
        }
    }

    async fn audit_events(&self, rollout: i64) -> Vec<(String, String, serde_json::Value)> {
        let q = audit::Query { subject: Some(format!("rollout:{rollout}")), limit: Some(1000), ..Default::default() };
        let mut entries = audit::list(&self.state.db, &q).await.unwrap();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| (e.actor, e.event, serde_json::from_str(&e.detail).unwrap())).collect()
    }

    async fn members(&self, rollout: i64) -> Vec<(i64, i64)> {
        sqlx::query("SELECT device_id, group_idx FROM rollout_members WHERE rollout_id = $1 ORDER BY device_id")
            .bind(rollout)
            .fetch_all(&self.state.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.try_get("device_id").unwrap(), r.try_get("group_idx").unwrap()))
            .collect()
    }
}

type HttpResult = Result<RolloutView, HttpError>;

fn group(name: &str, percent: Option<u32>) -> GroupSpec {
    GroupSpec { name: name.into(), percent, devices: None, success_threshold: 100, error_threshold: 0, approval: false }
}

fn listed(name: &str, devices: &[&str]) -> GroupSpec {
    GroupSpec { devices: Some(devices.iter().map(|d| d.to_string()).collect()), ..group(name, None) }
}

fn spec(groups: Vec<GroupSpec>) -> RolloutSpec {
    RolloutSpec {
        groups,
        kind: ActionKind::Forced,
        speed: Speed::Standard,
        window: None,
        start_at_ms: None,
        confirmation_required: false,
        dynamic: false,
    }
}

fn events(entries: &[(String, String, serde_json::Value)]) -> Vec<&str> {
    entries.iter().map(|(_, e, _)| e.as_str()).collect()
}

async fn a_rollout_advances_group_by_group_to_finished(b: Backend) {
    let f = fleet(b).await;
    f.devices(10).await;
    let r =
        f.create(spec(vec![group("canary", Some(10)), group("early", Some(40)), group("rest", None)])).await.unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.groups.iter().map(|g| g.counts.total).collect::<Vec<_>>(), vec![1, 4, 5]);
    assert_eq!(f.group_actions(r.id, 0).await.len(), 1, "the canary started at creation");
    assert!(f.group_actions(r.id, 1).await.is_empty());

    for (g, size) in [(0, 1), (1, 4), (2, 5)] {
        let actions = f.group_actions(r.id, g).await;
        assert_eq!(actions.len(), size);
        assert!(actions.iter().all(|a| a.kind == ActionKind::Forced && a.artifact_id == f.artifact));
        // Half-way, the group holds.
        f.report(&actions[0], true).await;
        if size > 1 {
            f.tick().await;
            assert_eq!(f.get(r.id).await.current_group, Some(g as usize));
        }
        f.report_group(r.id, g, true).await;
        f.tick().await;
    }
    let r = f.get(r.id).await;
    assert_eq!((r.state, r.current_group), (RolloutState::Finished, None));
    assert!(r.groups.iter().all(|g| g.state == GroupState::Done && g.counts.finished == g.counts.total));
    let log = f.audit_events(r.id).await;
    assert_eq!(
        events(&log),
        vec![
            "rollout.created",
            "rollout.started",
            "rollout.group-started",
            "rollout.group-done",
            "rollout.group-started",
            "rollout.group-done",
            "rollout.group-started",
            "rollout.group-done",
            "rollout.finished"
        ]
    );
    assert_eq!(log[0].0, ALICE);
    assert_eq!(log[0].2["members"], 10);
    assert!(log[1..].iter().all(|(actor, _, _)| actor == rollout::SERVER));
    // Nothing new: a tick changes nothing.
    assert_eq!(f.tick().await, 0);
    assert_eq!(f.audit_events(r.id).await.len(), log.len());
    assert!(audit::verify(&f.state.db).await.unwrap().broken.is_none());
}

async fn a_failing_canary_halts_the_rollout_before_the_rest_is_touched(b: Backend) {
    let f = fleet(b).await;
    f.devices(6).await;
    let r = f.create(spec(vec![listed("canary", &["gw-000", "gw-001"]), group("rest", None)])).await.unwrap();
    let canary = f.group_actions(r.id, 0).await;
    assert_eq!(canary.len(), 2);
    f.report(&canary[0], true).await;
    f.report(&canary[1], false).await;
    assert_eq!(f.tick().await, 1);
    let r = f.get(r.id).await;
    let reason = "group canary: 1 of 2 devices failed (50 %), above its error threshold of 0 %";
    assert_eq!((r.state, r.reason.as_deref(), r.current_group), (RolloutState::Paused, Some(reason), Some(0)));
    assert_eq!(r.groups[1].state, GroupState::Pending);
    assert_eq!(r.groups[0].counts.failed, 1);
    for _ in 0..3 {
        assert_eq!(f.tick().await, 0);
    }
    assert!(f.group_actions(r.id, 1).await.is_empty(), "no actions for the later group");
    let log = f.audit_events(r.id).await;
    let (actor, event, detail) = log.last().unwrap();
    assert_eq!(
        (actor.as_str(), event.as_str(), detail["reason"].as_str()),
        (rollout::SERVER, "rollout.paused", Some(reason))
    );
    // Pausing again is refused; resuming goes on with the group (it did not meet its success threshold), the
    // failure it accepted does not halt it again, and nothing reaches the later group until the canary succeeds.
    assert!(matches!(rollout::pause(&f.state, r.id, ALICE).await, Err(HttpError::Conflict(_))));
    let r = rollout::resume(&f.state, r.id, CAROL).await.unwrap();
    assert_eq!((r.state, r.current_group, r.groups[0].accepted_failures), (RolloutState::Running, Some(0), 1));
    assert_eq!(f.tick().await, 0);
    assert!(f.group_actions(r.id, 1).await.is_empty());
}

async fn resume_advances_when_the_group_met_its_success_threshold(b: Backend) {
    let f = fleet(b).await;
    f.devices(5).await;
    let mut canary = group("canary", Some(40));
    canary.success_threshold = 50;
    let r = f.create(spec(vec![canary, group("rest", None)])).await.unwrap();
    let actions = f.group_actions(r.id, 0).await;
    assert_eq!(actions.len(), 2);
    f.report(&actions[0], false).await;
    f.tick().await;
    assert_eq!(f.get(r.id).await.state, RolloutState::Paused);
    f.report(&actions[1], true).await;
    assert_eq!(f.tick().await, 0, "paused: the success changes nothing by itself");
    let r = rollout::resume(&f.state, r.id, CAROL).await.unwrap();
    assert_eq!((r.state, r.current_group), (RolloutState::Running, Some(1)));
    assert_eq!(f.group_actions(r.id, 1).await.len(), 3);
}

async fn an_approval_gates_the_next_group_and_the_creator_may_not_give_it(b: Backend) {
    let f = fleet(b).await;
    f.devices(4).await;
    let mut wide = group("wide", None);
    wide.approval = true;
    let r = f.create(spec(vec![group("canary", Some(25)), wide])).await.unwrap();
    f.report_group(r.id, 0, true).await;
    f.tick().await;
    let r = f.get(r.id).await;
    assert_eq!((r.state, r.groups[1].state), (RolloutState::WaitingApproval, GroupState::WaitingApproval));
    assert_eq!(f.tick().await, 0);
    assert!(f.group_actions(r.id, 1).await.is_empty());
    assert!(matches!(rollout::approve(&f.state, r.id, 1, ALICE).await, Err(HttpError::Forbidden(_))));
    assert!(matches!(rollout::approve(&f.state, r.id, 0, CAROL).await, Err(HttpError::Conflict(_))));
    assert!(matches!(rollout::approve(&f.state, r.id, 5, CAROL).await, Err(HttpError::NotFound(_))));
    assert!(f.group_actions(r.id, 1).await.is_empty());
    let r = rollout::approve(&f.state, r.id, 1, CAROL).await.unwrap();
    assert_eq!((r.state, r.groups[1].approved_by.as_deref()), (RolloutState::Running, Some(CAROL)));
    assert!(r.groups[1].approved_ms.is_some() && r.groups[1].started_ms.is_some());
    assert_eq!(f.group_actions(r.id, 1).await.len(), 3);
    let log = f.audit_events(r.id).await;
    assert!(log.iter().any(|(actor, e, d)| actor == CAROL && e == "rollout.approved" && d["group"] == 1));
}

async fn a_future_start_time_keeps_the_rollout_scheduled(b: Backend) {
    let f = fleet(b).await;
    f.devices(3).await;
    let start = now_ms() + 3_600_000;
    let r = f.create(RolloutSpec { start_at_ms: Some(start), ..spec(vec![group("all", None)]) }).await.unwrap();
    assert_eq!(r.state, RolloutState::Scheduled);
    assert_eq!(f.tick().await, 0);
    assert!(f.actions(r.id).await.is_empty());
    assert_eq!(rollout::tick(&f.state, start - 1).await.unwrap(), 0);
    assert_eq!(rollout::tick(&f.state, start).await.unwrap(), 1);
    assert_eq!(f.get(r.id).await.state, RolloutState::Running);
    assert_eq!(f.group_actions(r.id, 0).await.len(), 3);
}

async fn cancel_mid_way_cancels_open_actions_and_leaves_later_groups_untouched(b: Backend) {
    let f = fleet(b).await;
    f.devices(8).await;
    let s = RolloutSpec {
        confirmation_required: true,
        ..spec(vec![group("canary", Some(25)), group("middle", Some(25)), group("rest", None)])
    };
    let r = f.create(s).await.unwrap();
    let canary = f.group_actions(r.id, 0).await;
    assert!(canary.iter().all(|a| a.state == ActionState::WaitConfirmation));
    f.report_group(r.id, 0, true).await;
    f.tick().await;
    let middle = f.group_actions(r.id, 1).await;
    assert_eq!(middle.len(), 2);
    // One device confirmed and is installing; the other has not answered.
    assert!(
        actions::transition(&f.state.db, middle[0].id, &[ActionState::WaitConfirmation], ActionState::Running, None)
            .await
            .unwrap()
    );
    assert!(matches!(rollout::approve(&f.state, r.id, 2, CAROL).await, Err(HttpError::Conflict(_))));
    let r = rollout::cancel(&f.state, r.id, CAROL).await.unwrap();
    assert_eq!(r.state, RolloutState::Cancelled);
    let middle = f.group_actions(r.id, 1).await;
    assert_eq!(middle[0].state, ActionState::Canceling, "fetched: the device is offered cancelAction");
    assert_eq!(middle[1].state, ActionState::Canceled, "never confirmed: cancelled outright");
    assert!(f.group_actions(r.id, 0).await.iter().all(|a| a.state == ActionState::Finished));
    assert!(f.group_actions(r.id, 2).await.is_empty());
    assert_eq!(r.groups[2].state, GroupState::Pending);
    assert_eq!(f.tick().await, 0);
    assert!(matches!(rollout::resume(&f.state, r.id, CAROL).await, Err(HttpError::Conflict(_))));
    assert!(matches!(rollout::cancel(&f.state, r.id, CAROL).await, Err(HttpError::Conflict(_))));
    let log = f.audit_events(r.id).await;
    let tail: Vec<_> = events(&log).into_iter().rev().take(2).collect();
    assert_eq!(tail, vec!["rollout.actions-canceled", "rollout.cancelled"]);
    assert_eq!(log.last().unwrap().2, serde_json::json!({"canceled": 1, "canceling": 1}));
}

async fn devices_that_match_later_join_the_last_group(b: Backend) {
    let f = fleet(b).await;
    f.devices(2).await;
    let r = f
        .create(RolloutSpec { dynamic: true, ..spec(vec![listed("canary", &["gw-000"]), group("rest", None)]) })
        .await
        .unwrap();
    // Joins while the last group has not started: a member, no action yet.
    let late = f.device("gw-late", "gw-a", &[]).await;
    let other = f.device("gw-other", "gw-b", &[]).await;
    assert_eq!(f.tick().await, 1);
    let members = f.members(r.id).await;
    assert!(members.contains(&(late, 1)));
    assert!(!members.iter().any(|(d, _)| *d == other), "a device of another type does not match");
    assert!(f.group_actions(r.id, 1).await.is_empty());
    assert_eq!(f.tick().await, 0);
    f.report_group(r.id, 0, true).await;
    f.tick().await;
    assert_eq!(f.group_actions(r.id, 1).await.len(), 2);
    // Joins while the last group runs: gets its action at once.
    let later = f.device("gw-later", "gw-a", &[]).await;
    assert_eq!(f.tick().await, 1);
    let last = f.group_actions(r.id, 1).await;
    assert_eq!(last.len(), 3);
    assert!(last.iter().any(|a| a.device_id == later));
    assert_eq!(f.get(r.id).await.groups[1].counts.total, 3);
    assert!(events(&f.audit_events(r.id).await).contains(&"rollout.devices-joined"));
}

async fn a_rollout_that_is_not_dynamic_keeps_its_members(b: Backend) {
    let f = fleet(b).await;
    f.devices(2).await;
    let r = f.create(spec(vec![group("all", None)])).await.unwrap();
    f.device("gw-late", "gw-a", &[]).await;
    assert_eq!(f.tick().await, 0);
    assert_eq!(f.members(r.id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_ticks_create_no_duplicate_actions_on_sqlite() {
    two_concurrent_ticks_create_no_duplicate_actions(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_ticks_create_no_duplicate_actions_on_postgres() {
    two_concurrent_ticks_create_no_duplicate_actions(Backend::Postgres).await
}

async fn two_concurrent_ticks_create_no_duplicate_actions(b: Backend) {
    let f = fleet(b).await;
    let other = f.second_instance().await;
    f.devices(30).await;
    let start = now_ms() + 60_000;
    let s =
        RolloutSpec { start_at_ms: Some(start), dynamic: true, ..spec(vec![group("a", Some(50)), group("b", None)]) };
    let r = f.create(s).await.unwrap();
    // Two instances' schedulers tick at the same moment, in parallel.
    let both = |now: i64| {
        let (one, two) = (f.state.clone(), other.clone());
        async move {
            let a = tokio::spawn(async move { rollout::tick(&one, now).await.unwrap() });
            let b = tokio::spawn(async move { rollout::tick(&two, now).await.unwrap() });
            a.await.unwrap() + b.await.unwrap()
        }
    };
    // Either both found work (the second, once it had the lock, found it done) or the second looked after the
    // first had finished.
    assert!((1..=2).contains(&both(start).await));
    let first = f.group_actions(r.id, 0).await;
    assert_eq!(first.len(), 15);
    f.report_group(r.id, 0, true).await;
    for i in 0..5 {
        f.device(&format!("gw-new-{i}"), "gw-a", &[]).await;
    }
    both(start).await;
    let all: Vec<Action> = f.actions(r.id).await.into_values().flatten().collect();
    let devices: BTreeSet<i64> = all.iter().map(|a| a.device_id).collect();
    assert_eq!((all.len(), devices.len()), (35, 35), "one action per device");
    let log = f.audit_events(r.id).await;
    assert_eq!(events(&log).iter().filter(|e| **e == "rollout.group-started").count(), 2);
    assert_eq!(events(&log).iter().filter(|e| **e == "rollout.devices-joined").count(), 1);
    assert!(audit::verify(&f.state.db).await.unwrap().broken.is_none());
    assert_eq!(both(start).await, 0, "nothing new: neither instance writes");
}

async fn percentages_assign_every_device_exactly_once(b: Backend) {
    let f = fleet(b).await;
    let ids = f.devices(37).await;
    let groups = vec![group("a", Some(10)), group("b", Some(20)), group("c", Some(30)), group("d", None)];
    let r = f.create(RolloutSpec { start_at_ms: Some(now_ms() + 3_600_000), ..spec(groups) }).await.unwrap();
    let members = f.members(r.id).await;
    assert_eq!(members.iter().map(|(d, _)| *d).collect::<Vec<_>>(), ids);
    assert_eq!(r.groups.iter().map(|g| g.counts.total).collect::<Vec<_>>(), vec![4, 8, 11, 14]);
}

async fn a_busy_device_waits_for_its_other_action_to_end(b: Backend) {
    let f = fleet(b).await;
    let ids = f.devices(2).await;
    let other = actions::create(&f.state.db, ids[0], f.artifact, ActionKind::Soft, None, false).await.unwrap();
    let r = f.create(spec(vec![group("all", None)])).await.unwrap();
    assert_eq!(f.group_actions(r.id, 0).await.len(), 1);
    let r = f.get(r.id).await;
    assert_eq!((r.groups[0].waiting, r.groups[0].counts.in_flight), (1, 1));
    f.report_group(r.id, 0, true).await;
    assert_eq!(f.tick().await, 0, "the busy device holds the group back");
    assert_eq!(f.get(r.id).await.state, RolloutState::Running);
    let other = actions::get(&f.state.db, other).await.unwrap().unwrap();
    f.report(&other, true).await;
    assert_eq!(f.tick().await, 1);
    let mine = f.group_actions(r.id, 0).await;
    assert_eq!(mine.len(), 2);
    f.report(mine.iter().find(|a| a.device_id == ids[0]).unwrap(), true).await;
    f.tick().await;
    assert_eq!(f.get(r.id).await.state, RolloutState::Finished);
}

async fn the_filter_matches_compatible_tags_attributes_and_version(b: Backend) {
    let f = fleet(b).await;
    let a = f.device("gw-a1", "gw-a", &["eu", "lab"]).await;
    let b = f.device("gw-a2", "gw-a", &["eu"]).await;
    let c = f.device("gw-a3", "gw-a", &["eu", "lab"]).await;
    f.device("gw-b1", "gw-b", &["eu", "lab"]).await;
    for (id, attrs, version) in
        [(a, r#"{"hw":"rev2","site":"x"}"#, "1.0"), (b, r#"{"hw":"rev2"}"#, "1.0"), (c, r#"{"hw":"rev1"}"#, "1.0")]
    {
        sqlx::query("UPDATE devices SET attributes = $1, reported_version = $2 WHERE id = $3")
            .bind(attrs)
            .bind(version)
            .bind(id)
            .execute(&f.state.db.pool)
            .await
            .unwrap();
    }
    let mut filter = Filter { compatible: Some("gw-a".into()), ..Filter::default() };
    assert_eq!(rollout::matching(&f.state.db, &filter).await.unwrap(), vec![a, b, c]);
    filter.tags = vec!["eu".into(), "lab".into()];
    assert_eq!(rollout::matching(&f.state.db, &filter).await.unwrap(), vec![a, c]);
    filter.attributes.insert("hw".into(), "rev2".into());
    assert_eq!(rollout::matching(&f.state.db, &filter).await.unwrap(), vec![a]);
    filter.version = Some("1.0".into());
    assert_eq!(rollout::count_matching(&f.state.db, &filter).await.unwrap(), 1);
    filter.version = Some("2.0".into());
    assert_eq!(rollout::count_matching(&f.state.db, &filter).await.unwrap(), 0);
    assert_eq!(rollout::count_matching(&f.state.db, &Filter::default()).await.unwrap(), 4);
}

async fn bad_rollouts_are_refused_and_nothing_is_stored(b: Backend) {
    let f = fleet(b).await;
    f.devices(2).await;
    let create = |filter: Filter, s: RolloutSpec, artifact_id: i64| {
        rollout::create(&f.state, CreateRollout { name: "r".into(), artifact_id, filter, spec: s }, ALICE)
    };
    let other_type = Filter { compatible: Some("gw-b".into()), ..Filter::default() };
    assert!(matches!(
        create(other_type, spec(vec![group("all", None)]), f.artifact).await,
        Err(HttpError::BadRequest(_))
    ));
    assert!(matches!(create(Filter::default(), spec(vec![]), f.artifact).await, Err(HttpError::BadRequest(_))));
    assert!(matches!(
        create(Filter::default(), spec(vec![group("all", None)]), 999).await,
        Err(HttpError::BadRequest(_))
    ));
    let unknown = spec(vec![listed("canary", &["gw-nope"]), group("rest", None)]);
    assert!(matches!(create(Filter::default(), unknown, f.artifact).await, Err(HttpError::BadRequest(_))));
    assert!(rollout::list(&f.state.db).await.unwrap().is_empty());
    assert!(matches!(rollout::get(&f.state.db, 1).await, Err(HttpError::NotFound(_))));
    // The filter gets the artifact's only compatible type.
    let r = create(Filter::default(), spec(vec![group("all", None)]), f.artifact).await.unwrap();
    assert_eq!(r.filter.compatible.as_deref(), Some("gw-a"));
    assert_eq!(rollout::list(&f.state.db).await.unwrap().len(), 1);
}

/// Makes every write to `table` (`INSERT` or `UPDATE`) matching `condition` (on `NEW`) fail, as a crash at that
/// point of a step would stop it; returns the statement that heals it.
async fn cut(f: &Fleet, write: &str, table: &str, condition: &str) -> String {
    let statements = match f.state.db.engine {
        Engine::Sqlite => vec![format!(
            "CREATE TRIGGER cut BEFORE {write} ON {table} WHEN {condition} BEGIN SELECT RAISE(ABORT, 'power cut'); END"
        )],
        Engine::Postgres => vec![
            format!(
                "CREATE FUNCTION cut() RETURNS trigger AS $$ BEGIN IF {condition} THEN RAISE EXCEPTION 'power cut'; \
                 END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            format!("CREATE TRIGGER cut BEFORE {write} ON {table} FOR EACH ROW EXECUTE FUNCTION cut()"),
        ],
    };
    for sql in statements {
        sqlx::query(&sql).execute(&f.state.db.pool).await.unwrap();
    }
    match f.state.db.engine {
        Engine::Sqlite => "DROP TRIGGER cut".into(),
        Engine::Postgres => format!("DROP TRIGGER cut ON {table}"),
    }
}

async fn a_step_cut_at_any_write_leaves_nothing_behind_and_the_next_tick_takes_it_whole(b: Backend) {
    // Each write of the step that ends the canary and starts the next group, in the order the step makes them.
    let points = [
        ("UPDATE", "rollouts", "NEW.current_group = 1"),
        ("UPDATE", "rollout_groups", "NEW.idx = 1"),
        ("INSERT", "audit", "NEW.event = 'rollout.group-done'"),
        ("INSERT", "actions", "NEW.group_idx = 1 AND (SELECT COUNT(*) FROM actions WHERE group_idx = 1) = 1"),
        ("INSERT", "audit", "NEW.event = 'rollout.group-started'"),
    ];
    for (write, table, condition) in points {
        let at = format!("{write} {table} {condition}");
        let f = fleet(b).await;
        f.devices(4).await;
        let r = f.create(spec(vec![group("canary", Some(25)), group("rest", None)])).await.unwrap();
        f.report_group(r.id, 0, true).await;
        let heal = cut(&f, write, table, condition).await;
        let before = f.audit_events(r.id).await.len();
        assert!(rollout::tick(&f.state, now_ms()).await.is_err(), "{at}");
        let v = f.get(r.id).await;
        assert_eq!(
            (v.state, v.current_group, v.groups[0].state, v.groups[1].state),
            (RolloutState::Running, Some(0), GroupState::Running, GroupState::Pending),
            "{at}"
        );
        assert!(f.group_actions(r.id, 1).await.is_empty(), "{at}: an action of the half-taken step survived");
        assert_eq!(f.audit_events(r.id).await.len(), before, "{at}");
        sqlx::query(&heal).execute(&f.state.db.pool).await.unwrap();
        assert_eq!(f.tick().await, 1, "{at}");
        let v = f.get(r.id).await;
        assert_eq!(
            (v.current_group, v.groups[0].state, v.groups[1].state),
            (Some(1), GroupState::Done, GroupState::Running),
            "{at}"
        );
        assert_eq!(f.group_actions(r.id, 1).await.len(), 3, "{at}");
        assert!(audit::verify(&f.state.db).await.unwrap().broken.is_none(), "{at}");
    }
}

async fn the_scheduler_starts_a_due_rollout_on_its_own(b: Backend) {
    let f = fleet(b).await;
    f.devices(2).await;
    let r =
        f.create(RolloutSpec { start_at_ms: Some(now_ms() + 1_500), ..spec(vec![group("all", None)]) }).await.unwrap();
    assert_eq!(r.state, RolloutState::Scheduled);
    let scheduler = rollout::spawn_scheduler(f.state.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.get(r.id).await.state == RolloutState::Scheduled {
        assert!(std::time::Instant::now() < deadline, "the scheduler did not start the rollout");
        tokio::time::sleep(rollout::TICK_INTERVAL / 4).await;
    }
    scheduler.abort();
    assert_eq!(f.group_actions(r.id, 0).await.len(), 2);
}

async fn a_large_group_starts_in_batches_and_every_device_gets_one_action(b: Backend) {
    let f = fleet(b).await;
    let n = 2 * rollout::BATCH + 100;
    let mut tx = f.state.db.pool.begin().await.unwrap();
    for i in 0..n {
        sqlx::query("INSERT INTO devices (controller_id, compatible, created_ms) VALUES ($1, 'gw-a', 0)")
            .bind(format!("gw-{i:05}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let r = f.create(spec(vec![group("all", None)])).await.unwrap();
    let all = f.group_actions(r.id, 0).await;
    let devices: BTreeSet<i64> = all.iter().map(|a| a.device_id).collect();
    assert_eq!((all.len(), devices.len()), (n, n));
    let log = f.audit_events(r.id).await;
    let started = log.iter().find(|(_, e, _)| e == "rollout.group-started").unwrap();
    assert_eq!((started.2["actions"].as_u64(), started.2["more"].as_bool()), (Some(rollout::BATCH as u64), Some(true)));
    let batches: Vec<u64> = log
        .iter()
        .filter(|(_, e, _)| e == "rollout.actions-created")
        .map(|(_, _, d)| d["count"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, vec![rollout::BATCH as u64, 100]);
    assert_eq!(f.tick().await, 0);
}

on_both!(
    a_rollout_advances_group_by_group_to_finished,
    a_failing_canary_halts_the_rollout_before_the_rest_is_touched,
    resume_advances_when_the_group_met_its_success_threshold,
    an_approval_gates_the_next_group_and_the_creator_may_not_give_it,
    a_future_start_time_keeps_the_rollout_scheduled,
    cancel_mid_way_cancels_open_actions_and_leaves_later_groups_untouched,
    devices_that_match_later_join_the_last_group,
    a_rollout_that_is_not_dynamic_keeps_its_members,
    percentages_assign_every_device_exactly_once,
    a_busy_device_waits_for_its_other_action_to_end,
    the_filter_matches_compatible_tags_attributes_and_version,
    bad_rollouts_are_refused_and_nothing_is_stored,
    a_step_cut_at_any_write_leaves_nothing_behind_and_the_next_tick_takes_it_whole,
    the_scheduler_starts_a_due_rollout_on_its_own,
    a_large_group_starts_in_batches_and_every_device_gets_one_action,
);
