//! Harness for booting A/B disk images under QEMU.
