//! Which devices a rollout targets, and which group each of them lands in.
//!
//! [`matching`] is the one query that turns a [`Filter`] into devices; creation, the console's live count and the
//! dynamic join all use it. [`assign`] is pure: it splits the matching devices into the rollout's groups.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Db, Engine};
use crate::error::{HttpError, HttpResult};
use crate::model::{Filter, GroupSpec};

/// A device a filter matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Row id.
    pub id: i64,
    /// Controller id.
    pub controller_id: String,
}

/// The SQL condition for `filter` on `devices d`, with its parameters from `$first` on.
fn condition(engine: Engine, filter: &Filter, first: usize) -> (String, Vec<String>) {
    let mut sql = String::from("1 = 1");
    let mut params = Vec::new();
    let next = |value: &str, params: &mut Vec<String>| {
        params.push(value.to_owned());
        format!("${}", first + params.len() - 1)
    };
    if let Some(c) = &filter.compatible {
        sql += &format!(" AND d.compatible = {}", next(c, &mut params));
    }
    if let Some(v) = &filter.version {
        sql += &format!(" AND d.reported_version = {}", next(v, &mut params));
    }
    for tag in &filter.tags {
        let p = next(tag, &mut params);
        sql += &format!(" AND EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = {p})");
    }
    for (key, value) in &filter.attributes {
        let (k, v) = (next(key, &mut params), next(value, &mut params));
        // Attributes are a JSON object of strings stored as text; each engine reads it with its own JSON
        // functions. json_each avoids quoting the key into a JSON path.
        sql += &match engine {
            Engine::Sqlite => {
                format!(" AND EXISTS (SELECT 1 FROM json_each(d.attributes) j WHERE j.key = {k} AND j.value = {v})")
            }
            Engine::Postgres => format!(" AND (d.attributes::jsonb ->> {k}) = {v}"),
        };
    }
    (sql, params)
}

/// The devices matching `filter`, by controller id; with `not_in_rollout`, only those not yet members of it.
pub(super) async fn candidates(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    filter: &Filter,
    not_in_rollout: Option<i64>,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let (mut cond, params) = condition(engine, filter, 1);
    if not_in_rollout.is_some() {
        cond += &format!(
            " AND NOT EXISTS (SELECT 1 FROM rollout_members m WHERE m.rollout_id = ${} AND m.device_id = d.id)",
            params.len() + 1
        );
    }
    let sql = format!("SELECT d.id, d.controller_id FROM devices d WHERE {cond} ORDER BY d.id");
    let mut q = sqlx::query(&sql);
    for p in &params {
        q = q.bind(p);
    }
    if let Some(r) = not_in_rollout {
        q = q.bind(r);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok(Candidate { id: r.try_get("id")?, controller_id: r.try_get("controller_id")? })).collect()
}

/// The row ids of the devices matching `filter`, in id order.
pub async fn matching(db: &Db, filter: &Filter) -> HttpResult<Vec<i64>> {
    let mut conn = db.pool.acquire().await?;
    Ok(candidates(&mut conn, db.engine, filter, None).await?.into_iter().map(|c| c.id).collect())
}

/// How many devices match `filter` (the console's live count).
pub async fn count_matching(db: &Db, filter: &Filter) -> HttpResult<i64> {
    let (cond, params) = condition(db.engine, filter, 1);
    let sql = format!("SELECT COUNT(*) AS n FROM devices d WHERE {cond}");
    let mut q = sqlx::query(&sql);
    for p in &params {
        q = q.bind(p);
    }
    Ok(q.fetch_one(&db.pool).await?.try_get("n")?)
}

/// The order devices are dealt into percentage groups: by the SHA-256 of the controller id, so a canary is a
/// spread sample (not the oldest or alphabetically first devices) and the same fleet always gives the same groups.
fn spread_key(controller_id: &str) -> [u8; 32] {
    Sha256::digest(controller_id.as_bytes()).into()
}

