//! `cachetx relay`: the post-commit invalidation pipeline (SPEC 5).
//!
//! Claims events of consumer group `relay` with `txevents.poll` (woken by LISTEN on
//! the txevents channel, polling as a fallback), applies `cache.invalidate` payloads
//! to Redis, and acks them only after Redis confirmed. Redis unreachable: the relay
//! keeps the batch in hand and applies it again with backoff once Redis answers
//! (nothing acked, nothing lost, and no delivery attempt spent per retry: each claim
//! counts one, and a group's `max_attempts` would otherwise dead-letter invalidations
//! during an outage whose reconnects succeed). Postgres gone: it reconnects. Delivery
//! is at-least-once; applying an invalidation twice is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use cachetx_shared::{CacheInvalidation, RawEnvelope, Timestamp, INVALIDATE_EVENT_TYPE};
use clap::Args;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{PgArgs, RedisArgs};
use crate::pg::{self, PgConn};
use crate::plan::{self, Op};
use crate::redis_client::{is_unavailable, RedisHandle, Target};

/// Default name of the Redis Stream that `--streams` mirrors events to.
pub const DEFAULT_STREAM: &str = "cachetx:events";

/// Options of `cachetx relay`.
#[derive(Args, Clone, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Consumer group to consume (created if missing).
    #[arg(long, default_value = "relay")]
    pub group: String,
    /// LISTEN channel (the server's `txevents.channel`).
    #[arg(long, default_value = "txevents")]
    pub channel: String,
    /// Most events claimed per poll.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub batch: i32,
    /// Poll this often (milliseconds) when no notification arrives.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_interval_ms: u64,
    /// Visibility lease of a claimed batch (seconds): a relay that dies holding a batch
    /// lets another relay have it after this long.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub lease_secs: u64,
    /// Longest wait between retries while Redis or Postgres is unreachable (ms).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub max_backoff_ms: u64,
    /// Also mirror every event of the group (all event types) to a Redis Stream.
    #[arg(long)]
    pub streams: bool,
    /// Stream name for `--streams`.
    #[arg(long, default_value = DEFAULT_STREAM)]
    pub stream_name: String,
    /// Approximate cap on the stream's length (XADD MAXLEN ~).
    #[arg(long, default_value_t = 100_000)]
    pub stream_maxlen: u64,
}

/// One claimed event.
#[derive(Debug)]
struct Claimed {
    id: i64,
    event_type: String,
    /// The payload's JSON text, verbatim from Postgres.
    payload: String,
    /// With `--streams`: the fields needed to write the envelope.
    mirror: Option<MirrorFields>,
}

#[derive(Debug)]
struct MirrorFields {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    headers: String,
    occurred_at_us: i64,
    txid: Option<u64>,
}

/// What became of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Applied (and mirrored) and confirmed by Redis: to ack.
    pub done: Vec<i64>,
    /// Refused by Redis or unreadable: to nack with this error.
    pub failed: Vec<(i64, String)>,
}

/// Counters logged when the relay stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Events acked.
    pub acked: u64,
    /// Events nacked.
    pub nacked: u64,
    /// Batches processed.
    pub batches: u64,
}

/// Why applying a batch stopped.
enum ApplyError {
    /// Redis unreachable: nothing of the batch counts as applied.
    RedisDown(redis::RedisError),
}

