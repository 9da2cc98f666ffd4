//! The allocator settings of `otterd::memory`, in a process of their own (resident memory is per process, and
//! other tests allocating beside this one would blur it).

/// Resident anonymous memory of this process, KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("RssAnon:")).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Chunk-sized buffers allocated, touched and freed in short-lived threads (as an install does), with small
/// objects beside them, leave almost nothing resident once released; glibc left alone keeps them in the threads'
/// arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn chunk_buffers_freed_in_threads_do_not_stay_resident() {
    otterd::memory::configure();
    let before = rss_anon_kib();
    let mut kept = Vec::new();
    for round in 0..3 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(move || {
                        // A pool's life: buffers allocated, freed, allocated again.
                        for _ in 0..2 {
                            let bufs: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; 4 << 20]).collect();
                            std::hint::black_box(&bufs);
                        }
                        let small: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 200]).collect();
                        // One small object per thread outlives the job (a log line, a status string).
                        small.into_iter().nth(round).unwrap()
                    })
                })
                .collect();
            kept.extend(handles.into_iter().map(|h| h.join().unwrap()));
        });
    }
    otterd::memory::release();
    let after = rss_anon_kib();
    // 3 rounds × 4 threads × 16 MiB were touched; under 4 MiB may stay.
    assert!(after < before + 4096, "RssAnon {before} KiB before, {after} KiB after");
    assert_eq!(kept.len(), 12);
}
