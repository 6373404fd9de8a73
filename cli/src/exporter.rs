//! `cachetx exporter`: `/metrics` for Prometheus. Each scrape reads `NSCACHE.STATS
//! JSON` from every primary and the txevents metric views (read-only, no SCAN, no
//! table reads beyond the views), and answers in the text exposition format.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::Args;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::collect::{self, Section};
use crate::config::{PgArgs, RedisArgs};
use crate::metrics::{self, Snapshot};
use crate::pg;
use crate::redis_client::RedisHandle;

/// Options of `cachetx exporter`.
#[derive(Args, Clone, Debug)]
pub struct ExporterArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Address to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9779")]
    pub listen: SocketAddr,
    /// Most namespace labels; the least busy namespaces beyond it are summed into
    /// namespace="(other)".
    #[arg(long, default_value_t = 200)]
    pub max_namespaces: usize,
    /// Do not read Postgres.
    #[arg(long)]
    pub no_postgres: bool,
}

/// Connections kept between scrapes, reopened when they fail.
struct Sources {
    args: ExporterArgs,
    redis: Option<RedisHandle>,
    pg: Option<tokio_postgres::Client>,
    /// Namespaces labeled in the last scrape: they keep their label.
    labeled: std::collections::BTreeSet<String>,
}

type Shared = Arc<Mutex<Sources>>;

/// Serves /metrics until `shutdown`.
pub async fn run(args: ExporterArgs, shutdown: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!("serving /metrics on http://{}", listener.local_addr()?);
    let state: Shared = Arc::new(Mutex::new(Sources {
        args,
        redis: None,
        pg: None,
        labeled: Default::default(),
    }));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "cachetx exporter: see /metrics\n" }))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("HTTP server")
}

async fn scrape(State(state): State<Shared>) -> impl IntoResponse {
    // One scrape at a time: they share the connections, and Prometheus scrapes serially.
    let mut sources = state.lock().await;
    let snapshot = sources.snapshot().await;
    match metrics::encode(&snapshot) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding failed: {e}\n"),
        ),
    }
}

impl Sources {
    async fn snapshot(&mut self) -> Snapshot {
        let cache = self.cache().await;
        let tx = if self.args.no_postgres {
            Section::Unavailable("Postgres skipped".into())
        } else {
            self.transactions().await
        };
        let labeled = match &cache {
            Section::Available(figures) => {
                self.labeled = metrics::choose_labeled(
                    &figures.namespaces,
                    self.args.max_namespaces,
                    &self.labeled,
                );
                Some(self.labeled.clone())
            }
            Section::Unavailable(_) => None,
        };
        Snapshot {
            cache,
            tx,
            max_namespaces: self.args.max_namespaces,
            labeled,
        }
    }

    async fn cache(&mut self) -> Section<collect::CacheFigures> {
        if self.redis.is_none() {
            match RedisHandle::connect(&self.args.redis).await {
                Ok(handle) => self.redis = Some(handle),
                Err(e) => {
                    tracing::warn!("Redis: {e:#}");
                    return Section::Unavailable(format!("{e:#}"));
                }
            }
        }
        let Some(handle) = self.redis.as_mut() else {
            return Section::Unavailable("Redis not connected".into());
        };
        // Hottest keys stay out of the labels (unbounded cardinality).
        match collect::cache(handle, 0).await {
            Ok(figures) => Section::Available(figures),
            Err(e) => {
                tracing::warn!("Redis: {e:#}");
                self.redis = None;
                Section::Unavailable(format!("{e:#}"))
            }
        }
    }

    async fn transactions(&mut self) -> Section<collect::TxFigures> {
        if self.pg.as_ref().is_none_or(|c| c.is_closed()) {
            let connected = match self.args.pg.config() {
                Ok(config) => pg::client(&config).await,
                Err(e) => Err(e),
            };
            match connected {
                Ok(client) => self.pg = Some(client),
                Err(e) => {
                    tracing::warn!("Postgres: {e:#}");
                    self.pg = None;
                    return Section::Unavailable(format!("{e:#}"));
                }
            }
        }
        match &self.pg {
            Some(client) => Section::Available(collect::transactions(client).await),
            None => Section::Unavailable("Postgres not connected".into()),
        }
    }
}