/// Splits `devices` into `groups`: the explicitly listed controller ids first, then the percentage groups in
/// order, each taking its share of *all* matching devices, rounded up so a group with a share gets at least one
/// device while any remain (a 10 % canary of 3 devices is 1 device, not 0), and the last group taking whatever is
/// left. A group with neither a share nor a list gets no devices unless it is last. Returns one group index per
/// device, in the order of `devices`.
///
/// Refused (400): a listed device that does not match the filter (or is not registered), or one listed twice.
pub fn assign(devices: &[Candidate], groups: &[GroupSpec]) -> HttpResult<Vec<usize>> {
    let by_id: BTreeMap<&str, usize> = devices.iter().enumerate().map(|(i, d)| (d.controller_id.as_str(), i)).collect();
    let mut group_of: Vec<Option<usize>> = vec![None; devices.len()];
    for (g, spec) in groups.iter().enumerate() {
        for id in spec.devices.iter().flatten() {
            let Some(&i) = by_id.get(id.as_str()) else {
                return Err(HttpError::BadRequest(format!(
                    "groups[{g}].devices: {id} is not a registered device matching the rollout's filter"
                )));
            };
            if let Some(other) = group_of[i] {
                return Err(HttpError::BadRequest(format!("device {id} is listed in groups {other} and {g}")));
            }
            group_of[i] = Some(g);
        }
    }
    let mut rest: Vec<usize> = (0..devices.len()).filter(|&i| group_of[i].is_none()).collect();
    rest.sort_by_cached_key(|&i| spread_key(&devices[i].controller_id));
    let total = devices.len() as u64;
    let last = groups.len().saturating_sub(1);
    let (mut dealt, mut cumulative_percent) = (0usize, 0u64);
    for (g, spec) in groups.iter().enumerate() {
        let take = if g == last {
            rest.len() - dealt
        } else if let Some(p) = spec.percent {
            cumulative_percent += u64::from(p);
            // Cumulative, rounded up: shares add up without drifting, and a share is never rounded to nothing.
            let until = (total * cumulative_percent).div_ceil(100).min(rest.len() as u64) as usize;
            until.saturating_sub(dealt)
        } else {
            0
        };
        for &i in &rest[dealt..dealt + take] {
            group_of[i] = Some(g);
        }
        dealt += take;
    }
    debug_assert_eq!(dealt, rest.len());
    Ok(group_of.into_iter().map(|g| g.unwrap_or(last)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Candidate { id: i as i64 + 1, controller_id: format!("gw-{i}") }).collect()
    }

    fn pct(p: Option<u32>) -> GroupSpec {
        GroupSpec {
            name: "g".into(),
            percent: p,
            devices: None,
            success_threshold: 100,
            error_threshold: 0,
            approval: false,
        }
    }

    fn sizes(assigned: &[usize], groups: usize) -> Vec<usize> {
        (0..groups).map(|g| assigned.iter().filter(|&&a| a == g).count()).collect()
    }

    #[test]
    fn percentages_deal_every_device_once_and_round_up() {
        let groups = [pct(Some(10)), pct(Some(40)), pct(None)];
        assert_eq!(sizes(&assign(&devices(10), &groups).unwrap(), 3), vec![1, 4, 5]);
        assert_eq!(sizes(&assign(&devices(3), &groups).unwrap(), 3), vec![1, 1, 1]);
        assert_eq!(sizes(&assign(&devices(1), &groups).unwrap(), 3), vec![1, 0, 0]);
        assert_eq!(sizes(&assign(&devices(0), &groups).unwrap(), 3), vec![0, 0, 0]);
        assert_eq!(sizes(&assign(&devices(1000), &groups).unwrap(), 3), vec![100, 400, 500]);
        // Shares above 100 % in total: later groups get what is left.
        let greedy = [pct(Some(80)), pct(Some(80)), pct(Some(80))];
        assert_eq!(sizes(&assign(&devices(10), &greedy).unwrap(), 3), vec![8, 2, 0]);
    }

    #[test]
    fn listed_devices_go_to_their_group_and_the_rest_is_dealt() {
        let mut canary = pct(None);
        canary.devices = Some(vec!["gw-7".into()]);
        let groups = [canary, pct(Some(50)), pct(Some(50))];
        let a = assign(&devices(8), &groups).unwrap();
        assert_eq!(a[7], 0);
        assert_eq!(sizes(&a, 3), vec![1, 4, 3]);
    }

    #[test]
    fn a_listed_device_must_match_and_be_listed_once() {
        let mut g = pct(None);
        g.devices = Some(vec!["gw-99".into()]);
        assert!(matches!(assign(&devices(3), &[g.clone()]), Err(HttpError::BadRequest(_))));
        g.devices = Some(vec!["gw-1".into()]);
        assert!(matches!(assign(&devices(3), &[g.clone(), g]), Err(HttpError::BadRequest(_))));
    }

    #[test]
    fn the_order_is_spread_and_stable() {
        let groups = [pct(Some(50)), pct(None)];
        let a = assign(&devices(20), &groups).unwrap();
        assert_eq!(a, assign(&devices(20), &groups).unwrap());
        assert_ne!(&a[..10], &[0; 10], "not simply the first half");
    }
}
