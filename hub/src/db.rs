//! PostgreSQL: connecting, the schema (refinery migrations in `hub/migrations`), day partitions
//! and retention.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::{Client, NoTls};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Tables partitioned by day, with the column they are partitioned on.
pub const PARTITIONED: [(&str, &str); 4] = [
    ("traffic_features", "end_ts"),
    ("traffic_stats", "interval_start"),
    ("system_metrics", "ts"),
    ("analyses", "ts"),
];

/// A session-level advisory lock id for migrations (hubs starting together migrate once).
const MIGRATION_LOCK: i64 = 0x7461_7077_6174_6368; // "tapwatch"

/// How the hub reaches PostgreSQL: plain, or TLS trusting `postgres.ca_file`.
#[derive(Clone)]
pub enum PgTls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgTls::Plain => "PgTls::Plain",
            PgTls::Rustls(_) => "PgTls::Rustls",
        })
    }
}

impl PgTls {
    pub fn from_config(c: &crate::config::PostgresConfig) -> Result<PgTls, String> {
        use rustls_pki_types::pem::PemObject;
        if c.ca_file.as_os_str().is_empty() {
            return Ok(PgTls::Plain);
        }
        let bad =
            |e: &dyn std::fmt::Display| format!("postgres.ca_file {}: {e}", c.ca_file.display());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(&c.ca_file).map_err(|e| bad(&e))?
        {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no certificate in it"));
        }
        let config =
            rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        Ok(PgTls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// Connect as `config` says (TLS with `postgres.ca_file`).
pub async fn connect_to(config: &crate::config::PostgresConfig) -> Result<Client, String> {
    connect_tls(&config.url, &PgTls::from_config(config)?).await.map_err(|e| e.to_string())
}

/// Connect with `tls`; the connection's driver runs on a task of its own.
pub async fn connect_tls(url: &str, tls: &PgTls) -> Result<Client, tokio_postgres::Error> {
    match tls {
        PgTls::Plain => connect(url).await,
        PgTls::Rustls(t) => {
            let (client, connection) = tokio_postgres::connect(url, t.clone()).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection ended: {e}");
                }
            });
            Ok(client)
        }
    }
}

/// Connect, plain; the connection's driver runs on a task of its own and ends with the client.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    client.batch_execute("SET TIME ZONE 'UTC'").await?;
    Ok(client)
}

/// Bring the schema to the latest version.
pub async fn migrate(client: &mut Client) -> Result<(), String> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let result = embedded::migrations::runner().run_async(client).await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let report = result.map_err(|e| format!("migration failed: {e}"))?;
    for m in report.applied_migrations() {
        tracing::info!("postgres: applied migration {}", m);
    }
    Ok(())
}

/// Days since the Unix epoch of a Unix-microsecond time.
pub fn day_of(us: i64) -> i32 {
    us.div_euclid(86_400_000_000) as i32
}

/// A Unix-microsecond time as a `SystemTime` (what `timestamptz` takes).
pub fn time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// The day partitions that exist or were made, so each is made once per process.
#[derive(Debug, Default)]
pub struct Partitions {
    made: HashSet<(&'static str, i32)>,
}

impl Partitions {
    /// Make sure `table` has the partitions of `days`.
    pub async fn ensure(
        &mut self,
        client: &Client,
        table: &'static str,
        days: impl IntoIterator<Item = i32>,
    ) -> Result<(), tokio_postgres::Error> {
        for day in days {
            if self.made.contains(&(table, day)) {
                continue;
            }
            client
                .execute(
                    "SELECT tapwatch_ensure_partition($1, DATE '1970-01-01' + $2::integer)",
                    &[&table, &day],
                )
                .await?;
            self.made.insert((table, day));
        }
        Ok(())
    }

    /// Forget what was made (after retention dropped partitions).
    pub fn forget(&mut self) {
        self.made.clear();
    }
}

/// Register a device (idempotent).
pub async fn add_device(client: &Client, id: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .execute("INSERT INTO devices (id) VALUES ($1) ON CONFLICT DO NOTHING", &[&id])
        .await?
        == 1)
}

/// Delete the oldest dead letters while those kept hold more than `max_bytes` (payloads and
/// reasons); how many went.
pub async fn trim_dead_letters(
    client: &Client,
    max_bytes: u64,
) -> Result<u64, tokio_postgres::Error> {
    let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    client
        .execute(
            "DELETE FROM dead_letters WHERE id IN (
               SELECT id FROM (
                 SELECT id, sum(octet_length(payload) + octet_length(detail))
                   OVER (ORDER BY id DESC) AS upto
                 FROM dead_letters) d
               WHERE upto > $1)",
            &[&max],
        )
        .await
}