/// Runs the relay until `shutdown` is cancelled. `on_acked` (used by the demo)
/// receives the ids of every acked batch.
pub async fn run(
    args: RelayArgs,
    shutdown: CancellationToken,
    on_acked: Option<mpsc::UnboundedSender<Vec<i64>>>,
) -> Result<Totals> {
    let pg_config = args.pg.config()?;
    let mut totals = Totals::default();
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(args.max_backoff_ms),
    );
    let mut pg: Option<PgConn> = None;
    let mut redis: Option<RedisHandle> = None;
    // A claimed batch Redis could not apply yet: retried as is, never claimed again.
    let mut held: Option<Vec<Claimed>> = None;
    tracing::info!(
        group = %args.group,
        redis = %args.redis.display(),
        streams = args.streams,
        "relay starting"
    );
    while !shutdown.is_cancelled() {
        // Postgres: connect, LISTEN, make sure the group exists.
        let conn = match pg.as_mut() {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => match open_pg(&pg_config, &args).await {
                // The backoff is reset by work done, not by a connection: a server
                // that accepts connections and then fails every request (LOADING,
                // CLUSTERDOWN, a missing grant) must not be retried ten times a second.
                Ok(conn) => pg.insert(conn),
                Err(e) if e.downcast_ref::<GroupMismatch>().is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!("Postgres unavailable: {e:#}; retrying");
                    pg = None;
                    pause(&shutdown, backoff.next()).await;
                    continue;
                }
            },
        };
        // Redis: connect before claiming anything, so an outage claims nothing.
        let handle = match redis.as_mut() {
            Some(handle) => handle,
            None => match RedisHandle::connect(&args.redis).await {
                Ok(handle) => {
                    tracing::info!("connected to Redis {}", args.redis.display());
                    redis.insert(handle)
                }
                Err(e) => {
                    tracing::warn!("Redis unavailable: {e:#}; retrying");
                    pause(&shutdown, backoff.next()).await;
                    continue;
                }
            },
        };
        let batch = match held.take() {
            Some(batch) => Ok(batch),
            None => poll(&conn.client, &args).await,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!("poll failed: {}; reconnecting", pg::message(&e));
                pg = None;
                pause(&shutdown, backoff.next()).await;
                continue;
            }
        };
        if batch.is_empty() {
            backoff.reset();
            wait_for_work(
                conn,
                &shutdown,
                Duration::from_millis(args.poll_interval_ms),
            )
            .await;
            continue;
        }
        match apply(handle, &args, &batch).await {
            Ok(outcome) => {
                if let Err(e) = settle(&conn.client, &args, &outcome).await {
                    // Unacked events come back after their lease: applied again, not lost.
                    tracing::warn!("ack/nack failed: {}; reconnecting", pg::message(&e));
                    pg = None;
                    continue;
                }
                totals.batches += 1;
                totals.acked += outcome.done.len() as u64;
                totals.nacked += outcome.failed.len() as u64;
                for (id, error) in &outcome.failed {
                    tracing::error!(event = id, "event not applied: {error}");
                }
                if let Some(tx) = &on_acked {
                    // The demo may have stopped listening; that is its business.
                    let _ = tx.send(outcome.done);
                }
                backoff.reset();
            }
            Err(ApplyError::RedisDown(e)) => {
                // Kept in hand, not nacked: every claim spends a delivery attempt, and
                // an outage whose reconnects succeed (writes paused, a cluster node
                // down, LOADING) would dead-letter invalidations never applied.
                let wait = backoff.next();
                tracing::warn!(
                    "Redis unavailable ({e}); {} events kept unacked, retry in {wait:?}",
                    batch.len()
                );
                redis = None;
                held = Some(batch);
                pause(&shutdown, wait).await;
            }
        }
    }
    if let Some(batch) = held {
        // Stopping with a batch Redis never confirmed: hand it back now rather than
        // after its lease, for another relay (or the next start).
        let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
        totals.nacked += ids.len() as u64;
        match pg.as_ref() {
            Some(conn) if !conn.client.is_closed() => {
                if let Err(e) = nack(
                    &conn.client,
                    &args.group,
                    &ids,
                    "redis unavailable",
                    Duration::ZERO,
                )
                .await
                {
                    tracing::warn!(
                        "nack failed: {}; the events return after their lease",
                        pg::message(&e)
                    );
                }
            }
            _ => tracing::warn!("{} unapplied events return after their lease", ids.len()),
        }
    }
    tracing::info!(
        acked = totals.acked,
        nacked = totals.nacked,
        batches = totals.batches,
        "relay stopped"
    );
    Ok(totals)
}

