//! The variable schemes: how slot states map onto bootloader environment variables, and what
//! the bootloader does with them at boot.
//!
//! Each scheme is pure: it reads and writes variables through [`EnvVars`], so the same code
//! runs on a U-Boot environment, a GRUB environment block or a plain map in tests. The
//! `simulate_boot` functions model the device-side boot scripts; the fake backend and the
//! table tests use them, and the QEMU tests check the real scripts against the same behaviour.

use std::collections::BTreeMap;

use crate::{BootError, Slot, SlotState};

/// Variable in which otter records the slot it put on trial (`A` or `B`); cleared by mark
/// good / mark bad of that slot. Needed because in the U-Boot and GRUB schemes a slot on trial
/// and a committed slot look alike (both have attempts left / `OK=1`); the boot scripts never
/// read it.
pub const TRIAL_VAR: &str = "OTTER_TRIAL";

/// Variable in which the Mender scheme records a slot marked bad (Mender's own variables
/// cannot express it); the boot scripts never read it.
pub const MENDER_BAD_VAR: &str = "OTTER_BAD";

/// The most boot attempts a trial may get: the boot script decrements the counters with an
/// `if`/`elif` chain over literal single-digit values (U-Boot builds without `setexpr`).
pub const MAX_ATTEMPTS: u32 = 9;

/// Key/value access to an environment, as the schemes need it.
pub trait EnvVars {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<&str>;
    /// Sets `name` to `value` (in memory).
    fn set_var(&mut self, name: &str, value: &str) -> Result<(), BootError>;
    /// Removes `name` (in memory); absent is fine.
    fn remove_var(&mut self, name: &str);
}

impl EnvVars for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }

    fn set_var(&mut self, name: &str, value: &str) -> Result<(), BootError> {
        self.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn remove_var(&mut self, name: &str) {
        self.remove(name);
    }
}

/// A variable scheme: slot states on top of environment variables.
pub trait VarScheme {
    /// The state of `slot`.
    fn state(&self, env: &dyn EnvVars, slot: Slot) -> SlotState;
    /// The slot the bootloader picks at the next boot, if any.
    fn primary(&self, env: &dyn EnvVars) -> Option<Slot>;
    /// Puts `slot` on trial for the next boot.
    fn try_next(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError>;
    /// Commits `slot`.
    fn mark_good(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError>;
    /// Marks `slot` bad.
    fn mark_bad(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError>;
    /// Does what the bootloader does at power-on: picks a slot, updates its counters in `env`
    /// (as the boot script saves them) and returns the slot it boots (`None`: none, e.g. the
    /// rescue entry).
    fn simulate_boot(&self, env: &mut dyn EnvVars) -> Option<Slot>;
}

fn trial(env: &dyn EnvVars) -> Option<Slot> {
    env.var(TRIAL_VAR).and_then(|v| v.parse().ok())
}

fn clear_trial_of(env: &mut dyn EnvVars, slot: Slot) {
    if trial(env) == Some(slot) {
        env.remove_var(TRIAL_VAR);
    }
}

/// An attempts counter as the U-Boot boot script reads it: `1`..`9`, or RAUC's hex spelling
/// `0x1`..`0x9`. Anything else (`0`, `10`, garbage) is no attempts left: the script has no
/// arithmetic and matches literal values.
fn script_counter(v: &str) -> u32 {
    let digit = v.strip_prefix("0x").unwrap_or(v);
    match digit.as_bytes() {
        [d @ b'1'..=b'9'] => u32::from(d - b'0'),
        _ => 0,
    }
}

/// Parses a number: decimal, or hex with `0x`. Anything else counts as 0.
fn parse_counter(v: &str) -> u32 {
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or(0)
}

/// A slot-name list (`BOOT_ORDER`, `ORDER`), split on spaces.
fn order_tokens(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_owned).collect()
}

/// The order with `slot` first and everything else after it, in the old order.
fn with_first(tokens: &[String], slot: Slot) -> String {
    let mut out = vec![slot.as_str().to_owned()];
    out.extend(tokens.iter().filter(|t| *t != slot.as_str()).cloned());
    out.join(" ")
}

fn check_attempts(attempts: u32) -> Result<(), BootError> {
    if (1..=MAX_ATTEMPTS).contains(&attempts) {
        Ok(())
    } else {
        Err(BootError::Settings(format!("boot attempts must be between 1 and {MAX_ATTEMPTS}, got {attempts}")))
    }
}

/// The default U-Boot scheme (`bootloader-integration/uboot/boot.cmd`), compatible with
/// RAUC's `contrib/uboot.sh`: `BOOT_ORDER="A B"`, `BOOT_A_LEFT`, `BOOT_B_LEFT`.
///
/// The boot script walks `BOOT_ORDER`, boots the first slot whose `BOOT_x_LEFT` is above 0 and
/// decrements it; when none has attempts left it sets both counters back to `attempts` and
/// resets. Missing variables mean `BOOT_ORDER="A B"` and `BOOT_x_LEFT=attempts`, as the script
/// initialises them, so `attempts` must equal the script's `otter_attempts` (default 3).
/// Counters are written in decimal and read as the script does (`1`..`9`, `0x1`..`0x9`; anything
/// else is 0).
///
/// - try next X: X first in `BOOT_ORDER`, `BOOT_X_LEFT=attempts`, `OTTER_TRIAL=X`
/// - mark good X: `BOOT_X_LEFT=attempts`, X appended to `BOOT_ORDER` if missing, trial cleared
/// - mark bad X: X removed from `BOOT_ORDER`, `BOOT_X_LEFT=0`, trial cleared
/// - state: not in `BOOT_ORDER` → bad; `OTTER_TRIAL=X` → trying with `BOOT_X_LEFT` attempts;
///   `BOOT_X_LEFT=0` → bad; else good
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOrderScheme {
    attempts: u32,
}

impl BootOrderScheme {
    /// Variable holding the slot order.
    pub const ORDER_VAR: &'static str = "BOOT_ORDER";

    /// A scheme giving a trial `attempts` boots (1..=9).
    pub fn new(attempts: u32) -> Result<Self, BootError> {
        check_attempts(attempts)?;
        Ok(Self { attempts })
    }

    /// Boots a trial gets.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The counter variable of `slot`: `BOOT_A_LEFT` / `BOOT_B_LEFT`.
    pub fn left_var(slot: Slot) -> &'static str {
        match slot {
            Slot::A => "BOOT_A_LEFT",
            Slot::B => "BOOT_B_LEFT",
        }
    }

    fn order(&self, env: &dyn EnvVars) -> Vec<String> {
        match env.var(Self::ORDER_VAR) {
            Some(v) if !v.is_empty() => order_tokens(v),
            _ => vec!["A".to_owned(), "B".to_owned()],
        }
    }

    fn left(&self, env: &dyn EnvVars, slot: Slot) -> u32 {
        match env.var(Self::left_var(slot)) {
            Some(v) if !v.is_empty() => script_counter(v),
            _ => self.attempts,
        }
    }

    fn in_order(&self, env: &dyn EnvVars, slot: Slot) -> bool {
        self.order(env).iter().any(|t| t == slot.as_str())
    }

    fn pick(&self, env: &dyn EnvVars) -> Option<Slot> {
        self.order(env)
            .iter()
            .filter_map(|t| t.parse::<Slot>().ok().filter(|s| s.as_str() == t))
            .find(|s| self.left(env, *s) > 0)
    }
}

impl VarScheme for BootOrderScheme {
    fn state(&self, env: &dyn EnvVars, slot: Slot) -> SlotState {
        if !self.in_order(env, slot) {
            return SlotState::Bad;
        }
        let left = self.left(env, slot);
        if trial(env) == Some(slot) {
            SlotState::Trying { attempts_left: left }
        } else if left == 0 {
            SlotState::Bad
        } else {
            SlotState::Good
        }
    }

