//! The fleet's configuration ([`crate::fleet`]): the global, group and device layers with their
//! history, device groups, rollback, and each device's desired against applied configuration.
//!
//! Editing a layer needs the admin role, but for its suppression rules (`detect.suppress`),
//! which analysts may edit too: an analyst's change that touches anything else is refused.

use super::{Admin, ApiJson, ApiPath, ApiQuery, ApiResult, ApiState, Problem, Role, Viewer};
use crate::fleet::{self, DeviceSync, Revision, SaveError, Scope};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// A new revision of a layer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRevision {
    /// Sections of the edge's configuration the hub sets: `capture` (by interface, `*` for
    /// every one: `rules`, `sample`), `detect` (`quiet_s`, `update_s`, `thresholds`,
    /// `suppress`), `store` (`max_size_mb`, `max_age_hours`, `evidence_max_packets`), `sync`
    /// (`metrics_interval_s`), `models` (`autoencoder`, `classifier`: the SHA-256 of a model
    /// uploaded to the hub, `""` for none).
    #[schema(value_type = Object)]
    pub document: Value,
    /// Why, for the history (at most 1000 characters).
    #[serde(default)]
    pub comment: String,
}

/// A layer: its newest revision (none yet: an empty document) and what it applies to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Layer {
    pub scope: String,
    pub target: String,
    pub current: Option<Revision>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// At most this many, newest first (default 50, at most 500).
    pub limit: Option<i64>,
}

/// A device id from the path: 400 unless it could be one (PostgreSQL text holds no NUL).
fn device_id(id: &str) -> ApiResult<()> {
    if firmware::proto::valid_device_id(id) {
        Ok(())
    } else {
        Err(Problem::bad("id", "1-64 of A-Z a-z 0-9 _ . -"))
    }
}

fn scope_of(kind: &str, target: String) -> ApiResult<Scope> {
    let valid = |t: &str| firmware::proto::valid_device_id(t);
    match kind {
        "global" => Ok(Scope::Global),
        "groups" if valid(&target) => Ok(Scope::Group(target)),
        "devices" if valid(&target) => Ok(Scope::Device(target)),
        "groups" | "devices" => Err(Problem::bad("target", "1-64 of A-Z a-z 0-9 _ . -")),
        _ => Err(Problem::not_found("layers are global, groups/{name} and devices/{id}")),
    }
}

async fn layer(s: &ApiState, scope: Scope) -> ApiResult<Json<Layer>> {
    let db = s.pool.get().await?;
    let current = fleet::current(&**db, &scope).await?;
    Ok(Json(Layer { scope: scope.kind().into(), target: scope.target().into(), current }))
}

/// Save a revision of a layer, as `caller` may.
async fn save(
    s: &ApiState,
    caller: &super::Caller,
    scope: Scope,
    req: NewRevision,
) -> ApiResult<(StatusCode, Json<Revision>)> {
    if req.comment.chars().count() > 1000 {
        return Err(Problem::bad("comment", "at most 1000 characters"));
    }
    let mut db = s.pool.get().await?;
    if caller.role < Role::Admin {
        // Analysts: the suppression rules and nothing else.
        let before = fleet::current(&**db, &scope).await?.map(|r| r.document).unwrap_or_default();
        let rest = |d: &Value| {
            let mut d = d.clone();
            if let Some(detect) = d.get_mut("detect").and_then(Value::as_object_mut) {
                detect.remove("suppress");
                if detect.is_empty() {
                    d.as_object_mut().map(|o| o.remove("detect"));
                }
            }
            fleet_doc_or_empty(d)
        };
        if rest(&before) != rest(&req.document) {
            return Err(Problem::forbidden(Role::Admin));
        }
    }
    let tx = db.transaction().await?;
    let rev = match fleet::save(&tx, &scope, &req.document, &caller.username, &req.comment).await {
        Ok(r) => r,
        Err(SaveError::Invalid(problems)) => {
            return Err(Problem::bad("document", problems.join("; ")));
        }
        Err(SaveError::NoTarget(what)) => return Err(Problem::not_found(what)),
        Err(SaveError::Db(e)) => return Err(e.into()),
    };
    tx.commit().await?;
    caller
        .audit(
            &db,
            "config_save",
            &scope.path(),
            serde_json::json!({"id": rev.id, "revision": rev.revision, "hash": rev.hash,
                               "comment": rev.comment}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(rev)))
}

