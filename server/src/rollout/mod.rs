//! Staged rollouts: the effects of the pure [`engine`] on the database, the functions the operator API calls, and
//! the scheduler.
//!
//! Every change to a rollout is one *step*, one transaction:
//! 1. lock the rollout's row (a no-op `UPDATE` as the first statement: PostgreSQL holds the row lock, SQLite its
//!    write lock, to the end of the transaction), so two server instances running the scheduler — or a tick and an
//!    operator's approve — take turns on one rollout instead of both deciding from the same snapshot;
//! 2. let devices that newly match the filter join (dynamic rollouts);
//! 3. load the rollout and its counts (from `rollout_members` and `actions`), hand the event to the engine;
//! 4. write the new state back with a compare-and-set on the state and current group it was loaded with;
//! 5. carry out the decisions (create a group's actions, cancel open actions) and append one audit entry each;
//! 6. commit. A crash anywhere before the commit leaves the rollout as it was; the next tick decides again.
//!
//! Decisions recorded here (the engine's module doc has the rules it decides by):
//! - **A device busy with another open action** (from another rollout or an operator) is skipped when its group
//!   starts and retried on every tick until that action ends; meanwhile it counts as *waiting* — neither success
//!   nor failure — so it does not halt the rollout for something this release did not do, and it holds the group
//!   back only as far as its success threshold needs it.
//! - **A large group** gets its actions in batches of [`BATCH`] devices, each batch its own step right after the
//!   previous one; the group counts as started with the first batch (its later devices show as *waiting* meanwhile).
//! - **Success** is a device whose action `finished`; for a download-only rollout, one whose action reached
//!   `downloaded` (that is all such an action does). A cancelled action is neither success nor failure.
//! - **Cancel**: actions still waiting for the device's confirmation become `canceled` (the device never started
//!   them); running (and, unless download-only, downloaded) ones become `canceling`, so the device is offered
//!   `cancelAction` by the device API. Groups not started get no actions.
//! - **Dynamic join**: a device that matches the filter later joins the last group — while the rollout is
//!   scheduled, running, waiting or paused — and gets its action on the next step in which that group runs.
//! - **Filter and compatible**: a filter without `compatible` gets the artifact's compatible when the artifact
//!   names exactly one; if it names several the operator must choose, so a release never targets devices of a
//!   type it was not built for.

pub mod engine;
pub mod filter;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use self::engine::{Counts, Decision, Event, GroupState, Refusal};
use crate::AppState;
use crate::db::{Db, now_ms};
use crate::error::{HttpError, HttpResult};
use crate::model::{ActionKind, ActionState, Filter, RolloutSpec, RolloutState};

pub use self::filter::{count_matching, matching};

/// How often the scheduler ticks: 1 second, so a group starts (and a failing group halts the rollout) within a
/// second of the device report that decides it, well inside a fast release's poll interval.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The audit actor of decisions the rollout takes by itself (start, advance, self-pause, finish).
pub const SERVER: &str = "server";

/// Longest rollout name accepted.
pub const MAX_NAME: usize = 200;

/// Devices named in one audit entry about joiners or new actions; beyond it only the count is recorded.
const AUDIT_NAMES: usize = 100;

/// Devices given actions per transaction (500 devices). A large group starts in several steps, one right after
/// the other, so SQLite's write lock is held for a fraction of a second at a time and device feedback goes on in
/// between, instead of waiting (and timing out) behind one transaction creating every action of the group.
pub const BATCH: usize = 500;

/// What an operator asks for when creating a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// A name shown to operators.
    pub name: String,
    /// The artifact to roll out.
    pub artifact_id: i64,
    /// Which devices (every device, when empty).
    #[serde(default)]
    pub filter: Filter,
    /// Groups, thresholds, kind, speed, window, start time.
    pub spec: RolloutSpec,
}

