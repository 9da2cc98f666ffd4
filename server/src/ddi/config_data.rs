//! `PUT configData`: the device's inventory attributes (hawkBit's controller attributes).
//!
//! Modes `merge` (the default when absent, as in hawkBit), `replace` and `remove`; `data` must not be empty.
//! hawkBit's limits: keys 1–128 characters, values at most 128, at most 100 attributes per device (over that
//! 429, as hawkBit's quota). A device type sent as `compatible` (or `device_type`, which otterd's inventory sends)
//! fills the device's compatible when it has none yet; an operator's or the enrollment's value is never
//! overwritten by the device.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::auth::{Register, authenticate};
use super::json::{ConfigData, Mode};
use super::read_json;
use crate::AppState;
use crate::devices;
use crate::error::{HttpError, HttpResult};

/// Attributes per device (hawkBit's `maxAttributeEntriesPerTarget`).
pub const MAX_ATTRIBUTES: usize = 100;
/// Characters per key (hawkBit's `CONTROLLER_ATTRIBUTE_MAX_KEY_SIZE`).
pub const MAX_KEY: usize = 128;
/// Characters per value (hawkBit's `CONTROLLER_ATTRIBUTE_MAX_VALUE_SIZE`).
pub const MAX_VALUE: usize = 128;
/// Attributes that name the device type, in order of preference.
const COMPATIBLE_KEYS: [&str; 2] = ["compatible", "device_type"];

/// `PUT configData`.
pub async fn put(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<()> {
    let identity = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let c: ConfigData = read_json(&headers, body).await?;
    let device = devices::by_controller_id(&state.db, &identity.controller_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("controller {controller_id} is not registered")))?;
    let merged = apply(device.attributes, c.mode.unwrap_or_default(), c.data.unwrap_or_default())?;
    let compatible = COMPATIBLE_KEYS.iter().find_map(|k| merged.get(*k)).filter(|v| !v.trim().is_empty());
    devices::set_attributes(&state.db, device.id, &merged, compatible.map(String::as_str)).await?;
    Ok(())
}

/// The attributes after an update, or why the update is refused. Pure.
pub fn apply(
    mut current: BTreeMap<String, String>,
    mode: Mode,
    data: BTreeMap<String, String>,
) -> HttpResult<BTreeMap<String, String>> {
    if data.is_empty() {
        return Err(HttpError::BadRequest("configData: data must not be empty".into()));
    }
    for (k, v) in &data {
        let chars = k.chars().count();
        if chars == 0 || chars > MAX_KEY || k.chars().any(char::is_control) {
            return Err(HttpError::BadRequest(format!(
                "configData: key {k:?} must be 1–{MAX_KEY} characters without control characters"
            )));
        }
        if mode != Mode::Remove && v.chars().count() > MAX_VALUE {
            return Err(HttpError::BadRequest(format!(
                "configData: the value of {k:?} exceeds {MAX_VALUE} characters"
            )));
        }
    }
    let before = current.len();
    match mode {
        Mode::Merge => current.extend(data),
        Mode::Replace => current = data,
        Mode::Remove => current.retain(|k, _| !data.contains_key(k)),
    }
    // As hawkBit: the quota is checked when an update adds attributes, so a device over it can still shrink.
    if current.len() > MAX_ATTRIBUTES && current.len() > before {
        return Err(HttpError::Quota(format!("configData: at most {MAX_ATTRIBUTES} attributes per device")));
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn modes() {
        let cur = map(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            apply(cur.clone(), Mode::Merge, map(&[("b", "3"), ("c", "4")])).unwrap(),
            map(&[("a", "1"), ("b", "3"), ("c", "4")])
        );
        assert_eq!(apply(cur.clone(), Mode::Replace, map(&[("c", "4")])).unwrap(), map(&[("c", "4")]));
        assert_eq!(apply(cur.clone(), Mode::Remove, map(&[("a", "")])).unwrap(), map(&[("b", "2")]));
        assert!(matches!(apply(cur, Mode::Merge, map(&[])), Err(HttpError::BadRequest(_))));
    }

    #[test]
    fn limits() {
        let k = "k".repeat(MAX_KEY + 1);
        assert!(matches!(apply(BTreeMap::new(), Mode::Merge, map(&[(&k, "v")])), Err(HttpError::BadRequest(_))));
        let v = "v".repeat(MAX_VALUE + 1);
        assert!(matches!(apply(BTreeMap::new(), Mode::Merge, map(&[("k", &v)])), Err(HttpError::BadRequest(_))));
        assert!(apply(BTreeMap::new(), Mode::Merge, map(&[("k", &"v".repeat(MAX_VALUE))])).is_ok());
        let full: BTreeMap<String, String> = (0..MAX_ATTRIBUTES).map(|i| (format!("a{i}"), "v".into())).collect();
        assert!(matches!(apply(full.clone(), Mode::Merge, map(&[("new", "v")])), Err(HttpError::Quota(_))));
        assert!(apply(full, Mode::Merge, map(&[("a1", "w")])).is_ok());
    }
}
