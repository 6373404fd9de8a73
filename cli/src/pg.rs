//! Postgres connections: tokio-postgres without TLS (the relay and the demo talk to a
//! local or private server; put a TLS-terminating proxy in front otherwise), with the
//! connection's notifications forwarded to a channel so LISTEN can wake the relay.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

/// A connected client and the notifications its connection receives. The receiver
/// yields `None` once the connection is gone.
pub struct PgConn {
    /// The client.
    pub client: Client,
    /// LISTEN notifications.
    pub notifications: mpsc::UnboundedReceiver<Notification>,
    driver: tokio::task::JoinHandle<()>,
}

impl PgConn {
    /// Ends the session cleanly (Terminate), so the server does not log and count a
    /// lost connection when this process exits right after.
    pub async fn close(self) {
        drop(self.client);
        // The driver finishes once it has sent Terminate; a stuck server is not
        // worth waiting for on the way out.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.driver).await;
    }
}

/// Connects and starts driving the connection in a task.
pub async fn connect(config: &Config) -> Result<PgConn> {
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .context("cannot connect to Postgres")?;
    let (tx, notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // The receiver may be gone (the client was dropped): nothing to do.
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("Postgres connection lost: {e}");
                    break;
                }
            }
        }
    });
    Ok(PgConn {
        client,
        notifications,
        driver,
    })
}

/// Connects for simple queries (no notifications needed).
pub async fn client(config: &Config) -> Result<Client> {
    Ok(connect(config).await?.client)
}

/// The SQLSTATE of a Postgres error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

/// The server's message (without tokio-postgres's "db error:" wrapping) for logs.
pub fn message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}
