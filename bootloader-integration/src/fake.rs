//! A fake bootloader for unit tests of the daemon: in memory, no root, and it simulates what
//! the bootloader picks at the next boot.
//!
//! It runs the same [`BootOrderScheme`] as the U-Boot backend over a map of variables, keeps
//! what was stored apart from unstored changes, records every mutating call, and
//! [`FakeBootloader::simulate_boot`] does what the boot script does at power-on (decrement the
//! chosen slot's attempts, fall back when they run out). A "reboot" forgets unstored changes,
//! as a real one would.

use std::collections::BTreeMap;

use crate::scheme::{BootOrderScheme, EnvVars, VarScheme};
use crate::{BootBackend, BootError, Slot, SlotState};

/// A call made on the fake, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// [`BootBackend::set_try_next`].
    SetTryNext(Slot),
    /// [`BootBackend::mark_good`].
    MarkGood(Slot),
    /// [`BootBackend::mark_bad`].
    MarkBad(Slot),
    /// [`BootBackend::store`] (also recorded when it failed by injection).
    Store,
    /// [`BootBackend::reload`].
    Reload,
}

/// In-memory [`BootBackend`] with boot simulation. Clone it to snapshot it.
#[derive(Debug, Clone)]
pub struct FakeBootloader {
    scheme: BootOrderScheme,
    stored: BTreeMap<String, String>,
    memory: BTreeMap<String, String>,
    calls: Vec<Call>,
    boots: Vec<Option<Slot>>,
    fail_stores: u32,
}

impl FakeBootloader {
    /// A settled device booting `primary`: both slots good, `primary` first, trials get
    /// [`crate::uboot::DEFAULT_ATTEMPTS`] boots.
    pub fn new(primary: Slot) -> Self {
        Self::with_attempts(primary, crate::uboot::DEFAULT_ATTEMPTS)
            .unwrap_or_else(|_| unreachable!("the default attempts are valid"))
    }

    /// Like [`FakeBootloader::new`] with `attempts` boots per trial (1..=9).
    pub fn with_attempts(primary: Slot, attempts: u32) -> Result<Self, BootError> {
        let scheme = BootOrderScheme::new(attempts)?;
        let mut vars = BTreeMap::new();
        vars.set_var(BootOrderScheme::ORDER_VAR, &format!("{primary} {}", !primary))?;
        for slot in Slot::ALL {
            vars.set_var(BootOrderScheme::left_var(slot), &attempts.to_string())?;
        }
        Ok(Self { scheme, stored: vars.clone(), memory: vars, calls: Vec::new(), boots: Vec::new(), fail_stores: 0 })
    }

    /// Power-on: forgets unstored changes, lets the "boot script" pick a slot and update its
    /// counters in storage, and returns the slot that boots (`None`: no slot bootable).
    pub fn simulate_boot(&mut self) -> Option<Slot> {
        let booted = self.scheme.simulate_boot(&mut self.stored);
        self.memory = self.stored.clone();
        self.boots.push(booted);
        booted
    }

    /// The calls made so far.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Returns and clears the recorded calls.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// The slots booted by [`FakeBootloader::simulate_boot`], in order.
    pub fn boots(&self) -> &[Option<Slot>] {
        &self.boots
    }

    /// The variables as stored (what the bootloader sees).
    pub fn stored_vars(&self) -> &BTreeMap<String, String> {
        &self.stored
    }

    /// The variables in memory (including unstored changes).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.memory
    }

    /// The state of `slot` as stored, ignoring unstored changes.
    pub fn stored_state(&self, slot: Slot) -> SlotState {
        self.scheme.state(&self.stored, slot)
    }

    /// The slot the bootloader will pick at the next boot, as stored.
    pub fn stored_primary(&self) -> Option<Slot> {
        self.scheme.primary(&self.stored)
    }

    /// Whether there are changes not yet stored.
    pub fn has_unstored_changes(&self) -> bool {
        self.memory != self.stored
    }

    /// Makes the next `n` calls of [`BootBackend::store`] fail with [`BootError::Injected`]
    /// without storing anything (the changes stay in memory).
    pub fn fail_next_stores(&mut self, n: u32) {
        self.fail_stores = n;
    }
}

impl BootBackend for FakeBootloader {
    fn slot_state(&self, slot: Slot) -> SlotState {
        self.scheme.state(&self.memory, slot)
    }

    fn primary(&self) -> Option<Slot> {
        self.scheme.primary(&self.memory)
    }

