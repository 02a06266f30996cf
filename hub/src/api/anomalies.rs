//! Anomaly episodes: lists with filters, one episode with its notes, state changes
//! (acknowledge, resolve), notes, evidence as a pcap file; and suppression rules.

use super::data::{parse_net, Kind, Sql};
use super::{Analyst, ApiJson, ApiPath, ApiQuery, ApiResult, ApiState, Authed, Problem, Viewer};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// Where an analyst has got to with an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    New,
    Acknowledged,
    Resolved,
}

impl AnomalyState {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyState::New => "new",
            AnomalyState::Acknowledged => "acknowledged",
            AnomalyState::Resolved => "resolved",
        }
    }
}

/// How urgent, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

pub const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

/// SQL true when a suppression rule matches the anomaly row `a`.
pub const SUPPRESSED: &str = "EXISTS (SELECT 1 FROM suppression_rules r
    WHERE (r.device IS NULL OR r.device = a.device) AND (r.kind IS NULL OR r.kind = a.kind)
      AND (r.host IS NULL OR r.host = a.src_ip OR r.host = a.dst_ip)
      AND (r.net IS NULL OR a.src_ip <<= r.net OR a.dst_ip <<= r.net)
      AND (r.port IS NULL OR r.port = a.dst_port))";

#[derive(Debug, Serialize, ToSchema)]
pub struct Reason {
    /// A feature, or a window counter that tripped.
    pub feature: String,
    pub value: f64,
    /// Its share of the score (0 to 1).
    pub contribution: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Anomaly {
    pub id: i64,
    pub device: String,
    pub kind: String,
    pub severity: String,
    pub state: String,
    pub confidence: f32,
    pub score: f32,
    pub threshold: f32,
    /// What found it: a window detector or a model.
    pub detector: String,
    pub src_ip: String,
    pub dst_ip: Option<String>,
    pub dst_port: Option<i32>,
    pub protocol: Option<i16>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Packets, flows or events counted while it lasted.
    pub count: i64,
    pub reasons: Vec<Reason>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    pub acknowledged_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    pub resolved_by: Option<String>,
    /// A suppression rule matches it.
    pub suppressed: bool,
    /// Its packets are at /anomalies/{id}/evidence.
    pub has_evidence: bool,
}

const ANOMALY_SELECT: &str = "SELECT a.id, a.device, a.kind, a.severity, a.state, a.confidence,
    a.score, a.threshold, a.detector, host(a.src_ip), host(a.dst_ip), a.dst_port, a.protocol,
    a.first_seen, a.last_seen, a.count, a.reasons, a.acknowledged_at, a.acknowledged_by,
    a.resolved_at, a.resolved_by";

fn anomaly_of(r: &tokio_postgres::Row) -> Anomaly {
    let reasons: serde_json::Value = r.get(16);
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    Anomaly {
        id: r.get(0),
        device: r.get(1),
        kind: r.get(2),
        severity: r.get(3),
        state: r.get(4),
        confidence: r.get(5),
        score: r.get(6),
        threshold: r.get(7),
        detector: r.get(8),
        src_ip: r.get(9),
        dst_ip: r.get(10),
        dst_port: r.get(11),
        protocol: r.get(12),
        first_seen: r.get(13),
        last_seen: r.get(14),
        count: r.get(15),
        reasons: reasons
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| Reason {
                        feature: x.get("feature").and_then(|v| v.as_str()).unwrap_or("").into(),
                        value: f(x, "value"),
                        contribution: f(x, "contribution"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        acknowledged_at: r.get(17),
        acknowledged_by: r.get(18),
        resolved_at: r.get(19),
        resolved_by: r.get(20),
        suppressed: r.get("suppressed"),
        has_evidence: r.get("has_evidence"),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnomalyQuery {
    /// RFC 3339: episodes still going at or after this; default 7 days before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339: episodes begun before this; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub device: Option<String>,
    pub kind: Option<Kind>,
    /// This severity or worse.
    pub severity: Option<Severity>,
    pub state: Option<AnomalyState>,
    /// Also those a suppression rule matches.
    pub include_suppressed: Option<bool>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyPage {
    pub anomalies: Vec<Anomaly>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Anomaly episodes, the latest sighting first.
#[utoipa::path(get, path = "/anomalies", tag = "anomalies", params(AnomalyQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = AnomalyPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    State(s): State<ApiState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<AnomalyQuery>,
) -> ApiResult<Json<AnomalyPage>> {
    let (from, to) = super::time_range(
        q.from.as_deref(),
        q.to.as_deref(),
        time::Duration::days(7),
        time::Duration::days(400),
    )?;
    let limit = i64::from(q.limit.unwrap_or(50));
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad("limit", "1 to 500"));
    }
    let mut sql = Sql::new(&format!(
        "{ANOMALY_SELECT}, {SUPPRESSED} AS suppressed,
         EXISTS (SELECT 1 FROM anomaly_evidence e WHERE e.device = a.device AND e.edge_id = a.edge_id) AS has_evidence
         FROM anomalies a WHERE "
    ));
    let (f, t) = (sql.bind(from), sql.bind(to));
    sql.push(&format!("a.last_seen >= {f} AND a.first_seen < {t}"));
    if let Some(d) = q.device {
        let p = sql.bind(d);
        sql.push(&format!(" AND a.device = {p}"));
    }
    if let Some(k) = q.kind {
        let p = sql.bind(k.name());
        sql.push(&format!(" AND a.kind = {p}"));
    }
    if let Some(sev) = q.severity {
        let p =
            sql.bind(SEVERITIES[sev as usize..].iter().map(|x| x.to_string()).collect::<Vec<_>>());
        sql.push(&format!(" AND a.severity = ANY({p})"));
    }
    if let Some(st) = q.state {
        let p = sql.bind(st.name());
        sql.push(&format!(" AND a.state = {p}"));
    }
    if !q.include_suppressed.unwrap_or(false) {
        sql.push(&format!(" AND NOT {SUPPRESSED}"));
    }
    if let Some(c) = q.cursor.as_deref() {
        let bad = || Problem::bad("cursor", "not a cursor this API gave");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (us, id) = text.split_once('|').ok_or_else(bad)?;
        let us: i128 = us.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        let last = super::time_of_us("cursor", us).map_err(|_| bad())?;
        let (l, i) = (sql.bind(last), sql.bind(id));
        sql.push(&format!(" AND (a.last_seen, a.id) < ({l}, {i})"));
    }
    let l = sql.bind(limit + 1);
    sql.push(&format!(" ORDER BY a.last_seen DESC, a.id DESC LIMIT {l}"));
    let db = s.pool.get().await?;
    let rows = db.query(&sql.text, &sql.params()).await?;
    let mut anomalies: Vec<Anomaly> = rows.iter().map(anomaly_of).collect();
    let next_cursor = if anomalies.len() as i64 > limit {
        anomalies.truncate(limit as usize);
        anomalies.last().map(|a| {
            let us = a.last_seen.unix_timestamp_nanos() / 1000;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{us}|{}", a.id))
        })
    } else {
        None
    };
    Ok(Json(AnomalyPage { anomalies, next_cursor }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Note {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub author: String,
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyDetail {
    #[serde(flatten)]
    pub anomaly: Anomaly,
    pub notes: Vec<Note>,
}

async fn load(db: &tokio_postgres::Client, id: i64) -> ApiResult<AnomalyDetail> {
    let row = db
        .query_opt(
            &format!(
                "{ANOMALY_SELECT}, {SUPPRESSED} AS suppressed,
                 EXISTS (SELECT 1 FROM anomaly_evidence e WHERE e.device = a.device AND e.edge_id = a.edge_id) AS has_evidence
                 FROM anomalies a WHERE a.id = $1"
            ),
            &[&id],
        )
        .await?
        .ok_or_else(|| Problem::not_found(format!("no anomaly {id}")))?;
    let notes = db
        .query(
            "SELECT id, ts, author, body FROM anomaly_notes WHERE anomaly_id = $1 ORDER BY id",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Note { id: r.get(0), ts: r.get(1), author: r.get(2), body: r.get(3) })
        .collect();
    Ok(AnomalyDetail { anomaly: anomaly_of(&row), notes })
}

/// One anomaly episode with its notes.
#[utoipa::path(get, path = "/anomalies/{id}", tag = "anomalies", params(("id" = i64, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = AnomalyDetail), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_one(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<AnomalyDetail>> {
    let db = s.pool.get().await?;
    Ok(Json(load(&db, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: AnomalyState,
}

/// Acknowledge or resolve an episode (or set it back to new). Analysts and admins.
#[utoipa::path(patch, path = "/anomalies/{id}", tag = "anomalies", params(("id" = i64, Path)),
    request_body = StateChange,
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 200, body = AnomalyDetail), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    State(s): State<ApiState>,
    Authed(caller): Analyst,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<StateChange>,
) -> ApiResult<Json<AnomalyDetail>> {
    let db = s.pool.get().await?;
    let n = db
        .execute(
            "UPDATE anomalies SET state = $2,
               acknowledged_at = CASE WHEN $2 = 'acknowledged' THEN now()
                                      WHEN $2 = 'new' THEN NULL ELSE acknowledged_at END,
               acknowledged_by = CASE WHEN $2 = 'acknowledged' THEN $3
                                      WHEN $2 = 'new' THEN NULL ELSE acknowledged_by END,
               resolved_at = CASE WHEN $2 = 'resolved' THEN now() ELSE NULL END,
               resolved_by = CASE WHEN $2 = 'resolved' THEN $3 ELSE NULL END
             WHERE id = $1",
            &[&id, &req.state.name(), &caller.username],
        )
        .await?;
    if n == 0 {
        return Err(Problem::not_found(format!("no anomaly {id}")));
    }
    caller
        .audit(
            &db,
            "anomaly_state",
            &format!("anomaly/{id}"),
            serde_json::json!({"state": req.state}),
        )
        .await?;
    Ok(Json(load(&db, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// 1 to 10 000 characters, not all blank, no NUL.
    #[schema(min_length = 1, max_length = 10000, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub body: String,
}

/// Add a note to an episode. Analysts and admins.
#[utoipa::path(post, path = "/anomalies/{id}/notes", tag = "anomalies", params(("id" = i64, Path)),
    request_body = NewNote,
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 201, body = Note), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn add_note(
    State(s): State<ApiState>,
    Authed(caller): Analyst,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<NewNote>,
) -> ApiResult<(StatusCode, Json<Note>)> {
    let body = req.body.trim();
    if body.is_empty() || body.chars().count() > 10_000 || body.contains('\0') {
        return Err(Problem::bad("body", "1 to 10000 characters, no NUL"));
    }
    let db = s.pool.get().await?;
    let row = db
        .query_opt(
            "INSERT INTO anomaly_notes (anomaly_id, author, body)
             SELECT id, $2, $3 FROM anomalies WHERE id = $1 RETURNING id, ts, author, body",
            &[&id, &caller.username, &body],
        )
        .await?
        .ok_or_else(|| Problem::not_found(format!("no anomaly {id}")))?;
    let note = Note { id: row.get(0), ts: row.get(1), author: row.get(2), body: row.get(3) };
    caller
        .audit(&db, "anomaly_note", &format!("anomaly/{id}"), serde_json::json!({"note": note.id}))
        .await?;
    Ok((StatusCode::CREATED, Json(note)))
}

/// The episode's packets as a pcap file (what the edge kept as evidence).
#[utoipa::path(get, path = "/anomalies/{id}/evidence", tag = "anomalies", params(("id" = i64, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, description = "A pcap file", content_type = "application/vnd.tcpdump.pcap"),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn evidence(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    let db = s.pool.get().await?;
    let anomaly = db
        .query_opt("SELECT device, edge_id FROM anomalies WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| Problem::not_found(format!("no anomaly {id}")))?;
    let parts: Vec<Vec<u8>> = db
        .query(
            "SELECT pcap FROM anomaly_evidence WHERE device = $1 AND edge_id = $2 ORDER BY seq",
            &[&anomaly.get::<_, &str>(0), &anomaly.get::<_, i64>(1)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if parts.is_empty() {
        return Err(Problem::not_found(format!("anomaly {id}: its edge has sent no evidence yet")));
    }
    let pcap = merge_pcaps(&parts).map_err(Problem::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.tcpdump.pcap".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"anomaly-{id}.pcap\"")),
        ],
        pcap,
    )
        .into_response())
}

/// One pcap file of the packets of `parts` (pcap files, as the ingest checked them), in order,
/// with the first part's link type; parts of another link type are left out (one pcap file has
/// one). The snap length is the largest of the parts' and of the packets' own lengths, so parts
/// an edge wrote with different snap lengths merge whole.
pub fn merge_pcaps(parts: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    use pcap_file::pcap::{PcapReader, PcapWriter};
    let mut readers = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        readers.push(PcapReader::new(&part[..]).map_err(|e| format!("part {i}: {e}"))?);
    }
    let Some(first) = readers.first().map(|r| r.header()) else {
        return Err("no parts".to_string());
    };
    let mut packets = Vec::new();
    let mut snaplen = 0u32;
    for (i, mut reader) in readers.into_iter().enumerate() {
        let header = reader.header();
        if header.datalink != first.datalink {
            tracing::warn!("evidence part {i} has another link type: left out");
            continue;
        }
        snaplen = snaplen.max(header.snaplen);
        while let Some(p) = reader.next_packet() {
            let p = p.map_err(|e| format!("part {i}: {e}"))?.into_owned();
            snaplen = snaplen.max(u32::try_from(p.data.len()).unwrap_or(u32::MAX));
            packets.push(p);
        }
    }
    let header = pcap_file::pcap::PcapHeader { snaplen, ..first };
    let mut w = PcapWriter::with_header(Vec::new(), header).map_err(|e| e.to_string())?;
    for p in &packets {
        w.write_packet(p).map_err(|e| e.to_string())?;
    }
    Ok(w.into_writer())
}

#[cfg(test)]
mod tests {
    use super::merge_pcaps;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};

    fn part(snaplen: u32, sizes: &[usize]) -> Vec<u8> {
        let header = PcapHeader { snaplen, ..PcapHeader::default() };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let data = vec![i as u8; *n];
            let t = std::time::Duration::from_micros(i as u64);
            w.write_packet(&PcapPacket::new(t, *n as u32, &data)).unwrap();
        }
        w.into_writer()
    }

    /// Parts written with different snap lengths merge into one file holding every packet (a
    /// header with the first part's 96 bytes made the download fail on the second part's).
    #[test]
    fn test_parts_of_different_snap_lengths_merge_whole() {
        let merged =
            merge_pcaps(&[part(96, &[60, 90]), part(65535, &[1500, 40]), part(200, &[])]).unwrap();
        let mut r = PcapReader::new(&merged[..]).unwrap();
        assert!(r.header().snaplen >= 1500);
        let mut sizes = Vec::new();
        while let Some(p) = r.next_packet() {
            sizes.push(p.unwrap().data.len());
        }
        assert_eq!(sizes, [60, 90, 1500, 40]);
        assert!(merge_pcaps(&[]).is_err());
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rule {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub device: Option<String>,
    pub kind: Option<String>,
    pub host: Option<String>,
    pub net: Option<String>,
    pub port: Option<i32>,
    pub comment: String,
}

const RULE_SELECT: &str = "SELECT id, created_at, created_by, device, kind, host(host), net::text, port, comment FROM suppression_rules";

fn rule_of(r: &tokio_postgres::Row) -> Rule {
    Rule {
        id: r.get(0),
        created_at: r.get(1),
        created_by: r.get(2),
        device: r.get(3),
        kind: r.get(4),
        host: r.get(5),
        net: r.get(6),
        port: r.get(7),
        comment: r.get(8),
    }
}

/// Suppression rules: matching anomalies are left out of lists (unless asked for) and of live
/// push.
#[utoipa::path(get, path = "/suppressions", tag = "suppressions",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<Rule>), (status = 401, body = Problem)))]
pub async fn list_rules(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<Rule>>> {
    let db = s.pool.get().await?;
    let rows = db.query(&format!("{RULE_SELECT} ORDER BY id"), &[]).await?;
    Ok(Json(rows.iter().map(rule_of).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct NewRule {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub device: Option<String>,
    pub kind: Option<Kind>,
    /// Either end of the anomaly is this address.
    #[schema(value_type = Option<String>)]
    pub host: Option<IpAddr>,
    /// Either end is in this network (CIDR).
    pub net: Option<String>,
    /// The anomaly's destination port.
    pub port: Option<u16>,
    /// At most 1000 characters, no NUL.
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub comment: Option<String>,
}

/// Add a suppression rule; at least one of device, kind, host, net, port. Analysts and admins.
#[utoipa::path(post, path = "/suppressions", tag = "suppressions", request_body = NewRule,
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 201, body = Rule), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn create_rule(
    State(s): State<ApiState>,
    Authed(caller): Analyst,
    ApiJson(req): ApiJson<NewRule>,
) -> ApiResult<(StatusCode, Json<Rule>)> {
    if req.device.is_none()
        && req.kind.is_none()
        && req.host.is_none()
        && req.net.is_none()
        && req.port.is_none()
    {
        return Err(Problem::bad(
            "kind",
            "a rule needs at least one of device, kind, host, net, port",
        ));
    }
    if let Some(d) = req.device.as_deref() {
        if !firmware::proto::valid_device_id(d) {
            return Err(Problem::bad("device", "1-64 of A-Z a-z 0-9 _ . -"));
        }
    }
    let net = req.net.as_deref().map(|n| parse_net("net", n)).transpose()?;
    let comment = req.comment.unwrap_or_default();
    if comment.chars().count() > 1000 || comment.contains('\0') {
        return Err(Problem::bad("comment", "at most 1000 characters, no NUL"));
    }
    let db = s.pool.get().await?;
    let row = db
        .query_one(
            "INSERT INTO suppression_rules (created_by, device, kind, host, net, port, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id, created_at, created_by, device, kind, host(host), net::text, port, comment",
            &[&caller.username, &req.device, &req.kind.map(Kind::name), &req.host, &net, &req.port.map(i32::from), &comment],
        )
        .await?;
    let rule = rule_of(&row);
    db.execute("SELECT pg_notify('tapwatch_live', '{\"type\":\"rules\"}')", &[]).await?;
    caller
        .audit(
            &db,
            "suppression_create",
            &format!("suppression/{}", rule.id),
            serde_json::to_value(&rule).unwrap_or_default(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// Remove a suppression rule. Analysts and admins.
#[utoipa::path(delete, path = "/suppressions/{id}", tag = "suppressions", params(("id" = i64, Path)),
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 204, description = "Removed"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn delete_rule(
    State(s): State<ApiState>,
    Authed(caller): Analyst,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let db = s.pool.get().await?;
    if db.execute("DELETE FROM suppression_rules WHERE id = $1", &[&id]).await? == 0 {
        return Err(Problem::not_found(format!("no suppression rule {id}")));
    }
    db.execute("SELECT pg_notify('tapwatch_live', '{\"type\":\"rules\"}')", &[]).await?;
    caller
        .audit(&db, "suppression_delete", &format!("suppression/{id}"), serde_json::json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
