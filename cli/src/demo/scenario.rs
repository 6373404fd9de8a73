//! The recruitment scenario (SPEC 5): many readers of candidate profiles through the
//! cache, transactional status updates that write the row, emit the domain event and
//! invalidate the profile, and a checker of every read against the ledger.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use crate::redis_client::{text_of, RedisHandle, Target};

/// Statuses a candidate moves through.
const STATUSES: [&str; 6] = [
    "applied",
    "screening",
    "interview",
    "offer",
    "hired",
    "rejected",
];

/// How readers use the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `NSCACHE.FETCH` leases: one loader per key, `SET ... LEASE` refused after an
    /// invalidation.
    Leases,
    /// Plain cache-aside: `GET`, load on a miss, `SET`.
    CacheAside,
}

impl Mode {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Leases => "NSCACHE.FETCH leases",
            Mode::CacheAside => "cache-aside (GET, load, SET)",
        }
    }
}

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Candidates in the table.
    pub candidates: i32,
    /// Concurrent readers.
    pub readers: usize,
    /// Concurrent updaters.
    pub updaters: usize,
    /// How long the loader takes after reading the row (a slow query or service).
    pub loader_delay: Duration,
    /// Pause between one updater's transactions.
    pub update_pause: Duration,
    /// Cache entry TTL (seconds).
    pub ttl: u64,
}

/// A cached profile.
#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    id: i32,
    status: String,
    version: i32,
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct RunResult {
    /// Reads completed.
    pub reads: u64,
    /// Loader calls (row reads from Postgres on behalf of the cache).
    pub loader_calls: u64,
    /// Status updates committed.
    pub updates: u64,
    /// Reads that returned a version older than one already invalidated before the
    /// read began.
    pub stale_reads: u64,
    /// Entries whose cached version is older than the row's after the relay drained.
    pub stale_entries: u64,
    /// Invalidations the relay had not confirmed when the check ran.
    pub unconfirmed: usize,
}

/// Shared state of one run.
struct Shared {
    mode: Mode,
    prefix: String,
    settings: Settings,
    ledger: Arc<Mutex<Ledger>>,
    loaders: Vec<tokio_postgres::Client>,
    next_loader: AtomicUsize,
    loader_calls: AtomicU64,
    reads: AtomicU64,
    updates: AtomicU64,
}

/// Locks the ledger; a panicked holder cannot leave it half-written (every update is
/// one call), so a poisoned lock is used as is.
pub fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates (or resets) the candidates table with every candidate at version 1.
pub async fn seed(client: &tokio_postgres::Client, candidates: i32) -> Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS demo_candidates (
                 id int PRIMARY KEY, name text NOT NULL, status text NOT NULL, version int NOT NULL);
             TRUNCATE demo_candidates",
        )
        .await
        .context("create demo_candidates")?;
    client
        .execute(
            "INSERT INTO demo_candidates
             SELECT i, 'Candidate ' || i, 'applied', 1 FROM generate_series(1, $1) i",
            &[&candidates],
        )
        .await
        .context("seed demo_candidates")?;
    Ok(())
}

