//! Staged rollouts: decisions in the pure [`engine`], target devices and their groups in [`filter`].

pub mod engine;
pub mod filter;

pub use self::filter::{count_matching, matching};
