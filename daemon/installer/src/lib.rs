//! The otter installer.