/// `{}` for null or a missing document, so that "none yet" and "empty" compare equal.
fn fleet_doc_or_empty(d: Value) -> Value {
    if d.is_null() {
        Value::Object(Default::default())
    } else {
        d
    }
}

/// The global layer.
#[utoipa::path(get, path = "/fleet/config/global", tag = "fleet",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Layer), (status = 401, body = Problem)))]
pub async fn get_global(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Layer>> {
    layer(&s, Scope::Global).await
}

/// A group's or a device's layer (`kind`: groups or devices).
#[utoipa::path(get, path = "/fleet/config/{kind}/{target}", tag = "fleet",
    params(("kind" = String, Path), ("target" = String, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Layer), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_layer(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath((kind, target)): ApiPath<(String, String)>,
) -> ApiResult<Json<Layer>> {
    layer(&s, scope_of(&kind, target)?).await
}

/// Save a new revision of the global layer. Admins (analysts: its suppression rules only).
#[utoipa::path(put, path = "/fleet/config/global", tag = "fleet", request_body = NewRevision,
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 201, body = Revision), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn put_global(
    State(s): State<ApiState>,
    super::Authed(caller): super::Analyst,
    ApiJson(req): ApiJson<NewRevision>,
) -> ApiResult<(StatusCode, Json<Revision>)> {
    save(&s, &caller, Scope::Global, req).await
}

/// Save a new revision of a group's or a device's layer. Admins (analysts: its suppression
/// rules only).
#[utoipa::path(put, path = "/fleet/config/{kind}/{target}", tag = "fleet", request_body = NewRevision,
    params(("kind" = String, Path), ("target" = String, Path)),
    security(("session" = ["analyst"]), ("token" = ["analyst"])),
    responses((status = 201, body = Revision), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn put_layer(
    State(s): State<ApiState>,
    super::Authed(caller): super::Analyst,
    ApiPath((kind, target)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NewRevision>,
) -> ApiResult<(StatusCode, Json<Revision>)> {
    save(&s, &caller, scope_of(&kind, target)?, req).await
}

/// A layer's revisions, newest first (`kind`: global with target `-`, groups or devices).
#[utoipa::path(get, path = "/fleet/history/{kind}/{target}", tag = "fleet",
    params(("kind" = String, Path), ("target" = String, Path), HistoryQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<Revision>), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn history(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath((kind, target)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Vec<Revision>>> {
    let scope = scope_of(&kind, target)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad("limit", "1 to 500"));
    }
    let db = s.pool.get().await?;
    Ok(Json(fleet::history(&**db, &scope, limit).await?))
}

/// Roll a layer back: a new revision of it with revision `id`'s content. Admins.
#[utoipa::path(post, path = "/fleet/revisions/{id}/rollback", tag = "fleet", params(("id" = i64, Path)),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = Revision), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn rollback(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<Revision>)> {
    let found = {
        let db = s.pool.get().await?;
        fleet::revision(&**db, id).await?
    };
    let (scope, old) = found.ok_or_else(|| Problem::not_found(format!("no revision {id}")))?;
    let req = NewRevision {
        document: old.document,
        comment: format!("rollback to revision {} (id {id})", old.revision),
    };
    save(&s, &caller, scope, req).await
}

/// A device group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// 1-64 of A-Z a-z 0-9 _ . -
    pub name: String,
    #[serde(default)]
    pub comment: String,
}

/// The device groups.
#[utoipa::path(get, path = "/fleet/groups", tag = "fleet",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<Group>), (status = 401, body = Problem)))]
pub async fn groups(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<Group>>> {
    let db = s.pool.get().await?;
    let rows = db.query("SELECT name, comment FROM device_groups ORDER BY name", &[]).await?;
    Ok(Json(rows.iter().map(|r| Group { name: r.get(0), comment: r.get(1) }).collect()))
}

/// Add a device group. Admins.
#[utoipa::path(post, path = "/fleet/groups", tag = "fleet", request_body = Group,
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = Group), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_group(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    ApiJson(g): ApiJson<Group>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    if !firmware::proto::valid_device_id(&g.name) {
        return Err(Problem::bad("name", "1-64 of A-Z a-z 0-9 _ . -"));
    }
    if g.comment.chars().count() > 1000 {
        return Err(Problem::bad("comment", "at most 1000 characters"));
    }
    let db = s.pool.get().await?;
    let n = db
        .execute(
            "INSERT INTO device_groups (name, comment) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&g.name, &g.comment],
        )
        .await?;
    if n == 0 {
        return Err(Problem::conflict("name", format!("group {} exists", g.name)));
    }
    caller.audit(&db, "group_create", &format!("group/{}", g.name), serde_json::json!({})).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

/// A device's group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The group; null: none.
    pub group: Option<String>,
}

/// Put a device in a group (or in none). Admins.
#[utoipa::path(put, path = "/fleet/devices/{id}/group", tag = "fleet", request_body = Membership,
    params(("id" = String, Path)),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 200, body = DeviceSync), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn set_group(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(m): ApiJson<Membership>,
) -> ApiResult<Json<DeviceSync>> {
    device_id(&id)?;
    let mut db = s.pool.get().await?;
    let tx = db.transaction().await?;
    if let Some(g) = &m.group {
        if !firmware::proto::valid_device_id(g) {
            return Err(Problem::bad("group", "1-64 of A-Z a-z 0-9 _ . -"));
        }
        if tx.query_opt("SELECT 1 FROM device_groups WHERE name = $1", &[g]).await?.is_none() {
            return Err(Problem::bad("group", format!("no group {g:?}")));
        }
    }
    if tx.execute("UPDATE devices SET group_name = $2 WHERE id = $1", &[&id, &m.group]).await? == 0
    {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('tapwatch_fleet'))", &[]).await?;
    let problems = fleet::refresh(&*tx).await?;
    if let Some(p) = problems.iter().find(|p| p.starts_with(&format!("device {id}:"))) {
        return Err(Problem::bad("group", p.clone()));
    }
    tx.commit().await?;
    caller
        .audit(&db, "device_group", &format!("device/{id}"), serde_json::json!({"group": m.group}))
        .await?;
    let d = fleet::fleet(&**db, Some(&id)).await?;
    d.into_iter().next().map(Json).ok_or_else(|| Problem::not_found(format!("no device {id:?}")))
}

