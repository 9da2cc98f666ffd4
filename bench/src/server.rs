//! `otter-server-bench`: many devices polling an otter-server, the way a fleet does (a light poller, not full
//! otterd): each simulated device sends the DDI poll with its own target token at the fleet's rate.
//!
//! ```text
//! otter-server-bench populate DATABASE_URL DEVICES        # registers bench-0 … bench-N-1 (token = id)
//! otter-server-bench poll URL DEVICES RATE SECONDS PID    # open-loop polls at RATE/s, prints one result line
//! ```
//!
//! The load is open-loop: requests are sent on schedule whether or not earlier ones have answered, and latency is
//! measured from the scheduled time, so a server that falls behind shows it in p99 instead of slowing the load.
//! `bench/server` drives it against SQLite and PostgreSQL and prints the table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match args.get(1).map(String::as_str) {
        Some("populate") if args.len() == 4 => rt.block_on(populate(&args[2], args[3].parse()?)),
        Some("poll") if args.len() == 7 => {
            rt.block_on(poll(&args[2], args[3].parse()?, args[4].parse()?, args[5].parse()?, args[6].parse()?))
        }
        _ => {
            bail!("usage: otter-server-bench populate DATABASE_URL DEVICES | poll URL DEVICES RATE SECONDS SERVER_PID")
        }
    }
}

async fn populate(url: &str, n: usize) -> Result<()> {
    let db = otter_server::db::Db::open(url).await?;
    let start = Instant::now();
    let now = otter_server::db::now_ms();
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from(
            "INSERT INTO devices (controller_id, token_hash, compatible, created_ms, attributes_ms, last_seen_ms) VALUES ",
        );
        for (k, _) in batch.iter().enumerate() {
            if k > 0 {
                sql.push(',');
            }
            let b = k * 5;
            sql.push_str(&format!("(${}, ${}, 'bench', ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5));
        }
        sql.push_str(" ON CONFLICT (controller_id) DO NOTHING");
        let mut q = sqlx::query(&sql);
        for i in batch {
            let id = format!("bench-{i}");
            // A running fleet: every device was seen in the last five minutes, at a different moment.
            let seen = now - (*i as i64 * 7919) % 300_000;
            q = q.bind(id.clone()).bind(otter_server::auth::secret_hash(&id)).bind(now).bind(now).bind(seen);
        }
        q.execute(&db.pool).await?;
    }
    history(&db, now).await?;
    eprintln!("registered {n} devices in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Gives the fleet a past, as a real one has: one finished standard rollout of release 1.0 with every device a
/// member and one finished action each, so a poll reads through a rollout membership and an installed action.
async fn history(db: &otter_server::db::Db, now: i64) -> Result<()> {
    let artifact: i64 = sqlx::Row::try_get(
        &sqlx::query(
            "INSERT INTO artifacts (sha256, sha1, md5, size, filename, version, compatible, security_version, signer, \
             uploaded_by, created_ms) VALUES ($1, $2, $3, 1, 'bench-1.0.otter', '1.0', 'bench', 0, 'bench', \
             'bench', $4) ON CONFLICT (sha256) DO UPDATE SET size = 1 RETURNING id",
        )
        .bind("0".repeat(64))
        .bind("0".repeat(40))
        .bind("0".repeat(32))
        .bind(now)
        .fetch_one(&db.pool)
        .await?,
        "id",
    )?;
    let rollout: i64 = sqlx::Row::try_get(
        &sqlx::query(
            "INSERT INTO rollouts (name, artifact_id, filter, spec, speed, state, created_by, created_ms, updated_ms) \
             VALUES ('bench 1.0', $1, '{}', '{\"groups\":[{\"name\":\"all\"}]}', 'standard', 'finished', 'bench', \
             $2, $2) RETURNING id",
        )
        .bind(artifact)
        .bind(now)
        .fetch_one(&db.pool)
        .await?,
        "id",
    )?;
    sqlx::query("INSERT INTO rollout_members (rollout_id, device_id, group_idx) SELECT $1, id, 0 FROM devices")
        .bind(rollout)
        .execute(&db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO actions (device_id, rollout_id, group_idx, artifact_id, kind, state, active, created_ms, \
         updated_ms) SELECT id, $1, 0, $2, 'forced', 'finished', 0, $3, $3 FROM devices",
    )
    .bind(rollout)
    .bind(artifact)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    otter_bench::proc_kib(pid, "status", field).unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the ")" they are the 12th and 13th.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

async fn poll(url: &str, devices: usize, rate: f64, secs: f64, pid: u32) -> Result<()> {
    if rate <= 0.0 || devices == 0 {
        bail!("rate and devices must be positive");
    }
    otter_common::http::init_tls();
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(10)).build()?;
    let url = url.trim_end_matches('/').to_owned();
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::with_capacity((rate * secs) as usize + 16)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let ticks0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let id = format!("bench-{}", (k as usize * 7919) % devices);
        let (c, u, lat, errors) =
            (client.clone(), format!("{url}/DEFAULT/controller/v1/{id}"), lat.clone(), errors.clone());
        tasks.spawn(async move {
            let ok = match c.get(&u).header("Authorization", format!("TargetToken {id}")).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                lat.lock().unwrap().push(due.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        while let Some(r) = tasks.try_join_next() {
            r.context("poll task")?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.context("poll task")?;
    }
    let wall = start.elapsed().as_secs_f64();
    let server_cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / wall;
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| if l.is_empty() { 0.0 } else { l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0 };
    println!(
        "target {rate:>7.0}/s  achieved {:>7.0}/s  p50 {:>6.2} ms  p99 {:>7.2} ms  errors {}  server cpu {:.0} %  rss {:.1} MiB (peak {:.1}; own {:.1}, file-mapped {:.1})",
        l.len() as f64 / wall,
        pct(0.50),
        pct(0.99),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        server_cpu * 100.0,
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0,
        rss_kib(pid, "RssAnon:") as f64 / 1024.0,
        rss_kib(pid, "RssFile:") as f64 / 1024.0,
    );
    Ok(())
}