    fn primary(&self, env: &dyn EnvVars) -> Option<Slot> {
        // No slot left: the script resets all counters and reboots, then walks the order again.
        self.pick(env)
            .or_else(|| self.order(env).iter().find_map(|t| t.parse::<Slot>().ok().filter(|s| s.as_str() == t)))
    }

    fn try_next(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let order = with_first(&self.order(env), slot);
        env.set_var(Self::ORDER_VAR, &order)?;
        env.set_var(Self::left_var(slot), &self.attempts.to_string())?;
        env.set_var(TRIAL_VAR, slot.as_str())
    }

    fn mark_good(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let mut order = self.order(env);
        if !order.iter().any(|t| t == slot.as_str()) {
            order.push(slot.as_str().to_owned());
        }
        env.set_var(Self::ORDER_VAR, &order.join(" "))?;
        env.set_var(Self::left_var(slot), &self.attempts.to_string())?;
        clear_trial_of(env, slot);
        Ok(())
    }

    fn mark_bad(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let order: Vec<String> = self.order(env).into_iter().filter(|t| t != slot.as_str()).collect();
        env.set_var(Self::ORDER_VAR, &order.join(" "))?;
        env.set_var(Self::left_var(slot), "0")?;
        clear_trial_of(env, slot);
        Ok(())
    }

