//! Live push: `/api/v1/live` is a WebSocket that sends every event as one JSON text message.
//!
//! Events are made in PostgreSQL, by triggers on `anomalies`, `devices` and `traffic_stats`
//! (migration V2), as `NOTIFY tapwatch_live`. Each hub process LISTENs on a connection of its
//! own ([`Live::start`]) and fans out to its WebSocket clients, so whichever hub ingested a
//! message, every hub pushes its events. Types: `anomaly` (new episode), `anomaly_update`
//! (count, state), `device` (online/offline), `stats` (an edge's statistics interval), `rules`
//! (suppression rules changed), and two of the hub's own: `resync` (the hub's database
//! connection came back: events may have been missed, reload) and `lagged` (this client was too
//! slow and `missed` events were dropped for it). Anomalies a suppression rule matches are not
//! pushed.

use super::{ApiResult, ApiState, Problem, Viewer};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

/// Events a slow client may fall behind by before it misses some.
const BACKLOG: usize = 4096;

/// The fan-out of live events to this process's clients.
#[derive(Debug, Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<str>>,
    /// Events received from PostgreSQL, and anomalies held back by a suppression rule.
    pub received: Arc<AtomicU64>,
    pub suppressed: Arc<AtomicU64>,
    pub listening: Arc<AtomicU64>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tx: broadcast::channel(BACKLOG).0,
            received: Arc::default(),
            suppressed: Arc::default(),
            listening: Arc::default(),
        }
    }
}

impl Live {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// Listen on `url` until the process ends, reconnecting with a backoff.
    pub fn start(&self, url: String, tls: crate::db::PgTls) {
        let live = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut first = true;
            loop {
                let listened = match &tls {
                    crate::db::PgTls::Plain => {
                        live.listen(&url, tokio_postgres::NoTls, first).await
                    }
                    crate::db::PgTls::Rustls(t) => live.listen(&url, t.clone(), first).await,
                };
                match listened {
                    Ok(()) => backoff = Duration::from_millis(250),
                    Err(e) => tracing::warn!("live: {e}; listening again in {backoff:?}"),
                }
                live.listening.store(0, Ordering::Relaxed);
                first = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    }

    async fn listen<T>(&self, url: &str, tls: T, first: bool) -> Result<(), String>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, mut connection) =
            tokio_postgres::connect(url, tls).await.map_err(|e| format!("cannot connect: {e}"))?;
        // Bounded: while the fan-out is behind, the driver waits and PostgreSQL queues the
        // notifications (its queue is 8 GB).
        let (msg_tx, mut msg_rx) = tokio::sync::mpsc::channel(BACKLOG);
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if msg_tx.send(n.payload().to_string()).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("connection lost: {e}")),
                }
            }
            Err("connection closed".to_string())
        });
        client.batch_execute("LISTEN tapwatch_live").await.map_err(|e| e.to_string())?;
        self.listening.store(1, Ordering::Relaxed);
        if !first {
            let _ = self.tx.send(Arc::from(r#"{"type":"resync"}"#));
        }
        let check = client
            .prepare(&format!(
                "SELECT {} FROM anomalies a WHERE a.id = $1",
                super::anomalies::SUPPRESSED
            ))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(payload) = msg_rx.recv().await {
            self.received.fetch_add(1, Ordering::Relaxed);
            let event: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
            if event["type"] == "anomaly" || event["type"] == "anomaly_update" {
                let id = event["id"].as_i64().unwrap_or(0);
                let suppressed = client
                    .query_opt(&check, &[&id])
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some_and(|r| r.get::<_, bool>(0));
                if suppressed {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            // No receivers is not an error: nobody is watching.
            let _ = self.tx.send(Arc::from(payload));
        }
        driver.await.map_err(|e| e.to_string())?
    }
}

/// Live events over a WebSocket (see the module's documentation for the event types). A
/// browser's upgrade must come from this hub's own origin.
#[utoipa::path(get, path = "/live", tag = "live",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 426, description = "Not a WebSocket upgrade", body = Problem)))]
pub async fn live(
    State(s): State<ApiState>,
    super::Authed(caller): Viewer,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split("://").nth(1).unwrap_or("");
        if origin_host != host {
            return Err(Problem::new(StatusCode::FORBIDDEN, "cross-origin WebSocket refused"));
        }
    }
    let ws = ws.map_err(|e| Problem::new(StatusCode::UPGRADE_REQUIRED, e.body_text()))?;
    let rx = s.live.subscribe();
    let counters = s.counters.clone();
    let pool = s.pool.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        counters.live_clients.fetch_add(1, Ordering::Relaxed);
        serve(socket, rx, &counters, &pool, &caller).await;
        counters.live_clients.fetch_sub(1, Ordering::Relaxed);
    }))
}

/// How often an open WebSocket checks that its session or token still holds: a logout, a
/// disabled user, a revoked token or an expiry closes it within this long.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Close code for a credential that no longer holds (the 4000s are the application's).
const CLOSE_REVOKED: u16 = 4401;

async fn serve(
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Arc<str>>,
    counters: &super::ApiCounters,
    pool: &deadpool_postgres::Pool,
    caller: &super::Caller,
) {
    let hello = r#"{"type":"hello"}"#;
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                // A database that is away keeps the socket open; only a credential that is
                // known to be gone closes it.
                let Ok(db) = pool.get().await else { continue };
                if let Ok(false) = caller.still_valid(&db).await {
                    counters.live_revoked.fetch_add(1, Ordering::Relaxed);
                    let close = axum::extract::ws::CloseFrame {
                        code: CLOSE_REVOKED,
                        reason: "the session or token has ended".into(),
                    };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
            }
            event = rx.recv() => {
                let text = match event {
                    Ok(t) => t.to_string(),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        counters.live_lagged.fetch_add(n, Ordering::Relaxed);
                        format!(r#"{{"type":"lagged","missed":{n}}}"#)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the WebSocket layer; anything else from the client is
                // ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