/// Every device's configuration: desired against applied (in_sync, pending, failed, offline).
#[utoipa::path(get, path = "/fleet", tag = "fleet",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<DeviceSync>), (status = 401, body = Problem)))]
pub async fn list(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<DeviceSync>>> {
    let db = s.pool.get().await?;
    Ok(Json(fleet::fleet(&**db, None).await?))
}

/// One device's configuration: its state and the merged document the hub wants it to run.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceConfig {
    #[serde(flatten)]
    pub sync: DeviceSync,
    #[schema(value_type = Object)]
    pub desired: Value,
    /// The layer revisions (ids) merged into it: global, group, device.
    pub layers: Vec<i64>,
}

/// One device's configuration.
#[utoipa::path(get, path = "/fleet/devices/{id}", tag = "fleet", params(("id" = String, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = DeviceConfig), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn device(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeviceConfig>> {
    device_id(&id)?;
    let db = s.pool.get().await?;
    let sync = fleet::fleet(&**db, Some(&id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
    let row =
        db.query_opt("SELECT desired, layers FROM device_config WHERE device = $1", &[&id]).await?;
    let (desired, layers) = row
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_else(|| (Value::Object(Default::default()), Vec::new()));
    Ok(Json(DeviceConfig { sync, desired, layers }))
}

/// A command for one edge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// `reload` (read its edge.toml again and lay the hub's configuration over it) or
    /// `retry_config` (try the hub's configuration that failed to apply again now).
    #[schema(value_type = String)]
    pub command: firmware::proto::Command,
}

/// Send a device a command (at once; not kept for an edge that is offline). Admins.
#[utoipa::path(post, path = "/fleet/devices/{id}/commands", tag = "fleet", params(("id" = String, Path)),
    request_body = NewCommand,
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 202, body = fleet::CommandRow), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn send_command(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NewCommand>,
) -> ApiResult<(StatusCode, Json<fleet::CommandRow>)> {
    device_id(&id)?;
    let db = s.pool.get().await?;
    let row = fleet::command(&**db, &id, req.command, &caller.username)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
    caller
        .audit(
            &db,
            "command",
            &format!("devices/{id}"),
            serde_json::json!({"id": row.id, "command": row.command}),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(row)))
}

/// A device's commands and their answers, newest first.
#[utoipa::path(get, path = "/fleet/devices/{id}/commands", tag = "fleet", params(("id" = String, Path), HistoryQuery),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<fleet::CommandRow>), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list_commands(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Vec<fleet::CommandRow>>> {
    device_id(&id)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad("limit", "1 to 500"));
    }
    let db = s.pool.get().await?;
    Ok(Json(fleet::commands(&**db, &id, limit).await?))
}