/// Set a device's broker password (for the embedded broker), kept as its SHA-256.
pub async fn set_device_secret(
    client: &Client,
    id: &str,
    password: &str,
) -> Result<(), tokio_postgres::Error> {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(password.as_bytes()).to_vec();
    client.execute("UPDATE devices SET mqtt_secret_hash = $2 WHERE id = $1", &[&id, &hash]).await?;
    Ok(())
}

/// What retention removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retained {
    pub partitions_dropped_age: u64,
    pub partitions_dropped_size: u64,
    pub anomalies_deleted: u64,
    pub log_deleted: u64,
    pub dead_letters_deleted: u64,
    /// Dead letters deleted, the oldest first, to keep them under their size cap.
    pub dead_letters_trimmed: u64,
    /// Rows of the minute and hour rollups (statistics, top ports and talkers).
    pub rollups_deleted: u64,
    /// Evidence parts received before the cutoff.
    pub evidence_deleted: u64,
}

/// Drop day partitions older than `max_age_days`, then the oldest while the partitioned tables
/// are over `max_size_mb`; delete anomalies, ingest-log rows and dead letters older than
/// `max_age_days`.
pub async fn retention(
    client: &Client,
    config: &crate::config::RetentionConfig,
    now: SystemTime,
) -> Result<Retained, tokio_postgres::Error> {
    let (max_age_days, max_size_mb) = (config.max_age_days, config.max_size_mb);
    let mut r = Retained::default();
    let now_us = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let cutoff_day = day_of(now_us) - max_age_days as i32;
    // (day, table, partition, bytes) of every day partition.
    let rows = client
        .query(
            "SELECT p.relname::text, parent.relname::text, pg_total_relation_size(p.oid)
             FROM pg_inherits i
             JOIN pg_class p ON p.oid = i.inhrelid
             JOIN pg_class parent ON parent.oid = i.inhparent
             WHERE parent.relname = ANY($1) AND p.relname ~ '_p[0-9]{8}$'",
            &[&PARTITIONED.iter().map(|p| p.0).collect::<Vec<_>>()],
        )
        .await?;
    let mut parts: Vec<(String, String, i64)> = rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let day = name[name.len() - 8..].to_string();
            (day, name, row.get::<_, i64>(2))
        })
        .collect();
    parts.sort();
    let cutoff = {
        let d = client
            .query_one(
                "SELECT to_char(DATE '1970-01-01' + $1::integer, 'YYYYMMDD')",
                &[&cutoff_day],
            )
            .await?;
        d.get::<_, String>(0)
    };
    let mut total: i64 = parts.iter().map(|p| p.2).sum();
    let limit = (max_size_mb as i64) * 1024 * 1024;
    let mut kept = Vec::new();
    for (day, name, bytes) in parts {
        if day < cutoff {
            client.batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\"")).await?;
            r.partitions_dropped_age += 1;
            total -= bytes;
        } else {
            kept.push((day, name, bytes));
        }
    }
    // Oldest days first, a whole day (every table's partition of it) at a time.
    let mut i = 0;
    while total > limit && i < kept.len() {
        let day = kept[i].0.clone();
        while i < kept.len() && kept[i].0 == day {
            client.batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", kept[i].1)).await?;
            r.partitions_dropped_size += 1;
            total -= kept[i].2;
            i += 1;
        }
    }
    let cutoff_time = time((cutoff_day as i64) * 86_400_000_000);
    r.anomalies_deleted =
        client.execute("DELETE FROM anomalies WHERE last_seen < $1", &[&cutoff_time]).await?;
    r.log_deleted =
        client.execute("DELETE FROM ingest_log WHERE received_at < $1", &[&cutoff_time]).await?;
    r.dead_letters_deleted =
        client.execute("DELETE FROM dead_letters WHERE received_at < $1", &[&cutoff_time]).await?;
    r.dead_letters_trimmed =
        trim_dead_letters(client, config.dead_letters_max_mb.saturating_mul(1 << 20)).await?;
    r.evidence_deleted = client
        .execute("DELETE FROM anomaly_evidence WHERE received_at < $1", &[&cutoff_time])
        .await?;
    // Evidence of an episode the hub never heard of within an hour: its anomaly was refused or
    // never sent (or the part was forged); nothing will ever show it.
    r.evidence_deleted += client
        .execute(
            "DELETE FROM anomaly_evidence e
             WHERE received_at < now() - interval '1 hour' AND NOT EXISTS (
               SELECT 1 FROM anomalies a WHERE a.device = e.device AND a.edge_id = e.edge_id)",
            &[],
        )
        .await?;
    for table in ["traffic_stats_1m", "traffic_stats_1h", "traffic_top_1h"] {
        r.rollups_deleted += client
            .execute(&format!("DELETE FROM {table} WHERE bucket < $1"), &[&cutoff_time])
            .await?;
    }
    Ok(r)
}
