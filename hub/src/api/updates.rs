//! Updates of the edge program ([`crate::updates`]): upload (admins), list, and the bundle edges
//! fetch.
//!
//! A bundle is served without credentials, by its SHA-256: edges have no API credentials, and
//! they install only what has the hash the hub's signed configuration names and the release
//! key's signature, so the transport is not trusted.

use super::{Admin, ApiPath, ApiResult, ApiState, Problem, Viewer};
use crate::updates::{self, UpdateInfo, MAX_BUNDLE_BYTES};
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The largest upload body: a bundle and a comment.
pub const MAX_UPLOAD_BYTES: usize = MAX_BUNDLE_BYTES + 64 * 1024;

/// An upload, as multipart/form-data.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // for the OpenAPI document only
pub struct Upload {
    /// The bundle (`tapwatch-edge update pack`).
    #[schema(value_type = String, format = Binary)]
    bundle: Vec<u8>,
    /// Why, for the list (at most 1000 characters).
    comment: Option<String>,
}

/// The update bundles uploaded, newest first.
#[utoipa::path(get, path = "/updates", tag = "updates",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<UpdateInfo>), (status = 401, body = Problem)))]
pub async fn list(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<UpdateInfo>>> {
    let db = s.pool.get().await?;
    Ok(Json(updates::list(&**db).await?))
}

/// Upload an update bundle (multipart/form-data: `bundle`, `comment`). It is read as an edge
/// reads it (format, every file's size and hash, and the release key's signature when
/// `fleet.update_public_key` is set) and kept; 200 if the same bundle was uploaded before.
/// Name it in the fleet's configuration (`update`) to send it. Admins.
#[utoipa::path(post, path = "/updates", tag = "updates",
    request_body(content = Upload, content_type = "multipart/form-data"),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = UpdateInfo), (status = 200, body = UpdateInfo),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem)))]
pub async fn upload(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<UpdateInfo>)> {
    let (mut parts, comment) = super::upload_parts(multipart, &["bundle"]).await?;
    let bundle = parts
        .remove("bundle")
        .ok_or_else(|| Problem::bad("bundle", "missing: the update bundle"))?;
    let (b, key) = (bundle.clone(), s.update_key.clone());
    let checked =
        tokio::task::spawn_blocking(move || updates::check(&b, (!key.is_empty()).then_some(&*key)))
            .await
            .map_err(Problem::internal)?
            .map_err(|why| Problem::bad("bundle", why))?;
    let db = s.pool.get().await?;
    let new = updates::save(&**db, &checked, &bundle, &caller.username, &comment).await?;
    let info = updates::get(&**db, &checked.sha256)
        .await?
        .ok_or_else(|| Problem::internal("an update saved is not there"))?;
    if new {
        caller
            .audit(
                &db,
                "update_upload",
                &format!("updates/{}", info.sha256),
                serde_json::json!({"version": info.version, "arch": info.arch,
                                   "comment": info.comment}),
            )
            .await?;
    }
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(info)))
}

/// One update bundle.
#[utoipa::path(get, path = "/updates/{sha256}", tag = "updates", params(("sha256" = String, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = UpdateInfo), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_one(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(sha): ApiPath<String>,
) -> ApiResult<Json<UpdateInfo>> {
    super::sha256_param(&sha)?;
    let db = s.pool.get().await?;
    updates::get(&**db, &sha).await?.map(Json).ok_or_else(|| Problem::not_found("no such update"))
}

/// An update bundle's file, by its SHA-256 (what edges fetch; no credentials).
#[utoipa::path(get, path = "/updates/{sha256}/file", tag = "updates", params(("sha256" = String, Path)),
    security(()),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn file(State(s): State<ApiState>, ApiPath(sha): ApiPath<String>) -> ApiResult<Response> {
    super::sha256_param(&sha)?;
    let db = s.pool.get().await?;
    let bytes =
        updates::bytes(&**db, &sha).await?.ok_or_else(|| Problem::not_found("no such update"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{sha}.twu\"")),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable".to_string()),
        ],
        bytes,
    )
        .into_response())
}