async fn open_pg(config: &tokio_postgres::Config, args: &RelayArgs) -> Result<PgConn> {
    let conn = pg::connect(config).await?;
    // LISTEN first, then poll: a commit between the two is seen by the first poll.
    conn.client
        .batch_execute(&format!("LISTEN {}", quote_ident(&args.channel)))
        .await
        .context("LISTEN")?;
    ensure_group(&conn.client, args).await?;
    tracing::info!(group = %args.group, "connected to Postgres, listening on {}", args.channel);
    Ok(conn)
}

/// Creates the consumer group unless it exists (several relays may race to do it).
pub async fn ensure_group(client: &tokio_postgres::Client, args: &RelayArgs) -> Result<()> {
    // Checked first so that an existing group costs no error in the server's log and
    // in txevents.errors; a role that cannot read the table just tries to create it.
    let exists = client
        .query_opt(
            "SELECT event_types FROM txevents.consumers WHERE name = $1",
            &[&args.group],
        )
        .await;
    if let Ok(Some(row)) = exists {
        let types: Option<Vec<String>> = row.try_get(0).unwrap_or(None);
        return check_group_types(args, types);
    }
    let types: Option<Vec<&str>> = if args.streams {
        None
    } else {
        Some(vec![INVALIDATE_EVENT_TYPE])
    };
    match client
        .execute(
            "SELECT txevents.create_consumer($1, $2::text[])",
            &[&args.group, &types],
        )
        .await
    {
        Ok(_) => {
            tracing::info!(group = %args.group, "created consumer group");
            Ok(())
        }
        Err(e) if pg::sqlstate(&e) == Some("42710") => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot create consumer group {:?}: {}",
            args.group,
            pg::message(&e)
        )),
    }
}

/// A group that exists already keeps its event type filter: `--streams` on a group
/// that only receives `cache.invalidate` would mirror nothing else, silently.
#[derive(Debug)]
pub struct GroupMismatch(String);

impl std::fmt::Display for GroupMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GroupMismatch {}

