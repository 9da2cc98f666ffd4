//! Keeping the daemon's resident memory at its idle size between jobs (glibc's allocator).
//!
//! Left alone, glibc gives each thread that allocates its own arena (up to eight per core) and raises its mmap
//! threshold to the largest block freed so far. An install allocates 4 MiB chunk buffers in a handful of threads;
//! after the first one, every later buffer comes from an arena instead of its own mapping, and what the arenas
//! hold stays resident when the job ends — 20–30 MB of a small gateway's RAM, for as long as the daemon runs.
//!
//! [`configure`] (once, at start-up) fixes the mmap threshold, so a large buffer is always its own mapping and
//! returns to the kernel when freed, and caps the arenas at two; [`release`] (after each job) hands the arenas'
//! free pages back. Elsewhere than glibc both do nothing.

/// Allocations of this size or more get their own mapping: every chunk buffer, none of the small objects.
const MMAP_THRESHOLD: i32 = 256 << 10;

/// Arenas: one for the main loop and the D-Bus service, one that the job threads share.
const ARENA_MAX: i32 = 2;

/// Tunes the allocator for a long-running daemon; call before starting threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn configure() {
    // SAFETY: mallopt only changes allocator parameters; it is called before the daemon starts its threads.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
    };
    if !ok {
        tracing::warn!("the allocator refused its settings (mallopt); memory may stay high after jobs");
    }
}

/// Tunes the allocator for a long-running daemon; call before starting threads.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn configure() {}

/// Returns the allocator's free memory to the kernel; call when a job has ended and dropped its buffers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free memory to the kernel; call when a job has ended and dropped its buffers.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() {}