    fn simulate_boot(&self, env: &mut dyn EnvVars) -> Option<Slot> {
        // Two passes: the second one is the boot after "no slot left → reset counters, reset".
        for _ in 0..2 {
            if let Some(slot) = self.pick(env) {
                let left = self.left(env, slot);
                env.set_var(Self::left_var(slot), &(left - 1).to_string()).ok()?;
                return Some(slot);
            }
            for s in Slot::ALL {
                env.set_var(Self::left_var(s), &self.attempts.to_string()).ok()?;
            }
        }
        None
    }
}

/// Mender's U-Boot scheme (`mender_boot_part`, `mender_boot_part_hex`, `upgrade_available`,
/// `bootcount`, `bootlimit`), for boards already set up for Mender.
///
/// U-Boot (`CONFIG_BOOTCOUNT_LIMIT` + `CONFIG_BOOTCOUNT_ENV`) increments `bootcount` on every
/// boot while `upgrade_available=1`; once `bootcount > bootlimit` it runs `altbootcmd`, which
/// flips `mender_boot_part` to the other partition and clears `upgrade_available`.
///
/// - try next X: `mender_boot_part(_hex)` = X's partition, `upgrade_available=1`,
///   `bootcount=0`, `bootlimit=attempts`, `OTTER_TRIAL=X`
/// - mark good X: if X is the boot partition: `upgrade_available=0`, `bootcount=0`; trial and
///   bad marker of X cleared
/// - mark bad X: `OTTER_BAD=X`; if X is the boot partition, switch to the other one with
///   `upgrade_available=0`, `bootcount=0`; trial cleared
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MenderScheme {
    part_a: u32,
    part_b: u32,
    attempts: u32,
}

impl MenderScheme {
    /// Partition number variable (decimal).
    pub const PART_VAR: &'static str = "mender_boot_part";
    /// Partition number variable (hex).
    pub const PART_HEX_VAR: &'static str = "mender_boot_part_hex";
    /// Trial flag.
    pub const UPGRADE_VAR: &'static str = "upgrade_available";
    /// Boot counter.
    pub const COUNT_VAR: &'static str = "bootcount";
    /// Boot limit.
    pub const LIMIT_VAR: &'static str = "bootlimit";

    /// A scheme where slot A is partition `part_a`, B is `part_b`, and a trial gets `attempts`
    /// boots (1..=9).
    pub fn new(part_a: u32, part_b: u32, attempts: u32) -> Result<Self, BootError> {
        check_attempts(attempts)?;
        if part_a == part_b {
            return Err(BootError::Settings(format!(
                "mender partitions of slot A and B must differ, both are {part_a}"
            )));
        }
        Ok(Self { part_a, part_b, attempts })
    }

    fn part(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.part_a,
            Slot::B => self.part_b,
        }
    }

    fn current(&self, env: &dyn EnvVars) -> Option<Slot> {
        let part = env.var(Self::PART_VAR).map(parse_counter)?;
        Slot::ALL.into_iter().find(|s| self.part(*s) == part)
    }

    fn num(env: &dyn EnvVars, name: &str) -> u32 {
        env.var(name).map(parse_counter).unwrap_or(0)
    }

    fn set_part(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let part = self.part(slot);
        env.set_var(Self::PART_VAR, &part.to_string())?;
        env.set_var(Self::PART_HEX_VAR, &format!("{part:x}"))
    }
}

impl VarScheme for MenderScheme {
    fn state(&self, env: &dyn EnvVars, slot: Slot) -> SlotState {
        if trial(env) == Some(slot) {
            let running = self.current(env) == Some(slot) && Self::num(env, Self::UPGRADE_VAR) == 1;
            let attempts_left = if !running {
                0
            } else {
                match Self::num(env, Self::LIMIT_VAR) {
                    // U-Boot treats bootlimit 0 as "no limit".
                    0 => u32::MAX,
                    limit => limit.saturating_sub(Self::num(env, Self::COUNT_VAR)),
                }
            };
            return SlotState::Trying { attempts_left };
        }
        if env.var(MENDER_BAD_VAR).and_then(|v| v.parse().ok()) == Some(slot) {
            SlotState::Bad
        } else {
            SlotState::Good
        }
    }

    fn primary(&self, env: &dyn EnvVars) -> Option<Slot> {
        let current = self.current(env)?;
        let limit = Self::num(env, Self::LIMIT_VAR);
        if Self::num(env, Self::UPGRADE_VAR) == 1 && limit != 0 && Self::num(env, Self::COUNT_VAR) >= limit {
            Some(!current)
        } else {
            Some(current)
        }
    }

    fn try_next(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        self.set_part(env, slot)?;
        env.set_var(Self::UPGRADE_VAR, "1")?;
        env.set_var(Self::COUNT_VAR, "0")?;
        env.set_var(Self::LIMIT_VAR, &self.attempts.to_string())?;
        if env.var(MENDER_BAD_VAR).and_then(|v| v.parse().ok()) == Some(slot) {
            env.remove_var(MENDER_BAD_VAR);
        }
        env.set_var(TRIAL_VAR, slot.as_str())
    }

    fn mark_good(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        if self.current(env) == Some(slot) {
            env.set_var(Self::UPGRADE_VAR, "0")?;
            env.set_var(Self::COUNT_VAR, "0")?;
        }
        if env.var(MENDER_BAD_VAR).and_then(|v| v.parse().ok()) == Some(slot) {
            env.remove_var(MENDER_BAD_VAR);
        }
        clear_trial_of(env, slot);
        Ok(())
    }

