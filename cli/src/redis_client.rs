//! One async Redis handle for a single node or a Redis Cluster, with the few routing
//! rules the CLI needs: a command to the primary that owns a slot, a command to every
//! primary, and the split between "Redis refused this" and "Redis is unreachable".

use std::time::Duration;

use anyhow::{Context, Result};
use cachetx_shared::slot::key_slot;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    AggregateOp, MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo,
    SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

use crate::config::RedisArgs;

/// How long connecting and each reply may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary that owns this hash slot (any node when not a cluster).
    Slot(u16),
    /// Every primary; integer replies are summed.
    AllPrimariesSum,
}

impl Target {
    /// The primary that owns `key`'s slot.
    pub fn for_key(key: &[u8]) -> Target {
        Target::Slot(key_slot(key))
    }
}

/// A connected Redis: one node, or a cluster.
#[derive(Clone)]
pub enum RedisHandle {
    /// A single server (multiplexed: clones share one connection).
    Single(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisHandle {
    /// Connects as `args` says (single node or cluster seed).
    pub async fn connect(args: &RedisArgs) -> Result<Self> {
        let info = args.connection_info(&args.host, args.port);
        if args.cluster {
            let client = redis::cluster::ClusterClient::builder(vec![info])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()
                .context("Redis Cluster client")?;
            let conn = client
                .get_async_connection()
                .await
                .with_context(|| format!("cannot connect to {}", args.display()))?;
            Ok(RedisHandle::Cluster(conn))
        } else {
            let client = redis::Client::open(info).context("Redis client")?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .with_context(|| format!("cannot connect to {}", args.display()))?;
            Ok(RedisHandle::Single(conn))
        }
    }

    /// Runs one command, routed by `target`.
    pub async fn run(&mut self, cmd: Cmd, target: Target) -> RedisResult<Value> {
        match self {
            RedisHandle::Single(conn) => cmd.query_async(conn).await,
            RedisHandle::Cluster(conn) => conn.route_command(cmd, routing(target)).await,
        }
    }

    /// Runs every command; the outer error means the batch could not be sent or read
    /// (Redis unreachable), the inner ones are per-command replies.
    pub async fn run_all(
        &mut self,
        cmds: Vec<(Cmd, Target)>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisHandle::Single(conn) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (cmd, _) in cmds {
                    pipe.add_command(cmd);
                }
                let replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
                Ok(replies)
            }
            RedisHandle::Cluster(conn) => {
                let futures = cmds.into_iter().map(|(cmd, target)| {
                    let mut conn = conn.clone();
                    async move { conn.route_command(cmd, routing(target)).await }
                });
                let replies = futures_util::future::join_all(futures).await;
                // A node that cannot be reached fails the batch as a whole, like a
                // single server that is down.
                if let Some(err) = replies.iter().find_map(|r| r.as_ref().err()) {
                    if is_unavailable(err) {
                        return Err(err.clone());
                    }
                }
                Ok(replies)
            }
        }
    }

    /// Runs `cmds` as one pipeline on the node of `target` (a slot), in order; the
    /// outer error means Redis was unreachable.
    pub async fn pipeline_at(
        &mut self,
        cmds: Vec<Cmd>,
        target: Target,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let count = cmds.len();
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        match self {
            RedisHandle::Single(conn) => {
                pipe.ignore_errors();
                pipe.query_async(conn).await
            }
            RedisHandle::Cluster(conn) => {
                let route = match target {
                    Target::Slot(slot) => {
                        SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
                    }
                    Target::AllPrimariesSum => SingleNodeRoutingInfo::RandomPrimary,
                };
                match conn.route_pipeline(pipe, 0, count, route).await {
                    Ok(values) => Ok(values.into_iter().map(Ok).collect()),
                    Err(e) if is_unavailable(&e) => Err(e),
                    // A refusal inside the pipeline fails it as a whole here.
                    Err(e) => Ok((0..count).map(|_| Err(e.clone())).collect()),
                }
            }
        }
    }

    /// Sends `cmd` to every primary and returns each node's reply with its address
    /// (`host:port`); a single server answers alone.
    pub async fn each_primary(&mut self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            RedisHandle::Single(conn) => {
                let value: Value = cmd.query_async(conn).await?;
                Ok(vec![(String::new(), value)])
            }
            RedisHandle::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match conn.route_command(cmd, routing).await? {
                    Value::Map(pairs) => Ok(pairs
                        .into_iter()
                        .map(|(addr, value)| (text_of(&addr).unwrap_or_default(), value))
                        .collect()),
                    other => Ok(vec![(String::new(), other)]),
                }
            }
        }
    }
}

fn routing(target: Target) -> RoutingInfo {
    match target {
        Target::Slot(slot) => RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
            Route::new(slot, SlotAddr::Master),
        )),
        Target::AllPrimariesSum => RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::Aggregate(AggregateOp::Sum)),
        )),
    }
}

/// True when the error says Redis (or a cluster node) is unreachable or not serving
/// right now, rather than refusing this particular command: retry later, ack nothing.
pub fn is_unavailable(err: &RedisError) -> bool {
    // Server-wide refusals: the relay's own configuration (a password Redis wants or
    // rejects) or a node without the module. Every event would fail the same way, so
    // they wait for the fix instead of spending delivery attempts into dead letters.
    match err.code() {
        Some("NOAUTH" | "WRONGPASS") => return true,
        Some("ERR")
            if err
                .detail()
                .is_some_and(|d| d.starts_with("unknown command")) =>
        {
            return true
        }
        _ => {}
    }
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return true;
    }
    match err.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::Extension | ErrorKind::Parse => false,
        _ => true,
    }
}

/// The text of a status or bulk reply, if it is valid UTF-8.
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_not_outages() {
        let refused = RedisError::from((ErrorKind::Extension, "ERR bad key"));
        assert!(!is_unavailable(&refused));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_unavailable(&io));
    }
}