fn check_group_types(args: &RelayArgs, types: Option<Vec<String>>) -> Result<()> {
    match (args.streams, types) {
        (true, Some(types)) => Err(GroupMismatch(format!(
            "consumer group {:?} only receives {}, so --streams could not mirror the other \
             event types: use another --group, or drop the group \
             (SELECT txevents.drop_consumer('{}')) and let the relay recreate it",
            args.group,
            types.join(", "),
            args.group.replace('\'', "''"),
        ))
        .into()),
        (false, None) => {
            tracing::warn!(
                group = %args.group,
                "the group receives every event type (created for --streams): this relay \
                 acks the events that are not cache.invalidate without mirroring them"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn poll(
    client: &tokio_postgres::Client,
    args: &RelayArgs,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let lease = format!("{} seconds", args.lease_secs);
    // Payload and headers as text: jsonb's text form keeps every number exactly,
    // which serde_json::Value would not.
    let sql = if args.streams {
        "SELECT p.id, p.event_type, p.payload::text, p.aggregate_type, p.aggregate_id,
                p.headers::text, (extract(epoch FROM p.occurred_at) * 1000000)::bigint,
                txevents.get(p.id)->>'txid'
           FROM txevents.poll($1, $2, $3::text::interval) p ORDER BY p.id"
    } else {
        "SELECT p.id, p.event_type, p.payload::text
           FROM txevents.poll($1, $2, $3::text::interval) p ORDER BY p.id"
    };
    let rows = client
        .query(sql, &[&args.group, &args.batch, &lease])
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| Claimed {
            id: row.get(0),
            event_type: row.get(1),
            payload: row.get(2),
            mirror: args.streams.then(|| MirrorFields {
                aggregate_type: row.get(3),
                aggregate_id: row.get(4),
                headers: row.get(5),
                occurred_at_us: row.get(6),
                txid: row.get::<_, Option<String>>(7).and_then(|t| t.parse().ok()),
            }),
        })
        .collect())
}

/// Sleeps until a notification, the poll interval, or shutdown.
async fn wait_for_work(conn: &mut PgConn, shutdown: &CancellationToken, interval: Duration) {
    tokio::select! {
        _ = conn.notifications.recv() => {
            // One poll serves every notification queued so far.
            while conn.notifications.try_recv().is_ok() {}
        }
        _ = tokio::time::sleep(interval) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn pause(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Applies a batch: invalidations first, then (with `--streams`) the mirror. An event
/// is done when every command serving it succeeded.
async fn apply(
    redis: &mut RedisHandle,
    args: &RelayArgs,
    batch: &[Claimed],
) -> Result<Outcome, ApplyError> {
    let cluster = matches!(redis, RedisHandle::Cluster(_));
    let mut failed: BTreeMap<i64, String> = BTreeMap::new();
    let mut parsed = Vec::new();
    for event in batch {
        if event.event_type != INVALIDATE_EVENT_TYPE {
            continue;
        }
        match CacheInvalidation::parse(&event.payload) {
            Ok(inv) => parsed.push((event.id, inv)),
            Err(e) => {
                failed.insert(event.id, format!("bad cache.invalidate payload: {e}"));
            }
        }
    }
    let refs: Vec<(i64, &CacheInvalidation)> = parsed.iter().map(|(id, inv)| (*id, inv)).collect();
    let ops = plan::plan(&refs, cluster);
    let refused = run_ops(redis, &ops).await?;
    if !refused.is_empty() {
        // A grouped command failed for one bad event (say, a key nscache refuses):
        // apply the suspects one by one so the others still go through.
        let suspects: Vec<(i64, &CacheInvalidation)> = refs
            .iter()
            .filter(|(id, _)| refused.contains_key(id))
            .copied()
            .collect();
        for (id, inv) in suspects {
            let single = plan::plan(&[(id, inv)], cluster);
            let errors = run_ops(redis, &single).await?;
            if let Some(error) = errors.get(&id) {
                failed.insert(id, error.clone());
            }
        }
    }
    if args.streams {
        let mirrored: Vec<&Claimed> = batch
            .iter()
            .filter(|c| !failed.contains_key(&c.id))
            .collect();
        for (id, error) in mirror(redis, args, &mirrored).await? {
            failed.insert(id, error);
        }
    }
    let done = batch
        .iter()
        .map(|c| c.id)
        .filter(|id| !failed.contains_key(id))
        .collect();
    Ok(Outcome {
        done,
        failed: failed.into_iter().collect(),
    })
}

/// Runs the ops; returns the events whose commands Redis refused, with the error.
async fn run_ops(redis: &mut RedisHandle, ops: &[Op]) -> Result<BTreeMap<i64, String>, ApplyError> {
    let cmds = ops.iter().map(|op| (op.command(), op.target)).collect();
    let replies = redis.run_all(cmds).await.map_err(ApplyError::RedisDown)?;
    let mut refused = BTreeMap::new();
    for (op, reply) in ops.iter().zip(replies) {
        if let Err(e) = reply {
            if is_unavailable(&e) {
                return Err(ApplyError::RedisDown(e));
            }
            for id in &op.events {
                refused
                    .entry(*id)
                    .or_insert_with(|| format!("Redis refused: {e}"));
            }
        }
    }
    Ok(refused)
}

/// XADDs each event's envelope to the stream, in group order.
async fn mirror(
    redis: &mut RedisHandle,
    args: &RelayArgs,
    events: &[&Claimed],
) -> Result<Vec<(i64, String)>, ApplyError> {
    let mut failed = Vec::new();
    let mut cmds = Vec::new();
    let mut ids = Vec::new();
    for event in events {
        match envelope_json(event) {
            Ok(json) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&args.stream_name)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(args.stream_maxlen)
                    .arg("*")
                    .arg("envelope")
                    .arg(json);
                cmds.push(cmd);
                ids.push(event.id);
            }
            Err(e) => failed.push((event.id, e)),
        }
    }
    // One pipeline to one node keeps the stream in the batch's order.
    let replies = redis
        .pipeline_at(cmds, Target::for_key(args.stream_name.as_bytes()))
        .await
        .map_err(ApplyError::RedisDown)?;
    for (id, reply) in ids.into_iter().zip(replies) {
        if let Err(e) = reply {
            if is_unavailable(&e) {
                return Err(ApplyError::RedisDown(e));
            }
            failed.push((id, format!("XADD refused: {e}")));
        }
    }
    Ok(failed)
}

/// The shared envelope (SPEC 4) of a claimed event, payload and headers verbatim.
fn envelope_json(event: &Claimed) -> Result<String, String> {
    let fields = event.mirror.as_ref().ok_or("no envelope fields polled")?;
    let payload =
        RawValue::from_string(event.payload.clone()).map_err(|e| format!("payload: {e}"))?;
    let headers =
        RawValue::from_string(fields.headers.clone()).map_err(|e| format!("headers: {e}"))?;
    Ok(RawEnvelope {
        v: cachetx_shared::FORMAT_VERSION,
        id: event.id,
        event_type: &event.event_type,
        aggregate_type: fields.aggregate_type.as_deref(),
        aggregate_id: fields.aggregate_id.as_deref(),
        payload: &payload,
        headers: &headers,
        occurred_at: Timestamp::from_unix_micros(fields.occurred_at_us),
        txid: fields.txid,
    }
    .to_json())
}

async fn settle(
    client: &tokio_postgres::Client,
    args: &RelayArgs,
    outcome: &Outcome,
) -> Result<(), tokio_postgres::Error> {
    if !outcome.done.is_empty() {
        client
            .execute(
                "SELECT txevents.ack($1, $2::bigint[])",
                &[&args.group, &outcome.done],
            )
            .await?;
    }
    // Refused events go through the group's backoff to its dead letters.
    let mut by_error: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (id, error) in &outcome.failed {
        by_error.entry(error.as_str()).or_default().insert(*id);
    }
    for (error, ids) in by_error {
        let ids: Vec<i64> = ids.into_iter().collect();
        client
            .execute(
                "SELECT txevents.nack($1, id, $2) FROM unnest($3::bigint[]) AS id",
                &[&args.group, &error, &ids],
            )
            .await?;
    }
    Ok(())
}

async fn nack(
    client: &tokio_postgres::Client,
    group: &str,
    ids: &[i64],
    error: &str,
    retry_after: Duration,
) -> Result<(), tokio_postgres::Error> {
    let secs = retry_after.as_secs_f64();
    client
        .execute(
            "SELECT txevents.nack($1, id, $2, make_interval(secs => $3))
               FROM unnest($4::bigint[]) AS id",
            &[&group, &error, &secs, &ids],
        )
        .await
        .map(drop)
}

/// A Postgres identifier, double-quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("txevents"), "\"txevents\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn envelope_keeps_payload_bytes() {
        let payload = r#"{"n": 123456789012345678901234567890, "d": 0.10000000000000000000001}"#;
        let event = Claimed {
            id: 9,
            event_type: "candidate.status_changed".into(),
            payload: payload.into(),
            mirror: Some(MirrorFields {
                aggregate_type: Some("candidate".into()),
                aggregate_id: Some("42".into()),
                headers: "{}".into(),
                occurred_at_us: 1_709_214_307_123_456,
                txid: Some(77),
            }),
        };
        let json = envelope_json(&event).expect("envelope");
        assert!(json.contains(payload), "{json}");
        assert!(json.starts_with(r#"{"v":1,"id":9,"type":"candidate.status_changed""#));
        assert!(json.contains(r#""occurred_at":"2024-02-29T13:45:07.123456Z","txid":77}"#));
    }
}