    fn mark_bad(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        if self.current(env) == Some(slot) {
            self.set_part(env, !slot)?;
            env.set_var(Self::UPGRADE_VAR, "0")?;
            env.set_var(Self::COUNT_VAR, "0")?;
        }
        env.set_var(MENDER_BAD_VAR, slot.as_str())?;
        clear_trial_of(env, slot);
        Ok(())
    }

    fn simulate_boot(&self, env: &mut dyn EnvVars) -> Option<Slot> {
        let current = self.current(env)?;
        if Self::num(env, Self::UPGRADE_VAR) != 1 {
            return Some(current);
        }
        let count = Self::num(env, Self::COUNT_VAR) + 1;
        env.set_var(Self::COUNT_VAR, &count.to_string()).ok()?;
        let limit = Self::num(env, Self::LIMIT_VAR);
        if limit != 0 && count > limit {
            // altbootcmd: back to the other partition, trial over.
            self.set_part(env, !current).ok()?;
            env.set_var(Self::UPGRADE_VAR, "0").ok()?;
            return Some(!current);
        }
        Some(current)
    }
}

/// The GRUB scheme of `bootloader-integration/grub/grub.cfg`, after RAUC's `contrib/grub.conf`:
/// `ORDER="A B"`, `A_OK`, `A_TRY`, `B_OK`, `B_TRY`.
///
/// At boot GRUB takes the first slot in `ORDER` with `X_OK=1` and `X_TRY=0`, sets its
/// `X_TRY=1`, saves and boots it. If none qualifies it clears `X_TRY` of the slots with
/// `X_OK=1` and picks again (RAUC boots a rescue entry here; otter has none); if still none it
/// boots A. So a trial gets exactly one boot. Missing variables mean `ORDER="A B"`, `A_OK=1`,
/// `B_OK=0`, `X_TRY=0`, as `grub.cfg` sets them before `load_env`; flags are `1` only when
/// literally `1`.
///
/// - try next X: X first in `ORDER`, `X_OK=1`, `X_TRY=0`, `OTTER_TRIAL=X`
/// - mark good X: `X_OK=1`, `X_TRY=0`, X appended to `ORDER` if missing, trial cleared
/// - mark bad X: `X_OK=0`, `X_TRY=0`, trial cleared
/// - state: `X_OK≠1` → bad; `OTTER_TRIAL=X` → trying (1 attempt left while `X_TRY=0`, else 0);
///   else good
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrubScheme;

impl GrubScheme {
    /// Variable holding the slot order.
    pub const ORDER_VAR: &'static str = "ORDER";

    /// `A_OK` / `B_OK`.
    pub fn ok_var(slot: Slot) -> &'static str {
        match slot {
            Slot::A => "A_OK",
            Slot::B => "B_OK",
        }
    }

    /// `A_TRY` / `B_TRY`.
    pub fn try_var(slot: Slot) -> &'static str {
        match slot {
            Slot::A => "A_TRY",
            Slot::B => "B_TRY",
        }
    }

    fn order(env: &dyn EnvVars) -> Vec<String> {
        match env.var(Self::ORDER_VAR) {
            Some(v) => order_tokens(v),
            None => vec!["A".to_owned(), "B".to_owned()],
        }
    }

    fn ok(env: &dyn EnvVars, slot: Slot) -> bool {
        match env.var(Self::ok_var(slot)) {
            Some(v) => v == "1",
            // grub.cfg's defaults: A good, B not installed.
            None => slot == Slot::A,
        }
    }

    fn tried(env: &dyn EnvVars, slot: Slot) -> bool {
        env.var(Self::try_var(slot)) == Some("1")
    }

    fn pick(env: &dyn EnvVars, tried: &BTreeMap<Slot, bool>) -> Option<Slot> {
        Self::order_slots(env).into_iter().find(|s| Self::ok(env, *s) && !tried[s])
    }

    /// What grub.cfg decides: the slot it boots and the TRY flags it saves.
    fn decide(env: &dyn EnvVars) -> (Slot, BTreeMap<Slot, bool>) {
        let mut tried: BTreeMap<Slot, bool> = Slot::ALL.into_iter().map(|s| (s, Self::tried(env, s))).collect();
        let chosen = Self::pick(env, &tried).unwrap_or_else(|| {
            for slot in Slot::ALL {
                if Self::ok(env, slot) {
                    tried.insert(slot, false);
                }
            }
            Self::pick(env, &tried).unwrap_or(Slot::A)
        });
        tried.insert(chosen, true);
        (chosen, tried)
    }

    fn order_slots(env: &dyn EnvVars) -> Vec<Slot> {
        Self::order(env).iter().filter_map(|t| t.parse::<Slot>().ok().filter(|s| s.as_str() == t)).collect()
    }
}

impl VarScheme for GrubScheme {
    fn state(&self, env: &dyn EnvVars, slot: Slot) -> SlotState {
        if !Self::ok(env, slot) {
            SlotState::Bad
        } else if trial(env) == Some(slot) {
            let tried = Self::tried(env, slot);
            SlotState::Trying { attempts_left: if tried { 0 } else { 1 } }
        } else {
            SlotState::Good
        }
    }

