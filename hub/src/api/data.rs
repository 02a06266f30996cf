//! What the edges measured: devices and their health and metrics, traffic statistics (from the
//! rollups), flows, and model analyses. All read-only, for viewers and up.

use super::{time_range, ApiPath, ApiQuery, ApiResult, ApiState, Problem, Viewer};
use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};
use tokio_postgres::types::ToSql;
use utoipa::{IntoParams, ToSchema};

/// A statement built from optional filters: each bound value gets the next `$n`.
#[derive(Default)]
pub(crate) struct Sql {
    pub text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql { text: text.to_string(), params: Vec::new() }
    }
    /// Bind a value, returning its placeholder.
    pub fn bind<T: ToSql + Sync + Send + 'static>(&mut self, v: T) -> String {
        self.params.push(Box::new(v));
        format!("${}", self.params.len())
    }
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// A device's health, from its last status and its last message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Online and heard from within the last two minutes.
    Ok,
    /// Says it is online but has sent nothing for two minutes.
    Stale,
    /// Said goodbye, or its broker connection was lost (its last will).
    Offline,
    /// Never sent a status.
    Unknown,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaptureDrops {
    pub interface: String,
    pub packets: i64,
    pub kernel_drops: i64,
    pub queue_drops: i64,
    pub parse_errors: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatestMetrics {
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub cpu_percent: f32,
    pub mem_used_bytes: i64,
    pub mem_total_bytes: i64,
    pub disk_used_bytes: i64,
    pub disk_total_bytes: i64,
    pub net_rx_bytes: i64,
    pub net_tx_bytes: i64,
    pub flows_active: i64,
    pub store_dropped: i64,
    /// Per capture interface, counted since the edge started.
    pub capture: Vec<CaptureDrops>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub id: String,
    /// As the device last said: online, offline or unknown.
    pub state: String,
    pub health: Health,
    pub version: Option<String>,
    pub uptime_s: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// The latest system metrics, when any came.
    pub metrics: Option<LatestMetrics>,
    /// Each stream's sequence as the hub took it (all but status).
    pub streams: Vec<StreamSeq>,
}

/// One stream of a device, by its seqs: what came, what is missing, what came out of order,
/// and what conflicted with a seq taken before (kept as dead letters, reason seq_conflict).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamSeq {
    pub stream: String,
    /// The highest seq taken.
    pub last_seq: i64,
    /// Distinct seqs taken.
    pub received: i64,
    /// Every seq up to this one is committed (or counted lost): what the hub confirmed to the
    /// edge, which deleted them from its outbox.
    pub confirmed_seq: i64,
    /// Seqs above `confirmed_seq` never taken while later ones were (on their way, or lost
    /// on the way; the hub asks the edge for them again).
    pub missing: i64,
    /// Seqs never taken that the edge no longer held (its retention or outbox bound dropped
    /// them), counted once each.
    pub lost: i64,
    /// Messages that came after one with a higher seq (late, or an edge whose seqs started over).
    pub regressions: i64,
    /// Messages whose seq was taken before with other content.
    pub conflicts: i64,
}

const DEVICE_SELECT: &str = "
    SELECT d.id, d.state, d.version, d.uptime_s, d.last_seen, d.created_at,
           greatest(d.last_seen, m.ts) AS heard, m.ts, m.cpu_percent, m.mem_used_bytes,
           m.mem_total_bytes, m.disk_used_bytes, m.disk_total_bytes, m.net_rx_bytes,
           m.net_tx_bytes, m.flows_active, m.store_dropped, m.capture,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                     'stream', stream, 'last_seq', last_seq, 'received', received,
                     'confirmed_seq', acked_seq, 'missing', missing, 'lost', lost,
                     'regressions', regressions, 'conflicts', conflicts) ORDER BY stream),
                     '[]'::jsonb)
            FROM device_streams ds WHERE ds.device = d.id) AS streams
    FROM devices d
    LEFT JOIN LATERAL (SELECT * FROM system_metrics s WHERE s.device = d.id
                       ORDER BY s.ts DESC LIMIT 1) m ON true";

