//! Connection settings shared by every subcommand (SPEC 5): the seed's `REDIS_*`
//! variables and `DATABASE_URL` / libpq's `PG*`, each overridable by a flag.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use redis::IntoConnectionInfo;

/// Where Redis is. Flags override the environment.
#[derive(Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis host.
    #[arg(long = "redis-host", env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Redis port.
    #[arg(long = "redis-port", env = "REDIS_PORT", default_value_t = 6379)]
    pub port: u16,
    /// Redis database number (single node only; a cluster has only db 0).
    #[arg(long = "redis-db", env = "REDIS_DB", default_value_t = 0)]
    pub db: i64,
    /// Redis password (AUTH).
    #[arg(
        long = "redis-password",
        env = "REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Treat the Redis address as a seed node of a Redis Cluster (env REDIS_CLUSTER=1).
    #[arg(long = "cluster", env = "REDIS_CLUSTER", value_parser = parse_flag, num_args = 0..=1, default_missing_value = "1", default_value = "0")]
    pub cluster: bool,
}

/// Where Postgres is. Without `--database-url` / `DATABASE_URL`, libpq's `PG*`
/// variables are read (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
#[derive(Args, Clone, Debug)]
pub struct PgArgs {
    /// Postgres connection string (URL or key=value form).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// `1/0`, `true/false`, `yes/no`, `on/off` (for REDIS_CLUSTER).
fn parse_flag(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected 1 or 0, not {other:?}")),
    }
}

impl RedisArgs {
    /// The connection info for one node at `host:port` with this db and password.
    pub fn connection_info(&self, host: &str, port: u16) -> redis::ConnectionInfo {
        let mut redis = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(password) = &self.password {
            redis = redis.set_password(password.clone());
        }
        redis::ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map(|info| info.set_redis_settings(redis))
            .unwrap_or_else(|_| unreachable_info())
    }

    /// A human-readable address for messages (no password).
    pub fn display(&self) -> String {
        let mode = if self.cluster { " (cluster)" } else { "" };
        format!("redis://{}:{}/{}{mode}", self.host, self.port, self.db)
    }
}

/// `into_connection_info` of a TCP address cannot fail; this keeps the code free of
/// `unwrap` without inventing an error path.
fn unreachable_info() -> redis::ConnectionInfo {
    redis::ConnectionAddr::Tcp("127.0.0.1".into(), 6379)
        .into_connection_info()
        .unwrap_or_else(|_| std::process::abort())
}

impl PgArgs {
    /// The tokio-postgres configuration: the URL if given, else libpq's `PG*` variables.
    pub fn config(&self) -> Result<tokio_postgres::Config> {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => tokio_postgres::Config::from_str(url)
                .context("DATABASE_URL / --database-url is not a valid Postgres connection string"),
            _ => Ok(config_from_pg_env(|name| std::env::var(name).ok())),
        }
    }
}

/// libpq's defaults and `PG*` variables as a tokio-postgres configuration.
pub fn config_from_pg_env(var: impl Fn(&str) -> Option<String>) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    let user = var("PGUSER")
        .or_else(|| var("USER"))
        .unwrap_or_else(|| "postgres".into());
    config.user(&user);
    config.dbname(var("PGDATABASE").as_deref().unwrap_or(&user));
    match var("PGHOST") {
        Some(host) => {
            for h in host.split(',') {
                config.host(h);
            }
        }
        // libpq's default: the Unix socket in /var/run/postgresql.
        None => {
            config.host_path("/var/run/postgresql");
        }
    }
    if let Some(port) = var("PGPORT").and_then(|p| p.parse::<u16>().ok()) {
        config.port(port);
    }
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    config.connect_timeout(Duration::from_secs(10));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_env_fills_the_config() {
        let env = |name: &str| match name {
            "PGHOST" => Some("/tmp/x".to_string()),
            "PGPORT" => Some("5433".to_string()),
            "PGUSER" => Some("alice".to_string()),
            _ => None,
        };
        let config = config_from_pg_env(env);
        assert_eq!(config.get_user(), Some("alice"));
        assert_eq!(config.get_dbname(), Some("alice"));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_hosts().len(), 1);
    }

    #[test]
    fn cluster_flag_values() {
        assert_eq!(parse_flag("1"), Ok(true));
        assert_eq!(parse_flag("yes"), Ok(true));
        assert_eq!(parse_flag("0"), Ok(false));
        assert!(parse_flag("maybe").is_err());
    }
}