    fn primary(&self, env: &dyn EnvVars) -> Option<Slot> {
        Some(Self::decide(env).0)
    }

    fn try_next(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let order = with_first(&Self::order(env), slot);
        env.set_var(Self::ORDER_VAR, &order)?;
        env.set_var(Self::ok_var(slot), "1")?;
        env.set_var(Self::try_var(slot), "0")?;
        env.set_var(TRIAL_VAR, slot.as_str())
    }

    fn mark_good(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        let mut order = Self::order(env);
        if !order.iter().any(|t| t == slot.as_str()) {
            order.push(slot.as_str().to_owned());
            env.set_var(Self::ORDER_VAR, &order.join(" "))?;
        }
        env.set_var(Self::ok_var(slot), "1")?;
        env.set_var(Self::try_var(slot), "0")?;
        clear_trial_of(env, slot);
        Ok(())
    }

    fn mark_bad(&self, env: &mut dyn EnvVars, slot: Slot) -> Result<(), BootError> {
        env.set_var(Self::ok_var(slot), "0")?;
        env.set_var(Self::try_var(slot), "0")?;
        clear_trial_of(env, slot);
        Ok(())
    }

    fn simulate_boot(&self, env: &mut dyn EnvVars) -> Option<Slot> {
        // grub.cfg ends with `save_env A_TRY B_TRY`: both are written, defaults included.
        let (chosen, tried) = Self::decide(env);
        for (slot, t) in tried {
            env.set_var(Self::try_var(slot), if t { "1" } else { "0" }).ok()?;
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env = BTreeMap<String, String>;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn trying(n: u32) -> SlotState {
        SlotState::Trying { attempts_left: n }
    }

    #[test]
    fn attempts_are_bounded() {
        assert!(BootOrderScheme::new(0).is_err());
        assert!(BootOrderScheme::new(10).is_err());
        assert!(BootOrderScheme::new(1).is_ok());
        assert!(BootOrderScheme::new(9).is_ok());
        assert!(MenderScheme::new(2, 3, 0).is_err());
        assert!(MenderScheme::new(2, 2, 1).is_err());
    }

    #[test]
    fn counters_parse_decimal_and_hex() {
        assert_eq!(parse_counter("3"), 3);
        assert_eq!(parse_counter("0x3"), 3);
        assert_eq!(parse_counter("0xa"), 10);
        assert_eq!(parse_counter("10"), 10);
        assert_eq!(parse_counter("x"), 0);
        assert_eq!(parse_counter(""), 0);
        for (v, want) in [
            ("1", 1),
            ("9", 9),
            ("0x3", 3),
            ("0", 0),
            ("0x0", 0),
            ("10", 0),
            ("0xa", 0),
            ("03", 0),
            (" 3", 0),
            ("x", 0),
        ] {
            assert_eq!(script_counter(v), want, "{v:?}");
        }
    }

    /// One row: starting variables, operation, expected variables afterwards (None = unset),
    /// expected states of A and B, expected primary.
    type Op = fn(&dyn VarScheme, &mut Env) -> Option<Slot>;

    struct Row {
        name: &'static str,
        start: &'static [(&'static str, &'static str)],
        op: Op,
        booted: Option<Slot>,
        vars: &'static [(&'static str, Option<&'static str>)],
        a: SlotState,
        b: SlotState,
        primary: Option<Slot>,
    }

    fn try_b(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.try_next(e, Slot::B).unwrap();
        None
    }
    fn good_b(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.mark_good(e, Slot::B).unwrap();
        None
    }
    fn good_a(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.mark_good(e, Slot::A).unwrap();
        None
    }
    fn bad_b(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.mark_bad(e, Slot::B).unwrap();
        None
    }
    fn bad_a(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.mark_bad(e, Slot::A).unwrap();
        None
    }
    fn boot(s: &dyn VarScheme, e: &mut Env) -> Option<Slot> {
        s.simulate_boot(e)
    }

    fn run(scheme: &dyn VarScheme, rows: &[Row]) {
        for row in rows {
            let mut e = env(row.start);
            let booted = (row.op)(scheme, &mut e);
            assert_eq!(booted, row.booted, "{}: booted slot", row.name);
            for (k, v) in row.vars {
                assert_eq!(e.get(*k).map(String::as_str), *v, "{}: variable {k}", row.name);
            }
            assert_eq!(scheme.state(&e, Slot::A), row.a, "{}: state of A", row.name);
            assert_eq!(scheme.state(&e, Slot::B), row.b, "{}: state of B", row.name);
            assert_eq!(scheme.primary(&e), row.primary, "{}: primary", row.name);
        }
    }

    const SETTLED_A: &[(&str, &str)] = &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")];

    #[test]
    fn boot_order_transitions() {
        use SlotState::{Bad, Good};
        let s = BootOrderScheme::new(3).unwrap();
        let rows = [
            Row {
                name: "fresh env reads as the script's defaults",
                start: &[],
                op: |_, _| None,
                booted: None,
                vars: &[("BOOT_ORDER", None)],
                a: Good,
                b: Good,
                primary: Some(Slot::A),
            },
            Row {
                name: "try next B",
                start: SETTLED_A,
                op: try_b,
                booted: None,
                vars: &[
                    ("BOOT_ORDER", Some("B A")),
                    ("BOOT_B_LEFT", Some("3")),
                    ("BOOT_A_LEFT", Some("3")),
                    (TRIAL_VAR, Some("B")),
                ],
                a: Good,
                b: trying(3),
                primary: Some(Slot::B),
            },
            Row {
                name: "try next B after B was marked bad",
                start: &[("BOOT_ORDER", "A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "0")],
                op: try_b,
                booted: None,
                vars: &[("BOOT_ORDER", Some("B A")), ("BOOT_B_LEFT", Some("3"))],
                a: Good,
                b: trying(3),
                primary: Some(Slot::B),
            },
            Row {
                name: "boot during trial decrements B",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3"), (TRIAL_VAR, "B")],
                op: boot,
                booted: Some(Slot::B),
                vars: &[("BOOT_B_LEFT", Some("2")), ("BOOT_A_LEFT", Some("3"))],
                a: Good,
                b: trying(2),
                primary: Some(Slot::B),
            },
            Row {
                name: "last attempt running",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "1"), (TRIAL_VAR, "B")],
                op: boot,
                booted: Some(Slot::B),
                vars: &[("BOOT_B_LEFT", Some("0"))],
                a: Good,
                b: trying(0),
                primary: Some(Slot::A),
            },
            Row {
                name: "attempts exhausted: falls back to A",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "0"), (TRIAL_VAR, "B")],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("BOOT_B_LEFT", Some("0")), ("BOOT_A_LEFT", Some("2"))],
                a: Good,
                b: trying(0),
                primary: Some(Slot::A),
            },
            Row {
                name: "mark good B commits the trial",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "2"), (TRIAL_VAR, "B")],
                op: good_b,
                booted: None,
                vars: &[("BOOT_ORDER", Some("B A")), ("BOOT_B_LEFT", Some("3")), (TRIAL_VAR, None)],
                a: Good,
                b: Good,
                primary: Some(Slot::B),
            },
            Row {
                name: "mark good A re-arms its counter and puts it back in the order",
                start: &[("BOOT_ORDER", "B"), ("BOOT_A_LEFT", "0"), ("BOOT_B_LEFT", "1"), (TRIAL_VAR, "B")],
                op: good_a,
                booted: None,
                vars: &[("BOOT_ORDER", Some("B A")), ("BOOT_A_LEFT", Some("3")), (TRIAL_VAR, Some("B"))],
                a: Good,
                b: trying(1),
                primary: Some(Slot::B),
            },
            Row {
                name: "mark bad B after a failed trial",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "0"), (TRIAL_VAR, "B")],
                op: bad_b,
                booted: None,
                vars: &[("BOOT_ORDER", Some("A")), ("BOOT_B_LEFT", Some("0")), (TRIAL_VAR, None)],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "mark bad of the other slot keeps the trial",
                start: &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3"), (TRIAL_VAR, "B")],
                op: bad_a,
                booted: None,
                vars: &[("BOOT_ORDER", Some("B")), (TRIAL_VAR, Some("B"))],
                a: Bad,
                b: trying(3),
                primary: Some(Slot::B),
            },
            Row {
                name: "no slot left: counters reset, then the first in order boots",
                start: &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "0"), ("BOOT_B_LEFT", "0")],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("BOOT_A_LEFT", Some("2")), ("BOOT_B_LEFT", Some("3"))],
                a: Good,
                b: Good,
                primary: Some(Slot::A),
            },
            Row {
                name: "blank order boots nothing",
                start: &[("BOOT_ORDER", " "), ("BOOT_A_LEFT", "3")],
                op: boot,
                booted: None,
                vars: &[("BOOT_A_LEFT", Some("3")), ("BOOT_B_LEFT", Some("3"))],
                a: Bad,
                b: Bad,
                primary: None,
            },
            Row {
                name: "RAUC's hex counters are understood, 10 and more are not",
                start: &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "0x0"), ("BOOT_B_LEFT", "0x3")],
                op: boot,
                booted: Some(Slot::B),
                vars: &[("BOOT_B_LEFT", Some("2")), ("BOOT_A_LEFT", Some("0x0"))],
                a: Bad,
                b: Good,
                primary: Some(Slot::B),
            },
        ];
        run(&s, &rows);
    }

    #[test]
    fn boot_order_unknown_slot_names_are_kept_but_never_booted() {
        let s = BootOrderScheme::new(3).unwrap();
        let mut e = env(&[("BOOT_ORDER", "R a A"), ("BOOT_A_LEFT", "0")]);
        s.try_next(&mut e, Slot::B).unwrap();
        assert_eq!(e["BOOT_ORDER"], "B R a A");
        let mut e = env(&[("BOOT_ORDER", "R"), ("BOOT_A_LEFT", "3")]);
        assert_eq!(s.simulate_boot(&mut e), None);
        assert_eq!(s.primary(&e), None);
    }

    #[test]
    fn boot_order_trial_runs_out_after_exactly_n_boots() {
        for n in 1..=MAX_ATTEMPTS {
            let s = BootOrderScheme::new(n).unwrap();
            let mut e = env(SETTLED_A);
            s.try_next(&mut e, Slot::B).unwrap();
            for i in 0..n {
                assert_eq!(s.simulate_boot(&mut e), Some(Slot::B), "n={n} boot {i}");
                assert_eq!(s.state(&e, Slot::B), trying(n - i - 1));
            }
            assert_eq!(s.simulate_boot(&mut e), Some(Slot::A), "n={n} fallback");
            assert_eq!(s.state(&e, Slot::B), trying(0));
        }
    }

    const MENDER_A: &[(&str, &str)] = &[
        ("mender_boot_part", "2"),
        ("mender_boot_part_hex", "2"),
        ("upgrade_available", "0"),
        ("bootcount", "0"),
        ("bootlimit", "1"),
    ];

    #[test]
    fn mender_transitions() {
        use SlotState::{Bad, Good};
        let s = MenderScheme::new(2, 3, 1).unwrap();
        let trial_b: &[(&str, &str)] = &[
            ("mender_boot_part", "3"),
            ("mender_boot_part_hex", "3"),
            ("upgrade_available", "1"),
            ("bootcount", "0"),
            ("bootlimit", "1"),
            (TRIAL_VAR, "B"),
        ];
        let rows = [
            Row {
                name: "try next B",
                start: MENDER_A,
                op: try_b,
                booted: None,
                vars: &[
                    ("mender_boot_part", Some("3")),
                    ("mender_boot_part_hex", Some("3")),
                    ("upgrade_available", Some("1")),
                    ("bootcount", Some("0")),
                    ("bootlimit", Some("1")),
                    (TRIAL_VAR, Some("B")),
                ],
                a: Good,
                b: trying(1),
                primary: Some(Slot::B),
            },
            Row {
                name: "first boot of the trial counts",
                start: trial_b,
                op: boot,
                booted: Some(Slot::B),
                vars: &[("bootcount", Some("1")), ("upgrade_available", Some("1"))],
                a: Good,
                b: trying(0),
                primary: Some(Slot::A),
            },
            Row {
                name: "attempts exhausted: altbootcmd goes back to A",
                start: &[
                    ("mender_boot_part", "3"),
                    ("mender_boot_part_hex", "3"),
                    ("upgrade_available", "1"),
                    ("bootcount", "1"),
                    ("bootlimit", "1"),
                    (TRIAL_VAR, "B"),
                ],
                op: boot,
                booted: Some(Slot::A),
                vars: &[
                    ("mender_boot_part", Some("2")),
                    ("mender_boot_part_hex", Some("2")),
                    ("upgrade_available", Some("0")),
                    ("bootcount", Some("2")),
                ],
                a: Good,
                b: trying(0),
                primary: Some(Slot::A),
            },
            Row {
                name: "mark good B commits",
                start: trial_b,
                op: good_b,
                booted: None,
                vars: &[
                    ("upgrade_available", Some("0")),
                    ("bootcount", Some("0")),
                    ("mender_boot_part", Some("3")),
                    (TRIAL_VAR, None),
                ],
                a: Good,
                b: Good,
                primary: Some(Slot::B),
            },
            Row {
                name: "mark bad B while B is the boot partition switches back",
                start: trial_b,
                op: bad_b,
                booted: None,
                vars: &[
                    ("mender_boot_part", Some("2")),
                    ("mender_boot_part_hex", Some("2")),
                    ("upgrade_available", Some("0")),
                    (TRIAL_VAR, None),
                    (MENDER_BAD_VAR, Some("B")),
                ],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "mark bad B after the fallback",
                start: &[
                    ("mender_boot_part", "2"),
                    ("mender_boot_part_hex", "2"),
                    ("upgrade_available", "0"),
                    ("bootcount", "2"),
                    ("bootlimit", "1"),
                    (TRIAL_VAR, "B"),
                ],
                op: bad_b,
                booted: None,
                vars: &[("mender_boot_part", Some("2")), (TRIAL_VAR, None)],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "try next clears a bad mark",
                start: &[("mender_boot_part", "2"), ("upgrade_available", "0"), (MENDER_BAD_VAR, "B")],
                op: try_b,
                booted: None,
                vars: &[(MENDER_BAD_VAR, None)],
                a: Good,
                b: trying(1),
                primary: Some(Slot::B),
            },
            Row {
                name: "settled boot changes nothing",
                start: MENDER_A,
                op: boot,
                booted: Some(Slot::A),
                vars: &[("bootcount", Some("0"))],
                a: Good,
                b: Good,
                primary: Some(Slot::A),
            },
            Row {
                name: "unknown partition boots nothing we know",
                start: &[("mender_boot_part", "7")],
                op: boot,
                booted: None,
                vars: &[],
                a: Good,
                b: Good,
                primary: None,
            },
        ];
        run(&s, &rows);
    }

    #[test]
    fn mender_hex_partition_numbers() {
        let s = MenderScheme::new(9, 10, 3).unwrap();
        let mut e = env(&[("mender_boot_part", "9")]);
        s.try_next(&mut e, Slot::B).unwrap();
        assert_eq!(e["mender_boot_part"], "10");
        assert_eq!(e["mender_boot_part_hex"], "a");
        for left in [2, 1, 0] {
            assert_eq!(s.simulate_boot(&mut e), Some(Slot::B));
            assert_eq!(s.state(&e, Slot::B), trying(left));
        }
        assert_eq!(s.simulate_boot(&mut e), Some(Slot::A));
        assert_eq!(e["mender_boot_part"], "9");
    }

    #[test]
    fn grub_transitions() {
        use SlotState::{Bad, Good};
        let s = GrubScheme;
        let settled: &[(&str, &str)] =
            &[("ORDER", "A B"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "1"), ("B_TRY", "0")];
        let trial_b: &[(&str, &str)] =
            &[("ORDER", "B A"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "1"), ("B_TRY", "0"), (TRIAL_VAR, "B")];
        let rows = [
            Row {
                name: "fresh env: grub.cfg's defaults boot A",
                start: &[],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("A_TRY", Some("1")), ("B_TRY", Some("0"))],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "nothing marked good still boots A",
                start: &[("A_OK", "0"), ("B_OK", "0")],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("A_TRY", Some("1")), ("B_TRY", Some("0"))],
                a: Bad,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "try next B",
                start: settled,
                op: try_b,
                booted: None,
                vars: &[("ORDER", Some("B A")), ("B_OK", Some("1")), ("B_TRY", Some("0")), (TRIAL_VAR, Some("B"))],
                a: Good,
                b: trying(1),
                primary: Some(Slot::B),
            },
            Row {
                name: "trial boot sets B_TRY",
                start: trial_b,
                op: boot,
                booted: Some(Slot::B),
                vars: &[("B_TRY", Some("1")), ("A_TRY", Some("0"))],
                a: Good,
                b: trying(0),
                primary: Some(Slot::A),
            },
            Row {
                name: "attempts exhausted: falls back to A",
                start: &[
                    ("ORDER", "B A"),
                    ("A_OK", "1"),
                    ("A_TRY", "0"),
                    ("B_OK", "1"),
                    ("B_TRY", "1"),
                    (TRIAL_VAR, "B"),
                ],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("B_TRY", Some("1")), ("A_TRY", Some("1"))],
                a: Good,
                b: trying(0),
                // Unless A is confirmed, the next boot clears both TRY flags and starts over.
                primary: Some(Slot::B),
            },
            Row {
                name: "mark good B",
                start: &[
                    ("ORDER", "B A"),
                    ("A_OK", "1"),
                    ("A_TRY", "0"),
                    ("B_OK", "1"),
                    ("B_TRY", "1"),
                    (TRIAL_VAR, "B"),
                ],
                op: good_b,
                booted: None,
                vars: &[("B_OK", Some("1")), ("B_TRY", Some("0")), (TRIAL_VAR, None)],
                a: Good,
                b: Good,
                primary: Some(Slot::B),
            },
            Row {
                name: "mark bad B",
                start: &[
                    ("ORDER", "B A"),
                    ("A_OK", "1"),
                    ("A_TRY", "1"),
                    ("B_OK", "1"),
                    ("B_TRY", "1"),
                    (TRIAL_VAR, "B"),
                ],
                op: bad_b,
                booted: None,
                vars: &[("B_OK", Some("0")), ("B_TRY", Some("0")), (TRIAL_VAR, None)],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "mark good A after the fallback re-arms it",
                start: &[("ORDER", "B A"), ("A_OK", "1"), ("A_TRY", "1"), ("B_OK", "0"), ("B_TRY", "0")],
                op: good_a,
                booted: None,
                vars: &[("A_TRY", Some("0")), ("ORDER", Some("B A"))],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
            Row {
                name: "every good slot tried: TRY of good slots cleared, first one boots",
                start: &[("ORDER", "A B"), ("A_OK", "1"), ("A_TRY", "1"), ("B_OK", "0"), ("B_TRY", "1")],
                op: boot,
                booted: Some(Slot::A),
                vars: &[("A_TRY", Some("1")), ("B_TRY", Some("1"))],
                a: Good,
                b: Bad,
                primary: Some(Slot::A),
            },
        ];
        run(&s, &rows);
    }
}
