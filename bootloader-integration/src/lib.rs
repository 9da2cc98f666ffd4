//! A/B slot model and bootloader backends.
