//! Models for the edges ([`crate::models`]): upload (admins), list, and the files edges fetch.
//!
//! The file and fixture of a model are served without credentials, by the SHA-256 of the
//! model's file: edges have no API credentials, and what they fetch they check against the hash
//! and the signature in the configuration the hub sent them, so the transport is not trusted.
//! Knowing the hash (from a configuration or the dashboard) is what it takes to fetch one.

use super::{Admin, ApiPath, ApiResult, ApiState, Problem, Viewer};
use crate::models::{self, ModelInfo, MAX_FIXTURE_BYTES, MAX_MODEL_BYTES};
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The largest upload body: a model, a fixture and a comment.
pub const MAX_UPLOAD_BYTES: usize = MAX_MODEL_BYTES + MAX_FIXTURE_BYTES + 64 * 1024;

/// An upload, as multipart/form-data.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // for the OpenAPI document only
pub struct Upload {
    /// The ONNX file (made by `models/train.py`).
    #[schema(value_type = String, format = Binary)]
    model: Vec<u8>,
    /// Its fixture (`fixtures/<model>.json`: rows and the outputs they must give).
    #[schema(value_type = String, format = Binary)]
    fixture: Vec<u8>,
    /// Why, for the list (at most 1000 characters).
    comment: Option<String>,
}

/// The models uploaded, newest first.
#[utoipa::path(get, path = "/models", tag = "models",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = Vec<ModelInfo>), (status = 401, body = Problem)))]
pub async fn list(State(s): State<ApiState>, _: Viewer) -> ApiResult<Json<Vec<ModelInfo>>> {
    let db = s.pool.get().await?;
    Ok(Json(models::list(&**db).await?))
}

/// Upload a model and its fixture (multipart/form-data: `model`, `fixture`, `comment`). It is
/// checked as an edge checks it (metadata, features, its fixture's rows run) and kept; 200 if
/// the same file was uploaded before. Admins.
#[utoipa::path(post, path = "/models", tag = "models",
    request_body(content = Upload, content_type = "multipart/form-data"),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = ModelInfo), (status = 200, body = ModelInfo),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem)))]
pub async fn upload(
    State(s): State<ApiState>,
    super::Authed(caller): Admin,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<ModelInfo>)> {
    let (mut parts, comment) = super::upload_parts(multipart, &["model", "fixture"]).await?;
    let onnx =
        parts.remove("model").ok_or_else(|| Problem::bad("model", "missing: the ONNX file"))?;
    let fixture = parts
        .remove("fixture")
        .ok_or_else(|| Problem::bad("fixture", "missing: the model's fixture"))?;
    let (o, f) = (onnx.clone(), fixture.clone());
    let checked = tokio::task::spawn_blocking(move || models::check(&o, &f))
        .await
        .map_err(Problem::internal)?
        .map_err(|(field, why)| Problem::bad(field, why))?;
    let db = s.pool.get().await?;
    let new = models::save(&**db, &checked, &onnx, &fixture, &caller.username, &comment).await?;
    let info = models::get(&**db, &checked.sha256)
        .await?
        .ok_or_else(|| Problem::internal("a model saved is not there"))?;
    if new {
        caller
            .audit(
                &db,
                "model_upload",
                &format!("models/{}", info.sha256),
                serde_json::json!({"kind": info.kind, "name": info.name, "version": info.version,
                                   "comment": info.comment}),
            )
            .await?;
    }
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(info)))
}

/// One model.
#[utoipa::path(get, path = "/models/{sha256}", tag = "models", params(("sha256" = String, Path)),
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = ModelInfo), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_one(
    State(s): State<ApiState>,
    _: Viewer,
    ApiPath(sha): ApiPath<String>,
) -> ApiResult<Json<ModelInfo>> {
    super::sha256_param(&sha)?;
    let db = s.pool.get().await?;
    models::get(&**db, &sha).await?.map(Json).ok_or_else(|| Problem::not_found("no such model"))
}

async fn serve(s: &ApiState, sha: &str, fixture: bool) -> ApiResult<Response> {
    super::sha256_param(sha)?;
    let db = s.pool.get().await?;
    let bytes = models::bytes(&**db, sha, fixture)
        .await?
        .ok_or_else(|| Problem::not_found("no such model"))?;
    let (kind, name) = if fixture {
        ("application/json", format!("{sha}.fixture.json"))
    } else {
        ("application/octet-stream", format!("{sha}.onnx"))
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            // Content-addressed: never changes.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// A model's ONNX file, by its SHA-256 (what edges fetch; no credentials).
#[utoipa::path(get, path = "/models/{sha256}/file", tag = "models", params(("sha256" = String, Path)),
    security(()),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn file(State(s): State<ApiState>, ApiPath(sha): ApiPath<String>) -> ApiResult<Response> {
    serve(&s, &sha, false).await
}

/// A model's fixture, by the model's SHA-256 (what edges fetch; no credentials).
#[utoipa::path(get, path = "/models/{sha256}/fixture", tag = "models", params(("sha256" = String, Path)),
    security(()),
    responses((status = 200, content_type = "application/json", body = Object),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn fixture(
    State(s): State<ApiState>,
    ApiPath(sha): ApiPath<String>,
) -> ApiResult<Response> {
    serve(&s, &sha, true).await
}