/// One group of a rollout, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Index, from 0.
    pub idx: usize,
    /// Name.
    pub name: String,
    /// Where it stands.
    pub state: GroupState,
    /// Percent of its devices that must succeed.
    pub success_threshold: u32,
    /// Percent of its devices that may fail.
    pub error_threshold: u32,
    /// Whether it needs an approval before it starts.
    pub approval: bool,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// When (ms).
    pub approved_ms: Option<i64>,
    /// When it started (ms).
    pub started_ms: Option<i64>,
    /// Failures accepted by an operator's resume.
    pub accepted_failures: u64,
    /// Its devices' counts (flattened: `total`, `finished`, `failed`, `canceled`, `in_flight` beside `name`).
    #[serde(flatten)]
    pub counts: Counts,
    /// Devices without an action yet (group not started, or busy with another action).
    pub waiting: u64,
}

/// A rollout, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The artifact rolled out.
    pub artifact_id: i64,
    /// Which devices.
    pub filter: Filter,
    /// What was asked for.
    pub spec: RolloutSpec,
    /// Where it stands.
    pub state: RolloutState,
    /// The group reached last (`None` once past the last group).
    pub current_group: Option<usize>,
    /// Why it is paused.
    pub reason: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
    /// The groups, in order.
    pub groups: Vec<GroupView>,
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::ApproverIsCreator { .. } => HttpError::Forbidden(r.to_string()),
            Refusal::NoSuchGroup { .. } => HttpError::NotFound(r.to_string()),
            Refusal::Terminal { .. }
            | Refusal::NotWaitingApproval { .. }
            | Refusal::AlreadyPaused
            | Refusal::NotPaused(_) => HttpError::Conflict(r.to_string()),
        }
    }
}

/// A group's stored row.
#[derive(Debug, Clone)]
struct GroupRow {
    state: GroupState,
    approved_by: Option<String>,
    approved_ms: Option<i64>,
    started_ms: Option<i64>,
    accepted_failures: u64,
}

/// A rollout as loaded from the database.
#[derive(Debug, Clone)]
struct Loaded {
    id: i64,
    name: String,
    artifact_id: i64,
    filter: Filter,
    spec: RolloutSpec,
    state: RolloutState,
    current: usize,
    reason: Option<String>,
    created_by: String,
    created_ms: i64,
    updated_ms: i64,
    groups: Vec<GroupRow>,
    counts: Vec<Counts>,
}

fn decode(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("stored {what} {value:?}").into())
}