fn device_of(r: &tokio_postgres::Row, now: OffsetDateTime) -> Device {
    let state: String = r.get("state");
    let heard: Option<OffsetDateTime> = r.get("heard");
    let health = match state.as_str() {
        "online" if heard.is_some_and(|h| now - h <= Duration::minutes(2)) => Health::Ok,
        "online" => Health::Stale,
        "offline" => Health::Offline,
        _ => Health::Unknown,
    };
    let metrics = r.get::<_, Option<OffsetDateTime>>("ts").map(|ts| {
        let capture: serde_json::Value = r.get("capture");
        let n = |c: &serde_json::Value, k: &str| c.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
        LatestMetrics {
            ts,
            cpu_percent: r.get("cpu_percent"),
            mem_used_bytes: r.get("mem_used_bytes"),
            mem_total_bytes: r.get("mem_total_bytes"),
            disk_used_bytes: r.get("disk_used_bytes"),
            disk_total_bytes: r.get("disk_total_bytes"),
            net_rx_bytes: r.get("net_rx_bytes"),
            net_tx_bytes: r.get("net_tx_bytes"),
            flows_active: r.get("flows_active"),
            store_dropped: r.get("store_dropped"),
            capture: capture
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| CaptureDrops {
                            interface: c
                                .get("interface")
                                .and_then(|v| v.as_str())
                                .unwrap_or_default()
                                .to_string(),
                            packets: n(c, "packets"),
                            kernel_drops: n(c, "kernel_drops"),
                            queue_drops: n(c, "queue_drops"),
                            parse_errors: n(c, "parse_errors"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    });
    Device {
        id: r.get("id"),
        state,
        health,
        version: r.get("version"),
        uptime_s: r.get("uptime_s"),
        last_seen: heard,
        registered_at: r.get("created_at"),
        metrics,
        streams: serde_json::from_value(r.get("streams")).unwrap_or_default(),
    }
}

/// Devices with their health, last message, latest metrics and capture drops.
#[utoipa::path(get, path = "/devices", tag = "devices",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<Device>), (status = 401, body = Problem)))]
pub async fn devices(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<Device>>> {
    let db = s.pool.get().await?;
    let rows = db.query(&format!("{DEVICE_SELECT} ORDER BY d.id"), &[]).await?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(rows.iter().map(|r| device_of(r, now)).collect()))
}

/// One device.
#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Device), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn device(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Device>> {
    if !firmware::proto::valid_device_id(&id) {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    let db = s.pool.get().await?;
    let row = db.query_opt(&format!("{DEVICE_SELECT} WHERE d.id = $1"), &[&id]).await?;
    let row = row.ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
    Ok(Json(device_of(&row, OffsetDateTime::now_utc())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339; default 24 hours before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Bucket size in seconds (at least 60, a multiple of 60); default so that the range has
    /// about 300 buckets.
    #[param(minimum = 60, maximum = 31536000, multiple_of = 60)]
    pub bucket: Option<u32>,
    /// Only this device.
    pub device: Option<String>,
}

/// The bucket to use for a range: a whole number of minutes, at most 10 000 buckets.
fn bucket_of(q: Option<u32>, from: OffsetDateTime, to: OffsetDateTime) -> ApiResult<i64> {
    let span = (to - from).whole_seconds();
    let b = match q {
        Some(b) if b < 60 || b % 60 != 0 => {
            return Err(Problem::bad("bucket", "seconds: at least 60, a multiple of 60"))
        }
        Some(b) => i64::from(b),
        None => ((span / 300).max(60) + 59) / 60 * 60,
    };
    if span / b > 10_000 {
        return Err(Problem::bad("bucket", "at most 10000 buckets in the range"));
    }
    Ok(b)
}

/// The range a query asks for (by default the last `default`, at most `max` long) and its bucket,
/// seconds.
fn range_and_bucket(
    from: Option<&str>,
    to: Option<&str>,
    bucket: Option<u32>,
    default: Duration,
    max: Duration,
) -> ApiResult<(OffsetDateTime, OffsetDateTime, i64)> {
    let (from, to) = time_range(from, to, default, max)?;
    Ok((from, to, bucket_of(bucket, from, to)?))
}

/// SQL for the bucket of a time `column`: `secs` (a bound parameter) wide, on UTC boundaries.
fn bin(secs: &str, column: &str) -> String {
    format!(
        "date_bin(make_interval(secs => {secs}), {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// RFC 3339; default 24 hours before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Bucket size in seconds (at least 60, a multiple of 60); default so that the range has
    /// about 300 buckets.
    #[param(minimum = 60, maximum = 31536000, multiple_of = 60)]
    pub bucket: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsPoint {
    #[serde(with = "time::serde::rfc3339")]
    pub bucket: OffsetDateTime,
    pub cpu_percent: f64,
    pub mem_used_bytes: i64,
    pub mem_total_bytes: i64,
    pub disk_used_bytes: i64,
    pub disk_total_bytes: i64,
    /// Bytes per second over the bucket, from the counters.
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    pub flows_active: i64,
    /// Counters since the edge started, all interfaces, at the bucket's end.
    pub kernel_drops: i64,
    pub queue_drops: i64,
    pub store_dropped: i64,
}

/// A device's system metrics over time.
#[utoipa::path(get, path = "/devices/{id}/metrics", tag = "devices",
    params(("id" = String, Path), MetricsQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<MetricsPoint>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn device_metrics(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<Vec<MetricsPoint>>> {
    let (from, to, bucket) = range_and_bucket(
        q.from.as_deref(),
        q.to.as_deref(),
        q.bucket,
        Duration::hours(24),
        Duration::days(31),
    )?;
    let db = s.pool.get().await?;
    if !firmware::proto::valid_device_id(&id)
        || db.query_opt("SELECT 1 FROM devices WHERE id = $1", &[&id]).await?.is_none()
    {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    let rows = db
        .query(
            // Network rates from each sample and the one before it (counters since the edge
            // started: a restart's drop counts as nothing), so a bucket of one sample has one.
            &format!(
                "WITH s AS (
               SELECT *,
                 greatest(net_rx_bytes - lag(net_rx_bytes) OVER w, 0)
                   / nullif(extract(epoch FROM ts - lag(ts) OVER w), 0) AS rx_bps,
                 greatest(net_tx_bytes - lag(net_tx_bytes) OVER w, 0)
                   / nullif(extract(epoch FROM ts - lag(ts) OVER w), 0) AS tx_bps
               FROM system_metrics
               WHERE device = $1 AND ts >= $2::timestamptz - interval '10 minutes' AND ts < $3
               WINDOW w AS (ORDER BY ts)),
             m AS (
               SELECT {b} AS b, *,
                 (SELECT coalesce(sum((c->>'kernel_drops')::numeric), 0) FROM jsonb_array_elements(capture) c) AS kd,
                 (SELECT coalesce(sum((c->>'queue_drops')::numeric), 0) FROM jsonb_array_elements(capture) c) AS qd
               FROM s WHERE ts >= $2)
             SELECT b, avg(cpu_percent)::float8, max(mem_used_bytes), max(mem_total_bytes),
               max(disk_used_bytes), max(disk_total_bytes),
               coalesce(avg(rx_bps), 0)::float8, coalesce(avg(tx_bps), 0)::float8,
               max(flows_active), tapwatch_sat(max(kd)), tapwatch_sat(max(qd)), max(store_dropped)
             FROM m GROUP BY b ORDER BY b",
                b = bin("$4", "ts")
            ),
            &[&id, &from, &to, &(bucket as f64)],
        )
        .await?;
    Ok(Json(
        rows.iter()
            .map(|r| MetricsPoint {
                bucket: r.get(0),
                cpu_percent: r.get(1),
                mem_used_bytes: r.get(2),
                mem_total_bytes: r.get(3),
                disk_used_bytes: r.get(4),
                disk_total_bytes: r.get(5),
                net_rx_bps: r.get(6),
                net_tx_bps: r.get(7),
                flows_active: r.get(8),
                kernel_drops: r.get(9),
                queue_drops: r.get(10),
                store_dropped: r.get(11),
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficPoint {
    #[serde(with = "time::serde::rfc3339")]
    pub bucket: OffsetDateTime,
    pub packets: i64,
    pub bytes: i64,
    pub tcp_packets: i64,
    pub udp_packets: i64,
    pub icmp_packets: i64,
    pub other_packets: i64,
    pub flows_started: i64,
    pub flows_ended: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortShare {
    pub protocol: u8,
    pub port: u16,
    pub packets: i64,
    pub bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TalkerShare {
    pub ip: String,
    pub packets: i64,
    pub bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Seconds.
    pub bucket: i64,
    /// Every bucket with traffic, oldest first.
    pub series: Vec<TrafficPoint>,
    /// The whole range: packets and bytes, and packets by protocol.
    pub totals: TrafficPoint,
    /// The ports and hosts that were in an edge's top ten of an interval, summed by the hour
    /// (the hours that overlap the range), largest first.
    pub top_ports: Vec<PortShare>,
    pub top_talkers: Vec<TalkerShare>,
}

/// Traffic over a time range: bytes and packets per bucket, protocol mix, top ports and
/// talkers. Read from the minute and hour rollups, never from the flows.
#[utoipa::path(get, path = "/stats", tag = "statistics", params(RangeQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Stats), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn stats(
    State(s): State<ApiState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Stats>> {
    let (from, to, bucket) = range_and_bucket(
        q.from.as_deref(),
        q.to.as_deref(),
        q.bucket,
        Duration::hours(24),
        Duration::days(400),
    )?;
    let table = if bucket % 3600 == 0 { "traffic_stats_1h" } else { "traffic_stats_1m" };
    let db = s.pool.get().await?;
    let bucket_s = bucket as f64;
    let series_sql = format!(
        "SELECT {b} AS b,
               tapwatch_sat(sum(packets)), tapwatch_sat(sum(bytes)), tapwatch_sat(sum(tcp_packets)),
               tapwatch_sat(sum(udp_packets)), tapwatch_sat(sum(icmp_packets)), tapwatch_sat(sum(other_packets)),
               tapwatch_sat(sum(flows_started)), tapwatch_sat(sum(flows_ended))
             FROM {table} WHERE bucket >= $1 AND bucket < $2 AND ($4::text IS NULL OR device = $4)
             GROUP BY b ORDER BY b",
        b = bin("$3", "bucket")
    );
    let series_params: [&(dyn ToSql + Sync); 4] = [&from, &to, &bucket_s, &q.device];
    let series = db.query(&series_sql, &series_params);
    // The hours that overlap the range, on UTC hours (as the ingest buckets them).
    let utc = from.to_offset(time::UtcOffset::UTC);
    let hour_from = utc
        - Duration::seconds(i64::from(utc.minute()) * 60 + i64::from(utc.second()))
        - Duration::nanoseconds(i64::from(utc.nanosecond()));
    let top = |what: &'static str| {
        let db = &db;
        let device = q.device.clone();
        async move {
            db.query(
                "SELECT key, tapwatch_sat(sum(packets)) AS p, tapwatch_sat(sum(bytes)) AS b FROM traffic_top_1h
                 WHERE what = $1 AND bucket >= $2 AND bucket < $3
                   AND ($4::text IS NULL OR device = $4)
                 GROUP BY key ORDER BY b DESC, key LIMIT 10",
                &[&what, &hour_from, &to, &device],
            )
            .await
        }
    };
    let (series, ports, talkers) = tokio::try_join!(series, top("port"), top("host"))?;
    let point = |r: &tokio_postgres::Row| TrafficPoint {
        bucket: r.get(0),
        packets: r.get(1),
        bytes: r.get(2),
        tcp_packets: r.get(3),
        udp_packets: r.get(4),
        icmp_packets: r.get(5),
        other_packets: r.get(6),
        flows_started: r.get(7),
        flows_ended: r.get(8),
    };
    let series: Vec<TrafficPoint> = series.iter().map(point).collect();
    let mut totals = TrafficPoint {
        bucket: from,
        packets: 0,
        bytes: 0,
        tcp_packets: 0,
        udp_packets: 0,
        icmp_packets: 0,
        other_packets: 0,
        flows_started: 0,
        flows_ended: 0,
    };
    for p in &series {
        totals.packets = totals.packets.saturating_add(p.packets);
        totals.bytes = totals.bytes.saturating_add(p.bytes);
        totals.tcp_packets = totals.tcp_packets.saturating_add(p.tcp_packets);
        totals.udp_packets = totals.udp_packets.saturating_add(p.udp_packets);
        totals.icmp_packets = totals.icmp_packets.saturating_add(p.icmp_packets);
        totals.other_packets = totals.other_packets.saturating_add(p.other_packets);
        totals.flows_started = totals.flows_started.saturating_add(p.flows_started);
        totals.flows_ended = totals.flows_ended.saturating_add(p.flows_ended);
    }
    let top_ports = ports
        .iter()
        .filter_map(|r| {
            let key: &str = r.get(0);
            let (proto, port) = key.split_once('/')?;
            Some(PortShare {
                protocol: proto.parse().ok()?,
                port: port.parse().ok()?,
                packets: r.get(1),
                bytes: r.get(2),
            })
        })
        .collect();
    let top_talkers = talkers
        .iter()
        .map(|r| TalkerShare { ip: r.get(0), packets: r.get(1), bytes: r.get(2) })
        .collect();
    Ok(Json(Stats { from, to, bucket, series, totals, top_ports, top_talkers }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlowQuery {
    /// RFC 3339, on the flow's end; default 1 hour before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub device: Option<String>,
    /// Either end is this address.
    #[param(value_type = Option<String>)]
    pub host: Option<IpAddr>,
    /// Either end is in this network (CIDR, e.g. 10.0.0.0/8).
    pub net: Option<String>,
    /// Either end's port.
    pub port: Option<u16>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: Option<u8>,
    /// Flows of an anomaly of this kind: the same device, the anomaly's source at either end,
    /// ended between its first and last sighting.
    pub kind: Option<Kind>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Flow {
    pub device: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    pub src_ip: String,
    pub src_port: i32,
    pub dst_ip: String,
    pub dst_port: i32,
    pub protocol: i16,
    pub vlan: i32,
    pub end_reason: String,
    pub packets: f64,
    pub bytes: f64,
    pub feature_set: i32,
    /// By name when the flow's feature set is this hub's (models/features.json), else by
    /// position under "values".
    pub features: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowPage {
    pub flows: Vec<Flow>,
    /// Pass as `cursor` for the next page (older flows); absent on the last.
    pub next_cursor: Option<String>,
}

/// An attack or anomaly kind, as the edges name them (firmware::proto::AnomalyKind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    PortScan,
    HostSweep,
    SynFlood,
    UdpFlood,
    IcmpFlood,
    Reflection,
    BruteForce,
    DnsTunnel,
    ArpSpoof,
    DhcpStarvation,
    PasswordSpray,
    Heartbleed,
    LateralMovement,
    OsFingerprint,
    Exploit,
    HttpFlood,
    Evasion,
    WebAttack,
    AnomalousFlow,
}

impl Kind {
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }
}

pub fn parse_net(field: &str, s: &str) -> ApiResult<cidr::IpCidr> {
    s.parse::<cidr::IpCidr>().map_err(|e| {
        Problem::bad(field, format!("{field}: {e} (want a network such as 10.0.0.0/8)"))
    })
}

fn encode_cursor(end: OffsetDateTime, device: &str, batch: i64, idx: i16) -> String {
    let us = end.unix_timestamp_nanos() / 1000;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{us}|{batch}|{idx}|{device}"))
}

fn decode_cursor(s: &str) -> ApiResult<(OffsetDateTime, String, i64, i16)> {
    let bad = || Problem::bad("cursor", "not a cursor this API gave");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut it = text.splitn(4, '|');
    let us: i128 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let batch: i64 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let idx: i16 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let device = it.next().ok_or_else(bad)?.to_string();
    let end = super::time_of_us("cursor", us).map_err(|_| bad())?;
    Ok((end, device, batch, idx))
}

/// Flows by time range, host, network, port, protocol and anomaly kind, newest first, a page
/// at a time.
#[utoipa::path(get, path = "/flows", tag = "flows", params(FlowQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = FlowPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn flows(
    State(s): State<ApiState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<FlowQuery>,
) -> ApiResult<Json<FlowPage>> {
    let (from, to) =
        time_range(q.from.as_deref(), q.to.as_deref(), Duration::hours(1), Duration::days(31))?;
    let limit = i64::from(q.limit.unwrap_or(100));
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad("limit", "1 to 1000"));
    }
    let mut sql = Sql::new(
        "SELECT device, start_ts, end_ts, host(src_ip), src_port, host(dst_ip), dst_port,
                protocol, vlan, end_reason, feature_set, features, batch_seq, idx
         FROM traffic_features f WHERE ",
    );
    let (a, b) = (sql.bind(from), sql.bind(to));
    sql.push(&format!("end_ts >= {a} AND end_ts < {b}"));
    if let Some(d) = q.device {
        let p = sql.bind(d);
        sql.push(&format!(" AND device = {p}"));
    }
    if let Some(h) = q.host {
        let p = sql.bind(h);
        sql.push(&format!(" AND (src_ip = {p} OR dst_ip = {p})"));
    }
    if let Some(n) = q.net.as_deref() {
        let p = sql.bind(parse_net("net", n)?);
        sql.push(&format!(" AND (src_ip <<= {p}::cidr OR dst_ip <<= {p}::cidr)"));
    }
    if let Some(port) = q.port {
        let p = sql.bind(i32::from(port));
        sql.push(&format!(" AND (src_port = {p} OR dst_port = {p})"));
    }
    if let Some(proto) = q.protocol {
        let p = sql.bind(i16::from(proto));
        sql.push(&format!(" AND protocol = {p}"));
    }
    if let Some(k) = q.kind {
        let p = sql.bind(k.name());
        sql.push(&format!(
            " AND EXISTS (SELECT 1 FROM anomalies a WHERE a.kind = {p} AND a.device = f.device
                AND (a.src_ip = f.src_ip OR a.src_ip = f.dst_ip)
                AND f.end_ts >= a.first_seen AND f.end_ts <= a.last_seen + interval '2 minutes')"
        ));
    }
    if let Some(c) = q.cursor.as_deref() {
        let (end, device, batch, idx) = decode_cursor(c)?;
        let (e, d, bt, i) = (sql.bind(end), sql.bind(device), sql.bind(batch), sql.bind(idx));
        sql.push(&format!(" AND (end_ts, device, batch_seq, idx) < ({e}, {d}, {bt}, {i})"));
    }
    let l = sql.bind(limit + 1);
    sql.push(&format!(" ORDER BY end_ts DESC, device DESC, batch_seq DESC, idx DESC LIMIT {l}"));
    let db = s.pool.get().await?;
    let rows = db.query(&sql.text, &sql.params()).await?;
    let names = &firmware::features::NAMES;
    let at = |v: &[f32], name: &str| {
        names.iter().position(|n| *n == name).and_then(|i| v.get(i)).map_or(0.0, |x| f64::from(*x))
    };
    let mut next_cursor = None;
    let mut flows = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if i as i64 == limit {
            let last = &rows[i - 1];
            next_cursor = Some(encode_cursor(last.get(2), last.get(0), last.get(12), last.get(13)));
            break;
        }
        let fs: i32 = r.get(10);
        let v: Vec<f32> = r.get(11);
        let current =
            fs as u32 == firmware::features::FEATURE_SET_VERSION && v.len() == names.len();
        let features = if current {
            serde_json::Value::Object(
                names.iter().zip(&v).map(|(n, x)| (n.to_string(), serde_json::json!(x))).collect(),
            )
        } else {
            serde_json::json!({ "values": v })
        };
        let (packets, bytes) = if current {
            (
                at(&v, "tot_fwd_pkts") + at(&v, "tot_bwd_pkts"),
                at(&v, "totlen_fwd_pkts") + at(&v, "totlen_bwd_pkts"),
            )
        } else {
            (0.0, 0.0)
        };
        flows.push(Flow {
            device: r.get(0),
            start: r.get(1),
            end: r.get(2),
            src_ip: r.get(3),
            src_port: r.get(4),
            dst_ip: r.get(5),
            dst_port: r.get(6),
            protocol: r.get(7),
            vlan: r.get(8),
            end_reason: r.get(9),
            packets,
            bytes,
            feature_set: fs,
            features,
        });
    }
    Ok(Json(FlowPage { flows, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalysisQuery {
    /// RFC 3339; default 24 hours before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub device: Option<String>,
    pub model: Option<String>,
    /// Bucket of the series, seconds (at least 60, a multiple of 60).
    #[param(minimum = 60, maximum = 31536000, multiple_of = 60)]
    pub bucket: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnalysisSummary {
    pub device: String,
    pub model: String,
    pub model_version: String,
    pub runs: i64,
    pub rows: i64,
    pub flagged: i64,
    pub score_min: f64,
    /// Weighted by rows.
    pub score_mean: f64,
    pub score_max: f64,
    /// The latest run's.
    pub threshold: f64,
    pub latency_us_mean: f64,
    pub latency_us_max: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnalysisPoint {
    pub device: String,
    pub model: String,
    #[serde(with = "time::serde::rfc3339")]
    pub bucket: OffsetDateTime,
    pub rows: i64,
    pub flagged: i64,
    pub score_mean: f64,
    pub score_max: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Analyses {
    pub summary: Vec<AnalysisSummary>,
    pub series: Vec<AnalysisPoint>,
}

/// Model runs per device and model: rows scored, flagged, score statistics and latency.
#[utoipa::path(get, path = "/analyses", tag = "analyses", params(AnalysisQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Analyses), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn analyses(
    State(s): State<ApiState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<AnalysisQuery>,
) -> ApiResult<Json<Analyses>> {
    let (from, to, bucket) = range_and_bucket(
        q.from.as_deref(),
        q.to.as_deref(),
        q.bucket,
        Duration::hours(24),
        Duration::days(31),
    )?;
    let db = s.pool.get().await?;
    let filter = "ts >= $1 AND ts < $2 AND ($3::text IS NULL OR device = $3)
                  AND ($4::text IS NULL OR model = $4)";
    let bucket_s = bucket as f64;
    let summary_sql = format!(
        "SELECT device, model, model_version, count(*), tapwatch_sat(sum(rows)), tapwatch_sat(sum(flagged)),
               min(score_min)::float8,
               (sum(score_mean * rows) / nullif(sum(rows), 0))::float8,
               max(score_max)::float8,
               (array_agg(threshold ORDER BY ts DESC))[1]::float8,
               avg(latency_us)::float8, max(latency_us)
             FROM analyses WHERE {filter}
             GROUP BY device, model, model_version ORDER BY device, model, model_version"
    );
    let series_sql = format!(
        "SELECT device, model, {b} AS b,
               tapwatch_sat(sum(rows)), tapwatch_sat(sum(flagged)),
               coalesce(sum(score_mean * rows) / nullif(sum(rows), 0), 0)::float8,
               max(score_max)::float8
             FROM analyses WHERE {filter}
             GROUP BY device, model, b ORDER BY device, model, b",
        b = bin("$5", "ts")
    );
    let summary_params: [&(dyn ToSql + Sync); 4] = [&from, &to, &q.device, &q.model];
    let series_params: [&(dyn ToSql + Sync); 5] = [&from, &to, &q.device, &q.model, &bucket_s];
    let summary = db.query(&summary_sql, &summary_params);
    let series = db.query(&series_sql, &series_params);
    let (summary, series) = tokio::try_join!(summary, series)?;
    Ok(Json(Analyses {
        summary: summary
            .iter()
            .map(|r| AnalysisSummary {
                device: r.get(0),
                model: r.get(1),
                model_version: r.get(2),
                runs: r.get(3),
                rows: r.get(4),
                flagged: r.get(5),
                score_min: r.get(6),
                score_mean: r.get::<_, Option<f64>>(7).unwrap_or(0.0),
                score_max: r.get(8),
                threshold: r.get(9),
                latency_us_mean: r.get(10),
                latency_us_max: r.get(11),
            })
            .collect(),
        series: series
            .iter()
            .map(|r| AnalysisPoint {
                device: r.get(0),
                model: r.get(1),
                bucket: r.get(2),
                rows: r.get(3),
                flagged: r.get(4),
                score_mean: r.get(5),
                score_max: r.get(6),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's kinds are the contract's (the hub's copy exists only to carry a schema).
    #[test]
    fn test_kinds_are_the_contracts() {
        let schema = firmware::proto::json_schemas()
            .into_iter()
            .find(|(name, _)| *name == "anomalies")
            .map(|(_, s)| s)
            .unwrap_or_default();
        let mut contract: Vec<String> = Vec::new();
        for alt in schema["$defs"]["AnomalyKind"]["oneOf"].as_array().into_iter().flatten() {
            for v in alt["enum"].as_array().into_iter().flatten().chain([&alt["const"]]) {
                if let Some(s) = v.as_str() {
                    contract.push(s.to_string());
                }
            }
        }
        let ours: Vec<String> = serde_json::from_value::<Vec<Kind>>(serde_json::json!(contract))
            .expect("every contract kind is an API kind")
            .into_iter()
            .map(Kind::name)
            .collect();
        assert_eq!(ours, contract);
        assert_eq!(contract.len(), 19);
    }
}