    fn set_try_next(&mut self, slot: Slot) -> Result<(), BootError> {
        self.calls.push(Call::SetTryNext(slot));
        self.scheme.try_next(&mut self.memory, slot)
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), BootError> {
        self.calls.push(Call::MarkGood(slot));
        self.scheme.mark_good(&mut self.memory, slot)
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootError> {
        self.calls.push(Call::MarkBad(slot));
        self.scheme.mark_bad(&mut self.memory, slot)
    }

    fn store(&mut self) -> Result<(), BootError> {
        self.calls.push(Call::Store);
        if self.fail_stores > 0 {
            self.fail_stores -= 1;
            return Err(BootError::Injected("store"));
        }
        self.stored = self.memory.clone();
        Ok(())
    }

    fn reload(&mut self) -> Result<(), BootError> {
        self.calls.push(Call::Reload);
        self.memory = self.stored.clone();
        Ok(())
    }

    fn security_version(&self) -> Option<u64> {
        crate::security_version_of(&self.memory)
    }

    fn raise_security_version(&mut self, version: u64) -> Result<(), BootError> {
        crate::raise_security_version_in(&mut self.memory, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlotState::{Bad, Good};

    #[test]
    fn settled_device_keeps_booting_its_primary_when_confirmed() {
        let mut fake = FakeBootloader::new(Slot::A);
        assert_eq!(fake.primary(), Some(Slot::A));
        for _ in 0..10 {
            assert_eq!(fake.simulate_boot(), Some(Slot::A));
            fake.mark_good(Slot::A).unwrap();
            fake.store().unwrap();
        }
        assert_eq!(fake.slot_state(Slot::B), Good);
    }

    #[test]
    fn successful_update() {
        let mut fake = FakeBootloader::new(Slot::A);
        fake.set_try_next(Slot::B).unwrap();
        assert_eq!(fake.slot_state(Slot::B), SlotState::Trying { attempts_left: 3 });
        assert_eq!(fake.stored_state(Slot::B), Good, "not stored yet");
        fake.store().unwrap();
        assert_eq!(fake.simulate_boot(), Some(Slot::B));
        assert_eq!(fake.slot_state(Slot::B), SlotState::Trying { attempts_left: 2 });
        fake.mark_good(Slot::B).unwrap();
        fake.store().unwrap();
        for _ in 0..5 {
            assert_eq!(fake.simulate_boot(), Some(Slot::B));
            fake.mark_good(Slot::B).unwrap();
            fake.store().unwrap();
        }
        assert_eq!(fake.slot_state(Slot::B), Good);
        assert_eq!(fake.slot_state(Slot::A), Good);
        assert_eq!(&fake.calls()[..4], &[Call::SetTryNext(Slot::B), Call::Store, Call::MarkGood(Slot::B), Call::Store]);
    }

    #[test]
    fn trial_that_never_confirms_falls_back() {
        let mut fake = FakeBootloader::with_attempts(Slot::A, 2).unwrap();
        fake.set_try_next(Slot::B).unwrap();
        fake.store().unwrap();
        assert_eq!(fake.simulate_boot(), Some(Slot::B));
        assert_eq!(fake.simulate_boot(), Some(Slot::B));
        assert_eq!(fake.slot_state(Slot::B), SlotState::Trying { attempts_left: 0 });
        assert_eq!(fake.simulate_boot(), Some(Slot::A));
        assert_eq!(fake.boots(), &[Some(Slot::B), Some(Slot::B), Some(Slot::A)]);
        fake.mark_bad(Slot::B).unwrap();
        fake.mark_good(Slot::A).unwrap();
        fake.store().unwrap();
        assert_eq!(fake.slot_state(Slot::B), Bad);
        for _ in 0..5 {
            assert_eq!(fake.simulate_boot(), Some(Slot::A));
        }
    }

    #[test]
    fn unstored_changes_are_lost_at_reboot_and_reload() {
        let mut fake = FakeBootloader::new(Slot::A);
        fake.set_try_next(Slot::B).unwrap();
        assert!(fake.has_unstored_changes());
        let snapshot = fake.clone();
        assert_eq!(fake.simulate_boot(), Some(Slot::A));
        assert!(!fake.has_unstored_changes());
        let mut other = snapshot;
        other.reload().unwrap();
        assert_eq!(other.slot_state(Slot::B), Good);
        assert_eq!(other.calls().last(), Some(&Call::Reload));
    }

    #[test]
    fn injected_store_failure_writes_nothing() {
        let mut fake = FakeBootloader::new(Slot::A);
        fake.fail_next_stores(1);
        fake.set_try_next(Slot::B).unwrap();
        assert!(matches!(fake.store(), Err(BootError::Injected(_))));
        assert_eq!(fake.stored_primary(), Some(Slot::A));
        fake.store().unwrap();
        assert_eq!(fake.stored_primary(), Some(Slot::B));
    }

    #[test]
    fn the_security_version_floor_only_rises() {
        let mut fake = FakeBootloader::new(Slot::A);
        assert_eq!(fake.security_version(), None);
        fake.raise_security_version(5).unwrap();
        fake.raise_security_version(3).unwrap();
        assert_eq!(fake.security_version(), Some(5));
        fake.store().unwrap();
        assert_eq!(fake.stored_vars().get(crate::SECURITY_VERSION_VAR).map(String::as_str), Some("5"));
    }
}