fn to_index(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

fn to_count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Loaded {
    fn subject(&self) -> String {
        format!("rollout:{}", self.id)
    }

    /// The engine's view of the rollout.
    fn engine(&self) -> engine::Rollout {
        engine::Rollout {
            state: self.state,
            current: self.current,
            groups: self
                .spec
                .groups
                .iter()
                .zip(&self.groups)
                .zip(&self.counts)
                .map(|((spec, row), counts)| engine::Group {
                    name: spec.name.clone(),
                    success_threshold: spec.success_threshold,
                    error_threshold: spec.error_threshold,
                    approval: spec.approval,
                    state: row.state,
                    approved_by: row.approved_by.clone(),
                    accepted_failures: row.accepted_failures,
                    counts: *counts,
                })
                .collect(),
            creator: self.created_by.clone(),
            start_at_ms: self.spec.start_at_ms,
            reason: self.reason.clone(),
        }
    }

    fn view(&self) -> RolloutView {
        RolloutView {
            id: self.id,
            name: self.name.clone(),
            artifact_id: self.artifact_id,
            filter: self.filter.clone(),
            spec: self.spec.clone(),
            state: self.state,
            current_group: (self.current < self.groups.len()).then_some(self.current),
            reason: self.reason.clone(),
            created_by: self.created_by.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            groups: self
                .spec
                .groups
                .iter()
                .zip(&self.groups)
                .zip(&self.counts)
                .enumerate()
                .map(|(idx, ((spec, row), counts))| GroupView {
                    idx,
                    name: spec.name.clone(),
                    state: row.state,
                    success_threshold: spec.success_threshold,
                    error_threshold: spec.error_threshold,
                    approval: spec.approval,
                    approved_by: row.approved_by.clone(),
                    approved_ms: row.approved_ms,
                    started_ms: row.started_ms,
                    accepted_failures: row.accepted_failures,
                    counts: *counts,
                    waiting: counts.waiting(),
                })
                .collect(),
        }
    }
}

/// Loads a rollout with its groups and counts.
async fn load(conn: &mut sqlx::AnyConnection, id: i64) -> HttpResult<Loaded> {
    let r = sqlx::query("SELECT * FROM rollouts WHERE id = $1").bind(id).fetch_optional(&mut *conn).await?;
    let r = r.ok_or_else(|| HttpError::NotFound(format!("no rollout {id}")))?;
    let (filter, spec, state): (String, String, String) =
        (r.try_get("filter")?, r.try_get("spec")?, r.try_get("state")?);
    let filter: Filter = serde_json::from_str(&filter).map_err(|_| decode("filter", &filter))?;
    let spec: RolloutSpec = serde_json::from_str(&spec).map_err(|_| decode("spec", &spec))?;
    let state = RolloutState::parse(&state).ok_or_else(|| decode("rollout state", &state))?;
    let rows = sqlx::query("SELECT * FROM rollout_groups WHERE rollout_id = $1 ORDER BY idx")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let groups = rows
        .iter()
        .map(|g| {
            let s: String = g.try_get("state")?;
            Ok(GroupRow {
                state: GroupState::parse(&s).ok_or_else(|| decode("group state", &s))?,
                approved_by: g.try_get("approved_by")?,
                approved_ms: g.try_get("approved_ms")?,
                started_ms: g.try_get("started_ms")?,
                accepted_failures: to_count(g.try_get("accepted_failures")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    if groups.len() != spec.groups.len() {
        return Err(HttpError::Internal(anyhow::anyhow!(
            "rollout {id} has {} group rows for {} groups",
            groups.len(),
            spec.groups.len()
        )));
    }
    let counts = counts(conn, id, groups.len(), spec.kind).await?;
    Ok(Loaded {
        id,
        name: r.try_get("name")?,
        artifact_id: r.try_get("artifact_id")?,
        filter,
        spec,
        state,
        current: to_index(r.try_get("current_group")?),
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        groups,
        counts,
    })
}

/// Counts each group's devices and their actions in this rollout.
async fn counts(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    groups: usize,
    kind: ActionKind,
) -> Result<Vec<Counts>, sqlx::Error> {
    let mut counts = vec![Counts::default(); groups];
    let members =
        sqlx::query("SELECT group_idx, COUNT(*) AS n FROM rollout_members WHERE rollout_id = $1 GROUP BY group_idx")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    for m in members {
        if let Some(c) = counts.get_mut(to_index(m.try_get("group_idx")?)) {
            c.total = to_count(m.try_get("n")?);
        }
    }
    let actions = sqlx::query(
        "SELECT group_idx, state, COUNT(*) AS n FROM actions WHERE rollout_id = $1 GROUP BY group_idx, state",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for a in actions {
        let group: Option<i64> = a.try_get("group_idx")?;
        let state: String = a.try_get("state")?;
        let n = to_count(a.try_get("n")?);
        let Some(c) = group.and_then(|g| counts.get_mut(to_index(g))) else { continue };
        match ActionState::parse(&state).ok_or_else(|| decode("action state", &state))? {
            ActionState::Finished => c.finished += n,
            ActionState::Downloaded if kind == ActionKind::DownloadOnly => c.finished += n,
            ActionState::Error => c.failed += n,
            ActionState::Canceled => c.canceled += n,
            ActionState::WaitConfirmation | ActionState::Running | ActionState::Downloaded | ActionState::Canceling => {
                c.in_flight += n
            }
        }
    }
    Ok(counts)
}

/// Appends an audit entry about the rollout inside the step's transaction.
async fn audit(
    tx: &mut sqlx::AnyConnection,
    actor: &str,
    event: &str,
    loaded: &Loaded,
    detail: serde_json::Value,
) -> HttpResult<()> {
    crate::audit::append_in(tx, actor, event, &loaded.subject(), &detail.to_string()).await?;
    Ok(())
}

/// Creates a rollout: checks it, matches and groups the devices, stores it (audited as `rollout.created`) and
/// takes its first step at once (a rollout without a future start time starts its first group, or waits for its
/// approval, before this returns).
///
/// Refused (400): an invalid spec or name, an unknown artifact, a `filter.compatible` the artifact is not built for
/// (or none when it is built for several), a listed device that is not registered or does not match the filter,
/// a device listed twice. Groups are dealt as [`filter::assign`] says.
pub async fn create(state: &AppState, req: CreateRollout, actor: &str) -> HttpResult<RolloutView> {
    let db = &state.db;
    let CreateRollout { name, artifact_id, mut filter, spec } = req;
    if name.trim().is_empty() || name.len() > MAX_NAME {
        return Err(HttpError::BadRequest(format!("name must be 1–{MAX_NAME} characters")));
    }
    spec.validate().map_err(HttpError::BadRequest)?;
    let artifact = crate::artifacts::get(db, artifact_id).await.map_err(|e| match e {
        HttpError::NotFound(m) => HttpError::BadRequest(m),
        e => e,
    })?;
    let compatible = match (&filter.compatible, artifact.compatible.as_slice()) {
        (Some(c), list) if !list.contains(c) => {
            return Err(HttpError::BadRequest(format!(
                "filter.compatible {c:?} is not one of artifact {artifact_id}'s compatible types {list:?}"
            )));
        }
        (Some(c), _) => c.clone(),
        (None, [only]) => only.clone(),
        (None, list) => {
            return Err(HttpError::BadRequest(format!(
                "give filter.compatible: artifact {artifact_id} is built for {list:?}"
            )));
        }
    };
    filter.compatible = Some(compatible);
    let now = now_ms();
    let filter_json = serde_json::to_string(&filter).map_err(|e| HttpError::Internal(e.into()))?;
    let spec_json = serde_json::to_string(&spec).map_err(|e| HttpError::Internal(e.into()))?;

    let mut tx = db.pool.begin().await?;
    // The insert comes first: on SQLite it takes the write lock before the devices are read, so no device
    // registered meanwhile is missed by both this match and the dynamic join.
    let id: i64 = sqlx::query(
        "INSERT INTO rollouts (name, artifact_id, filter, spec, speed, state, current_group, created_by, created_ms, \
         updated_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8) RETURNING id",
    )
    .bind(&name)
    .bind(artifact_id)
    .bind(&filter_json)
    .bind(&spec_json)
    .bind(spec.speed.as_str())
    .bind(RolloutState::Scheduled.as_str())
    .bind(actor)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;
    for idx in 0..spec.groups.len() {
        sqlx::query("INSERT INTO rollout_groups (rollout_id, idx, state) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(idx as i64)
            .bind(GroupState::Pending.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let devices = filter::candidates(&mut tx, db.engine, &filter, None).await?;
    let assigned = filter::assign(&devices, &spec.groups)?;
    for (device, group) in devices.iter().zip(&assigned) {
        sqlx::query("INSERT INTO rollout_members (rollout_id, device_id, group_idx) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(device.id)
            .bind(*group as i64)
            .execute(&mut *tx)
            .await?;
    }
    let sizes: Vec<usize> = (0..spec.groups.len()).map(|g| assigned.iter().filter(|&&a| a == g).count()).collect();
    let detail = serde_json::json!({
        "name": name, "artifact_id": artifact_id, "version": artifact.version, "filter": filter, "spec": spec,
        "members": devices.len(), "group_sizes": sizes,
    });
    crate::audit::append_in(&mut tx, actor, "rollout.created", &format!("rollout:{id}"), &detail.to_string()).await?;
    tx.commit().await?;
    tracing::info!(rollout = id, members = devices.len(), "rollout created by {actor}");

    // The first step at once; should it fail, the scheduler takes it on its next tick.
    if let Err(e) = run(state, id, None, now_ms()).await {
        tracing::warn!(rollout = id, "first step of a new rollout: {e:#}");
    }
    get(db, id).await
}

/// A rollout with its groups and their counts.
pub async fn get(db: &Db, id: i64) -> HttpResult<RolloutView> {
    let mut conn = db.pool.acquire().await?;
    Ok(load(&mut conn, id).await?.view())
}

/// Every rollout, newest first.
pub async fn list(db: &Db) -> HttpResult<Vec<RolloutView>> {
    let mut conn = db.pool.acquire().await?;
    let ids = sqlx::query("SELECT id FROM rollouts ORDER BY id DESC").fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(ids.len());
    for r in ids {
        out.push(load(&mut conn, r.try_get("id")?).await?.view());
    }
    Ok(out)
}

/// Approves group `group` (which must be waiting for it) and starts it. `actor` must hold the approver role (the
/// API checks) and must not be the rollout's creator (403). Audited as `rollout.approved`.
pub async fn approve(state: &AppState, id: i64, group: i64, actor: &str) -> HttpResult<RolloutView> {
    // A negative index is no group: the engine refuses it as such (404).
    let group = usize::try_from(group).unwrap_or(usize::MAX);
    run(state, id, Some(Event::Approve { group, by: actor.to_owned() }), now_ms()).await?;
    get(&state.db, id).await
}

/// Pauses a rollout (409 if already paused or over). No new group starts and running groups get no new actions
/// until it is resumed; actions already offered go on. Audited as `rollout.paused`.
pub async fn pause(state: &AppState, id: i64, actor: &str) -> HttpResult<RolloutView> {
    run(state, id, Some(Event::Pause { by: actor.to_owned() }), now_ms()).await?;
    get(&state.db, id).await
}

/// Resumes a paused rollout (409 otherwise), re-checking the current group as the engine's module doc says.
/// Audited as `rollout.resumed`.
pub async fn resume(state: &AppState, id: i64, actor: &str) -> HttpResult<RolloutView> {
    run(state, id, Some(Event::Resume { by: actor.to_owned(), now: now_ms() }), now_ms()).await?;
    get(&state.db, id).await
}

/// Cancels a rollout (409 if over) and its open actions. Audited as `rollout.cancelled`.
pub async fn cancel(state: &AppState, id: i64, actor: &str) -> HttpResult<RolloutView> {
    run(state, id, Some(Event::Cancel { by: actor.to_owned() }), now_ms()).await?;
    get(&state.db, id).await
}

/// One scheduler pass over every rollout that is not over: start those due, let new devices join, create actions
/// for running groups, check thresholds, pause, advance or finish. Idempotent: a pass with nothing new writes
/// nothing. Returns how many rollouts took a step. A failing rollout is logged and does not stop the others; the
/// last error is returned after the pass.
pub async fn tick(state: &AppState, now: i64) -> HttpResult<usize> {
    let rows = sqlx::query("SELECT id FROM rollouts WHERE state NOT IN ($1, $2) ORDER BY id")
        .bind(RolloutState::Finished.as_str())
        .bind(RolloutState::Cancelled.as_str())
        .fetch_all(&state.db.pool)
        .await?;
    let (mut stepped, mut last_err) = (0, None);
    for r in rows {
        let id: i64 = r.try_get("id")?;
        match tick_one(state, id, now).await {
            Ok(true) => stepped += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(rollout = id, "scheduler: {e:#}");
                last_err = Some(e);
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(stepped),
    }
}

/// Starts the scheduler: [`tick`] every [`TICK_INTERVAL`], for as long as the runtime runs. Several instances may
/// run it on one database (each step locks its rollout).
pub fn spawn_scheduler(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK_INTERVAL);
        // A slow pass (a large group starting) is not followed by a burst of catch-up passes.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // Errors were logged per rollout.
            let _ = tick(&state, now_ms()).await;
        }
    })
}

/// Whether a tick has anything to do for this rollout, read without locking it: the engine decides something, a
/// device joins, or a running group has a member without an action that could now get one.
async fn has_work(state: &AppState, id: i64, now: i64) -> HttpResult<bool> {
    let mut conn = state.db.pool.acquire().await?;
    let loaded = load(&mut conn, id).await?;
    if loaded.state.is_terminal() {
        return Ok(false);
    }
    if !loaded.engine().handle(Event::Tick { now }).unwrap_or_default().is_empty() {
        return Ok(true);
    }
    if loaded.spec.dynamic
        && !filter::candidates(&mut conn, state.db.engine, &loaded.filter, Some(id)).await?.is_empty()
    {
        return Ok(true);
    }
    if loaded.state != RolloutState::Running
        || loaded.groups.get(loaded.current).map(|g| g.state) != Some(GroupState::Running)
    {
        return Ok(false);
    }
    Ok(!ready_members(&mut conn, id, loaded.current, 1).await?.is_empty())
}

async fn tick_one(state: &AppState, id: i64, now: i64) -> HttpResult<bool> {
    if !has_work(state, id, now).await? {
        return Ok(false);
    }
    run(state, id, None, now).await?;
    Ok(true)
}

/// Takes a step with `event` (a tick when `None`), then further tick steps while a running group still has
/// devices to be given actions in batches of [`BATCH`].
async fn run(state: &AppState, id: i64, event: Option<Event>, now: i64) -> HttpResult<()> {
    let mut more = step(state, id, event, now).await?;
    while more {
        more = step(state, id, None, now).await?;
    }
    Ok(())
}

/// One step of one rollout in one transaction (see the module doc): `event`, or a scheduler tick when `None`.
/// Returns whether a full batch of actions was created, so more devices may be waiting for theirs.
async fn step(state: &AppState, id: i64, event: Option<Event>, now: i64) -> HttpResult<bool> {
    let mut tx = state.db.pool.begin().await?;
    lock(&mut tx, id).await?;
    let mut loaded = load(&mut tx, id).await?;
    if event.is_none() && loaded.state.is_terminal() {
        // Another instance finished or cancelled it since this tick listed it: nothing to do.
        return Ok(false);
    }
    if loaded.spec.dynamic && !loaded.state.is_terminal() && join_new_devices(&mut tx, state, &loaded).await? {
        loaded = load(&mut tx, id).await?;
    }
    let before = loaded.engine();
    let mut after = before.clone();
    let event = event.unwrap_or(Event::Tick { now });
    let event_name = event.name();
    let decisions = after.handle(event).inspect_err(|r| tracing::info!(rollout = id, "{event_name} refused: {r}"))?;
    persist(&mut tx, &loaded, &before, &after, now).await?;
    let (mut started_current, mut more) = (false, false);
    for d in &decisions {
        started_current |= *d == Decision::StartGroup(after.current);
        more |= execute(&mut tx, &loaded, &after, d).await?;
    }
    if !started_current
        && after.state == RolloutState::Running
        && after.groups.get(after.current).map(|g| g.state) == Some(GroupState::Running)
    {
        // Members that joined since the group started, were busy with another action then, or are beyond the
        // batches created so far.
        let batch = create_group_actions(&mut tx, &loaded, after.current).await?;
        if !batch.created.is_empty() {
            audit(
                &mut tx,
                SERVER,
                "rollout.actions-created",
                &loaded,
                serde_json::json!({"group": after.current, "devices": names(&batch.created),
                    "count": batch.created.len()}),
            )
            .await?;
        }
        more |= batch.full;
    }
    tx.commit().await?;
    Ok(more)
}

/// Takes the rollout's lock for the rest of the transaction (404 if there is no such rollout). The statement
/// writes nothing new; what matters is that it writes, so it is what the database serialises on.
async fn lock(tx: &mut sqlx::AnyConnection, id: i64) -> HttpResult<()> {
    let n = sqlx::query("UPDATE rollouts SET updated_ms = updated_ms WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(HttpError::NotFound(format!("no rollout {id}")));
    }
    Ok(())
}

/// Writes what the engine changed, with a compare-and-set on the state and current group it started from.
async fn persist(
    tx: &mut sqlx::AnyConnection,
    loaded: &Loaded,
    before: &engine::Rollout,
    after: &engine::Rollout,
    now: i64,
) -> HttpResult<()> {
    if (before.state, before.current, &before.reason) != (after.state, after.current, &after.reason) {
        let n = sqlx::query(
            "UPDATE rollouts SET state = $1, current_group = $2, reason = $3, updated_ms = $4 \
             WHERE id = $5 AND state = $6 AND current_group = $7",
        )
        .bind(after.state.as_str())
        .bind(after.current as i64)
        .bind(after.reason.as_deref())
        .bind(now)
        .bind(loaded.id)
        .bind(before.state.as_str())
        .bind(before.current as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            // Cannot happen while the lock is held; if it does, nothing of this step is committed.
            return Err(HttpError::Conflict(format!("rollout {} changed meanwhile; try again", loaded.id)));
        }
    }
    for (idx, (b, a)) in before.groups.iter().zip(&after.groups).enumerate() {
        if (b.state, &b.approved_by, b.accepted_failures) == (a.state, &a.approved_by, a.accepted_failures) {
            continue;
        }
        let approved_ms = if a.approved_by != b.approved_by { Some(now) } else { loaded.groups[idx].approved_ms };
        let started = (a.state == GroupState::Running).then_some(now);
        sqlx::query(
            "UPDATE rollout_groups SET state = $1, approved_by = $2, approved_ms = $3, \
             started_ms = COALESCE(started_ms, $4), accepted_failures = $5 WHERE rollout_id = $6 AND idx = $7",
        )
        .bind(a.state.as_str())
        .bind(a.approved_by.as_deref())
        .bind(approved_ms)
        .bind(started)
        .bind(i64::try_from(a.accepted_failures).unwrap_or(i64::MAX))
        .bind(loaded.id)
        .bind(idx as i64)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Carries out one decision and records it in the audit log. Returns whether a group start filled its first
/// batch (more devices may be waiting for their actions).
async fn execute(
    tx: &mut sqlx::AnyConnection,
    loaded: &Loaded,
    after: &engine::Rollout,
    d: &Decision,
) -> HttpResult<bool> {
    let group_name = |i: usize| after.groups.get(i).map(|g| g.name.clone()).unwrap_or_default();
    let recorded = match d {
        Decision::Started => audit(tx, SERVER, "rollout.started", loaded, serde_json::json!({})).await,
        Decision::StartGroup(i) => {
            let batch = create_group_actions(tx, loaded, *i).await?;
            tracing::info!(rollout = loaded.id, group = i, actions = batch.created.len(), "group started");
            // `actions`: created in this step; with `more`, the next batches follow as `rollout.actions-created`.
            let detail = serde_json::json!({"group": i, "name": group_name(*i), "devices": after.groups[*i].counts.total,
                "actions": batch.created.len(), "more": batch.full});
            audit(tx, SERVER, "rollout.group-started", loaded, detail).await?;
            return Ok(batch.full);
        }
        Decision::WaitForApproval(i) => {
            let detail = serde_json::json!({"group": i, "name": group_name(*i)});
            audit(tx, SERVER, "rollout.waiting-approval", loaded, detail).await
        }
        Decision::Approved { group, by } => {
            audit(tx, by, "rollout.approved", loaded, serde_json::json!({"group": group, "name": group_name(*group)}))
                .await
        }
        Decision::GroupDone(i) => {
            let detail = serde_json::json!({"group": i, "name": group_name(*i), "counts": after.groups[*i].counts});
            audit(tx, SERVER, "rollout.group-done", loaded, detail).await
        }
        Decision::Pause { by, reason } => {
            tracing::info!(rollout = loaded.id, "paused: {reason}");
            let actor = by.as_deref().unwrap_or(SERVER);
            audit(tx, actor, "rollout.paused", loaded, serde_json::json!({"reason": reason, "group": after.current}))
                .await
        }
        Decision::Resumed { by, group, accepted_failures } => {
            let detail = serde_json::json!({"group": group, "accepted_failures": accepted_failures});
            audit(tx, by, "rollout.resumed", loaded, detail).await
        }
        Decision::Finish => audit(tx, SERVER, "rollout.finished", loaded, serde_json::json!({})).await,
        Decision::Cancelled { by } => {
            audit(tx, by, "rollout.cancelled", loaded, serde_json::json!({"group": after.current})).await
        }
        Decision::CancelOpenActions => {
            let (canceled, canceling) = cancel_open_actions(tx, loaded).await?;
            let detail = serde_json::json!({"canceled": canceled, "canceling": canceling});
            audit(tx, SERVER, "rollout.actions-canceled", loaded, detail).await
        }
    };
    recorded.map(|()| false)
}

/// The controller ids to record, at most [`AUDIT_NAMES`].
fn names(devices: &[String]) -> &[String] {
    &devices[..devices.len().min(AUDIT_NAMES)]
}

/// Members of group `group` of rollout `id` that have no action in this rollout yet and are free to get one (no
/// open action elsewhere), at most `limit`, by device id.
async fn ready_members(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    group: usize,
    limit: usize,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.device_id, d.controller_id FROM rollout_members m JOIN devices d ON d.id = m.device_id \
         WHERE m.rollout_id = $1 AND m.group_idx = $2 \
         AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.rollout_id = $1 AND a.device_id = m.device_id) \
         AND NOT EXISTS (SELECT 1 FROM actions b WHERE b.device_id = m.device_id AND b.active = 1) \
         ORDER BY m.device_id LIMIT $3",
    )
    .bind(id)
    .bind(group as i64)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get("device_id")?, r.try_get("controller_id")?))).collect()
}

/// What one batch of a group's actions did.
struct Batch {
    /// Controller ids that got an action.
    created: Vec<String>,
    /// Whether the batch was full: more members may be ready.
    full: bool,
}

/// Creates an action for up to [`BATCH`] members of group `group` that are ready for one ([`ready_members`]). A
/// member that became busy meanwhile is skipped; like every busy member it is retried on later ticks.
async fn create_group_actions(tx: &mut sqlx::AnyConnection, loaded: &Loaded, group: usize) -> HttpResult<Batch> {
    let ready = ready_members(tx, loaded.id, group, BATCH).await?;
    let full = ready.len() == BATCH;
    let mut created = Vec::new();
    for (device, controller) in ready {
        match crate::actions::create_in(
            tx,
            device,
            loaded.artifact_id,
            loaded.spec.kind,
            Some((loaded.id, group as i64)),
            loaded.spec.confirmation_required,
        )
        .await
        {
            Ok(_) => created.push(controller),
            Err(HttpError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Batch { created, full })
}

/// Cancels the rollout's open actions with the one cancel rule (`actions::cancel_open`). Returns how many became
/// `canceled` and `canceling`. (A download-only action ends at `downloaded`, so it is never open there.)
async fn cancel_open_actions(tx: &mut sqlx::AnyConnection, loaded: &Loaded) -> HttpResult<(u64, u64)> {
    Ok(crate::actions::cancel_open(tx, crate::actions::CancelScope::Rollout(loaded.id), "rollout cancelled").await?)
}

/// Lets devices that newly match the filter join the last group (audited as `rollout.devices-joined`). Returns
/// whether any joined.
async fn join_new_devices(tx: &mut sqlx::AnyConnection, state: &AppState, loaded: &Loaded) -> HttpResult<bool> {
    let new = filter::candidates(tx, state.db.engine, &loaded.filter, Some(loaded.id)).await?;
    if new.is_empty() {
        return Ok(false);
    }
    let last = loaded.groups.len() - 1;
    for d in &new {
        sqlx::query(
            "INSERT INTO rollout_members (rollout_id, device_id, group_idx) VALUES ($1, $2, $3) \
             ON CONFLICT (rollout_id, device_id) DO NOTHING",
        )
        .bind(loaded.id)
        .bind(d.id)
        .bind(last as i64)
        .execute(&mut *tx)
        .await?;
    }
    let ids: Vec<String> = new.into_iter().map(|d| d.controller_id).collect();
    let detail = serde_json::json!({"group": last, "devices": names(&ids), "count": ids.len()});
    audit(tx, SERVER, "rollout.devices-joined", loaded, detail).await?;
    Ok(true)
}