/// Runs readers and updaters until `stop`, reporting reads to `progress`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mode: Mode,
    prefix: &str,
    settings: &Settings,
    redis: RedisHandle,
    loaders: Vec<tokio_postgres::Client>,
    updaters: Vec<tokio_postgres::Client>,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<RunResult> {
    let shared = Arc::new(Shared {
        mode,
        prefix: prefix.to_string(),
        settings: settings.clone(),
        ledger,
        loaders,
        next_loader: AtomicUsize::new(0),
        loader_calls: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        updates: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.readers {
        let (shared, stop, redis) = (shared.clone(), stop.clone(), redis.clone());
        tasks.spawn(async move { reader(shared, redis, stop).await });
    }
    for client in updaters {
        let (shared, stop) = (shared.clone(), stop.clone());
        tasks.spawn(async move { updater(shared, client, stop).await });
    }
    {
        let (shared, stop) = (shared.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                progress(shared.reads.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            // One failing task stops the run.
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let ledger = lock(&shared.ledger);
    Ok(RunResult {
        reads: shared.reads.load(Ordering::Relaxed),
        loader_calls: shared.loader_calls.load(Ordering::Relaxed),
        updates: shared.updates.load(Ordering::Relaxed),
        stale_reads: ledger.stale_reads,
        stale_entries: 0,
        unconfirmed: ledger.unconfirmed(),
    })
}

async fn reader(
    shared: Arc<Shared>,
    mut redis: RedisHandle,
    stop: CancellationToken,
) -> Result<()> {
    while !stop.is_cancelled() {
        let candidate = rand::thread_rng().gen_range(1..=shared.settings.candidates);
        let started = Instant::now();
        let profile = match shared.mode {
            Mode::Leases => read_with_lease(&shared, &mut redis, candidate).await?,
            Mode::CacheAside => read_cache_aside(&shared, &mut redis, candidate).await?,
        };
        lock(&shared.ledger).read(candidate, started, profile.version);
        shared.reads.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn read_with_lease(
    shared: &Shared,
    redis: &mut RedisHandle,
    candidate: i32,
) -> Result<Profile> {
    let key = candidate.to_string();
    let target = Target::for_key(key.as_bytes());
    loop {
        let mut fetch = redis::cmd("NSCACHE.FETCH");
        fetch.arg(&shared.prefix).arg(&key).arg(2000);
        let reply = redis.run(fetch, target).await.context("NSCACHE.FETCH")?;
        let Value::Array(items) = reply else {
            anyhow::bail!("NSCACHE.FETCH: unexpected reply {reply:?}");
        };
        let kind = items.first().and_then(text_of).unwrap_or_default();
        match (kind.as_str(), &items[1..]) {
            ("HIT", [value]) | ("REFRESH", [value, _]) => return decode(value),
            ("MISS", [token]) => {
                let profile = load(shared, candidate).await?;
                let mut set = redis::cmd("NSCACHE.SET");
                set.arg(&shared.prefix)
                    .arg(&key)
                    .arg(shared.settings.ttl)
                    .arg(serde_json::to_string(&profile)?)
                    .arg("LEASE");
                match token {
                    Value::Int(n) => set.arg(*n),
                    other => set.arg(text_of(other).unwrap_or_default()),
                };
                // Nil: an invalidation voided the lease while we loaded; the value is
                // not written, which is the point.
                redis.run(set, target).await.context("NSCACHE.SET LEASE")?;
                return Ok(profile);
            }
            ("WAIT", [retry]) => {
                let ms = match retry {
                    Value::Int(n) => u64::try_from(*n).unwrap_or(5),
                    _ => 5,
                };
                tokio::time::sleep(Duration::from_millis(ms.clamp(1, 50))).await;
            }
            _ => anyhow::bail!("NSCACHE.FETCH: unexpected reply {items:?}"),
        }
    }
}

async fn read_cache_aside(
    shared: &Shared,
    redis: &mut RedisHandle,
    candidate: i32,
) -> Result<Profile> {
    let key = candidate.to_string();
    let target = Target::for_key(key.as_bytes());
    let mut get = redis::cmd("NSCACHE.GET");
    get.arg(&shared.prefix).arg(&key);
    match redis.run(get, target).await.context("NSCACHE.GET")? {
        Value::Nil => {
            let profile = load(shared, candidate).await?;
            let mut set = redis::cmd("NSCACHE.SET");
            set.arg(&shared.prefix)
                .arg(&key)
                .arg(shared.settings.ttl)
                .arg(serde_json::to_string(&profile)?);
            redis.run(set, target).await.context("NSCACHE.SET")?;
            Ok(profile)
        }
        value => decode(&value),
    }
}

fn decode(value: &Value) -> Result<Profile> {
    match value {
        Value::BulkString(bytes) => {
            serde_json::from_slice(bytes).context("cached profile is not the demo's JSON")
        }
        other => anyhow::bail!("unexpected cached value {other:?}"),
    }
}

/// The loader: reads the row, then takes `loader_delay` more (a slow query or a
/// remote call), which is the window in which an update can commit.
async fn load(shared: &Shared, candidate: i32) -> Result<Profile> {
    shared.loader_calls.fetch_add(1, Ordering::Relaxed);
    let n = shared.next_loader.fetch_add(1, Ordering::Relaxed) % shared.loaders.len().max(1);
    let client = shared.loaders.get(n).context("no loader connection")?;
    let row = client
        .query_one(
            "SELECT status, version FROM demo_candidates WHERE id = $1",
            &[&candidate],
        )
        .await
        .context("load a candidate")?;
    tokio::time::sleep(shared.settings.loader_delay).await;
    Ok(Profile {
        id: candidate,
        status: row.get(0),
        version: row.get(1),
    })
}

async fn updater(
    shared: Arc<Shared>,
    mut client: tokio_postgres::Client,
    stop: CancellationToken,
) -> Result<()> {
    while !stop.is_cancelled() {
        let (candidate, status) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_range(1..=shared.settings.candidates),
                STATUSES[rng.gen_range(0..STATUSES.len())],
            )
        };
        let tx = client.transaction().await.context("BEGIN")?;
        let version: i32 = tx
            .query_one(
                "UPDATE demo_candidates SET status = $2, version = version + 1
                  WHERE id = $1 RETURNING version",
                &[&candidate, &status],
            )
            .await
            .context("update a candidate")?
            .get(0);
        tx.execute(
            "SELECT txevents.emit('candidate.status_changed',
                    jsonb_build_object('id', $1::int, 'status', $2::text, 'version', $3::int),
                    'candidate', $1::int::text)",
            &[&candidate, &status, &version],
        )
        .await
        .context("txevents.emit")?;
        let event: i64 = tx
            .query_one(
                "SELECT txevents.invalidate($1, $2::int::text)",
                &[&shared.prefix, &candidate],
            )
            .await
            .context("txevents.invalidate")?
            .get(0);
        tx.commit().await.context("COMMIT")?;
        lock(&shared.ledger).committed(event, candidate, version);
        shared.updates.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(shared.settings.update_pause).await;
    }
    Ok(())
}

/// Counts cached entries whose version is older than the row's.
pub async fn stale_entries(
    prefix: &str,
    candidates: i32,
    redis: &mut RedisHandle,
    client: &tokio_postgres::Client,
) -> Result<u64> {
    let rows = client
        .query("SELECT id, version FROM demo_candidates ORDER BY id", &[])
        .await
        .context("read demo_candidates")?;
    let mut stale = 0;
    for row in rows {
        let (id, version): (i32, i32) = (row.get(0), row.get(1));
        if id > candidates {
            break;
        }
        let key = id.to_string();
        let mut get = redis::cmd("NSCACHE.GET");
        get.arg(prefix).arg(&key);
        let value = redis
            .run(get, Target::for_key(key.as_bytes()))
            .await
            .context("NSCACHE.GET")?;
        if value != Value::Nil && decode(&value)?.version < version {
            stale += 1;
        }
    }
    Ok(stale)
}
