//! The API for people and programs, under `/api/v1`: devices, traffic statistics, flows,
//! anomalies, analyses, suppression rules, the fleet's configuration and models, users and
//! tokens, the audit log, and live push.
//!
//! Every handler is annotated for utoipa; [`router`] collects them with utoipa-axum, so the
//! OpenAPI document served at `/api/v1/openapi.json` is the routes that exist. Each operation's
//! `security` names the least role it needs (a scope of `session` and `token`); the route sweep
//! test holds every route to that.
//!
//! Errors are RFC 9457 problem documents ([`Problem`]): 4xx name the field at fault, 5xx say
//! only that the hub failed (the cause goes to the log, not to the caller).

pub mod anomalies;
pub mod auth;
pub mod data;
pub mod fleet;
pub mod live;
pub mod models;
pub mod updates;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{Admin, Analyst, Authed, Caller, Role, Viewer};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub pool: deadpool_postgres::Pool,
    pub auth: Arc<auth::AuthConfig>,
    pub limiter: Arc<auth::LoginLimiter>,
    pub live: live::Live,
    pub counters: Arc<ApiCounters>,
    /// `fleet.update_public_key`: uploaded update bundles must be signed by it (empty: not
    /// checked here; the edges check).
    pub update_key: Arc<str>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// Counted for `/metrics`.
#[derive(Debug, Default)]
pub struct ApiCounters {
    pub logins_ok: std::sync::atomic::AtomicU64,
    pub logins_failed: std::sync::atomic::AtomicU64,
    pub logins_limited: std::sync::atomic::AtomicU64,
    pub server_errors: std::sync::atomic::AtomicU64,
    pub live_clients: std::sync::atomic::AtomicU64,
    pub live_lagged: std::sync::atomic::AtomicU64,
    /// Live connections closed because their session or token ended.
    pub live_revoked: std::sync::atomic::AtomicU64,
    /// Requests whose handler panicked (answered 500; the hub goes on).
    pub panics: std::sync::atomic::AtomicU64,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before trying again (429).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after_s: None,
        }
    }
    pub fn bad(field: &str, detail: impl Into<String>) -> Problem {
        Problem { field: Some(field.to_string()), ..Problem::new(StatusCode::BAD_REQUEST, detail) }
    }
    pub fn not_found(what: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, what)
    }
    pub fn conflict(field: &str, detail: impl Into<String>) -> Problem {
        Problem { field: Some(field.to_string()), ..Problem::new(StatusCode::CONFLICT, detail) }
    }
    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "log in, or send an API token as `Authorization: Bearer`",
        )
    }
    pub fn forbidden(need: Role) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, format!("this needs the {} role", need.name()))
    }
    /// A failure of the hub itself: logged here, and the caller learns nothing of its cause.
    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!("api: {e}");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the hub could not serve this request")
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(e: tokio_postgres::Error) -> Problem {
        Problem::internal(format!("postgres: {e}"))
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(e: deadpool_postgres::PoolError) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable");
        tracing::warn!("api: database pool: {e}");
        p.retry_after_s = Some(1);
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, [(header::CONTENT_TYPE, "application/problem+json")], Json(&self))
            .into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = header::HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

pub type ApiResult<T> = Result<T, Problem>;

/// The query string, deserialized; a bad one is a 400 naming the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let q = parts.uri.query().unwrap_or_default();
        // PostgreSQL text cannot hold NUL: refuse it here, naming the parameter.
        if let Some((k, _)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(Problem::bad(&k, format!("query parameter {k}: NUL is not allowed")));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde_urlencoded names a missing field in its message, not in the path.
            let field = if field == "." {
                inner.split('`').nth(1).unwrap_or("query").to_string()
            } else {
                field
            };
            Problem::bad(&field, format!("query parameter {field}: {inner}"))
        })
    }
}

/// A JSON body, deserialized; a bad one is a 400 naming the field (or 415 when it is not JSON).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json");
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the body: {e}"))
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::bad("body", format!("body: not JSON: {e}")))?;
        // PostgreSQL text cannot hold NUL: refuse it here, naming the field.
        if let Some(field) = nul_in(&value, "") {
            return Err(Problem::bad(&field, format!("{field}: NUL is not allowed")));
        }
        serde_path_to_error::deserialize(value).map(ApiJson).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "body".to_string() } else { field };
            Problem::bad(&field, format!("{field}: {}", e.into_inner()))
        })
    }
}

/// The path of the first string (or key) holding NUL.
fn nul_in(v: &serde_json::Value, at: &str) -> Option<String> {
    let here = || if at.is_empty() { "body".to_string() } else { at.to_string() };
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(here()),
        serde_json::Value::Array(a) => {
            a.iter().enumerate().find_map(|(i, x)| nul_in(x, &format!("{}[{i}]", here())))
        }
        serde_json::Value::Object(o) => o.iter().find_map(|(k, x)| {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            if k.contains('\0') {
                Some(here())
            } else {
                nul_in(x, &path)
            }
        }),
        _ => None,
    }
}

/// A time in RFC 3339, as the API reads and writes it: between 1970 and 2100 (the contract's
/// range), in UTC.
///
/// The range is checked here, where the time enters: a valid RFC 3339 time such as
/// `9999-12-31T23:59:59-23:59` is year 10000 in UTC, which the time crate cannot hold and
/// postgres-types panicked on while binding it.
pub fn parse_time(field: &str, s: &str) -> ApiResult<OffsetDateTime> {
    let t =
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
            Problem::bad(field, format!("{field}: {e} (want RFC 3339, e.g. 2026-11-28T12:00:00Z)"))
        })?;
    time_of_us(field, t.unix_timestamp_nanos() / 1000)
}

/// A time from Unix microseconds (as cursors carry them), between 1970 and 2100, in UTC.
pub fn time_of_us(field: &str, us: i128) -> ApiResult<OffsetDateTime> {
    let out = || Problem::bad(field, format!("{field}: not a time between 1970 and 2100"));
    if !(0..=i128::from(crate::contract::MAX_TIME_US)).contains(&us) {
        return Err(out());
    }
    OffsetDateTime::from_unix_timestamp_nanos(us * 1000).map_err(|_| out())
}

/// A `from`/`to` range: `to` defaults to now and `from` to `default_span` before `to`; at most
/// `max_span` long.
pub fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    default_span: time::Duration,
    max_span: time::Duration,
) -> ApiResult<(OffsetDateTime, OffsetDateTime)> {
    let to = match to {
        Some(s) => parse_time("to", s)?,
        None => OffsetDateTime::now_utc(),
    };
    let from = match from {
        Some(s) => parse_time("from", s)?,
        None => to - default_span,
    };
    if from >= to {
        return Err(Problem::bad("from", "from must be before to"));
    }
    if to - from > max_span {
        return Err(Problem::bad(
            "from",
            format!("the range is at most {} days", max_span.whole_days()),
        ));
    }
    Ok((from, to))
}

/// Serde for `OffsetDateTime` fields in responses.
pub use time::serde::rfc3339;

/// A SHA-256 in a path (a model's, an update's): 64 lower-case hex digits.
fn sha256_param(sha: &str) -> ApiResult<()> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Problem::bad("sha256", "64 hex digits, lower case"))
    }
}

/// The parts of a multipart/form-data upload: each of `files` by name (the last if sent twice)
/// and `comment` (UTF-8, at most 1000 characters; "" if not sent). Any other part is refused,
/// naming the parts there are.
async fn upload_parts(
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
    files: &[&str],
) -> ApiResult<(std::collections::HashMap<String, axum::body::Bytes>, String)> {
    let mut multipart = multipart.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let (mut parts, mut comment) = (std::collections::HashMap::new(), String::new());
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(Problem::new(e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| Problem::new(e.status(), e.body_text()))?;
        if name == "comment" {
            comment = String::from_utf8(bytes.to_vec())
                .map_err(|_| Problem::bad("comment", "not UTF-8"))?;
            if comment.chars().count() > 1000 {
                return Err(Problem::bad("comment", "at most 1000 characters"));
            }
        } else if files.contains(&name.as_str()) {
            parts.insert(name, bytes);
        } else {
            return Err(Problem::bad(
                "multipart",
                format!("unknown part {name:?}: the parts are {} and comment", files.join(", ")),
            ));
        }
    }
    Ok((parts, comment))
}

/// The OpenAPI document's frame: title, security schemes, tags. The paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tapwatch hub API",
        description = "Statistics, flows, anomalies, analyses, devices, suppression rules, users \
                       and tokens of a Tapwatch hub. Every operation needs a session cookie (from \
                       POST /api/v1/auth/login) or an API token (Authorization: Bearer); its \
                       security scope names the least role it needs: viewer < analyst < admin. \
                       Changes made with the cookie must carry X-CSRF-Token."
    ),
    modifiers(&SecurityAddon),
    components(schemas(data::Kind, anomalies::Severity, anomalies::AnomalyState)),
    tags(
        (name = "auth"), (name = "devices"), (name = "statistics"), (name = "flows"),
        (name = "anomalies"), (name = "analyses"), (name = "suppressions"), (name = "fleet"),
        (name = "models"), (name = "updates"), (name = "admin"), (name = "live")
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every operation's error responses, the same way everywhere: each is a [`Problem`] as
/// `application/problem+json`; a secured operation may answer 401, 403 and 503 (database away),
/// one with parameters or a body 400, one with a body 415 and 413.
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    let generic = [
        ("400", "Bad input: `field` names what is wrong"),
        ("401", "No valid session cookie or token"),
        ("403", "The caller's role may not do this, or a cookie change lacks X-CSRF-Token"),
        ("404", "No such thing"),
        ("409", "Conflicts with what exists"),
        ("413", "The body is too large"),
        ("415", "The body is not JSON"),
        ("426", "Not a WebSocket upgrade"),
        ("429", "Too many attempts: wait Retry-After seconds"),
        ("503", "The database is unavailable: try again"),
    ];
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for op in ops.into_iter().flatten() {
            let secured = op.security.as_ref().is_some_and(|s| {
                serde_json::to_value(s).is_ok_and(|v| v != serde_json::json!([{}]))
            });
            let mut codes: Vec<&str> = Vec::new();
            if secured {
                codes.extend(["401", "403", "503"]);
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some() {
                codes.push("400");
            }
            if op.request_body.is_some() {
                codes.extend(["400", "413", "415", "503"]);
            }
            let responses = &mut op.responses.responses;
            for code in codes {
                responses.entry(code.to_string()).or_insert_with(|| problem(""));
            }
            for (code, r) in responses.iter_mut() {
                if code.starts_with('4') || code.starts_with('5') {
                    let text = generic.iter().find(|g| g.0 == code).map_or("", |g| g.1);
                    let old = match r {
                        RefOr::T(r) if !r.description.is_empty() => r.description.clone(),
                        _ => text.to_string(),
                    };
                    *r = problem(&old);
                }
            }
        }
    }
}

/// The `/api/v1` router and its OpenAPI document.
pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let counters = state.counters.clone();
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::list_users, auth::create_user))
        .routes(routes!(auth::update_user, auth::delete_user))
        .routes(routes!(auth::list_tokens, auth::create_token))
        .routes(routes!(auth::delete_token))
        .routes(routes!(auth::audit_log))
        .routes(routes!(data::devices))
        .routes(routes!(data::device))
        .routes(routes!(data::device_metrics))
        .routes(routes!(data::stats))
        .routes(routes!(data::flows))
        .routes(routes!(data::analyses))
        .routes(routes!(anomalies::list))
        .routes(routes!(anomalies::get_one, anomalies::update))
        .routes(routes!(anomalies::add_note))
        .routes(routes!(anomalies::evidence))
        .routes(routes!(anomalies::list_rules, anomalies::create_rule))
        .routes(routes!(anomalies::delete_rule))
        .routes(routes!(fleet::list))
        .routes(routes!(fleet::get_global, fleet::put_global))
        .routes(routes!(fleet::get_layer, fleet::put_layer))
        .routes(routes!(fleet::history))
        .routes(routes!(fleet::rollback))
        .routes(routes!(fleet::groups, fleet::create_group))
        .routes(routes!(fleet::set_group))
        .routes(routes!(fleet::device))
        .routes(routes!(fleet::list_commands, fleet::send_command))
        .merge(
            // An upload is a model and its fixture: more than the default 2 MB body.
            OpenApiRouter::new()
                .routes(routes!(models::list, models::upload))
                .layer(axum::extract::DefaultBodyLimit::max(models::MAX_UPLOAD_BYTES)),
        )
        .routes(routes!(models::get_one))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(updates::list, updates::upload))
                .layer(axum::extract::DefaultBodyLimit::max(updates::MAX_UPLOAD_BYTES)),
        )
        .routes(routes!(updates::get_one))
        .routes(routes!(updates::file))
        .routes(routes!(models::file))
        .routes(routes!(models::fixture))
        .routes(routes!(live::live))
        .with_state(state)
        .split_for_parts();
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(p, item)| (format!("/api/v1{p}"), item))
        .collect();
    document_problems(&mut doc);
    let served = doc.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let d = served.clone();
                async move { Json(d) }
            }),
        )
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(catch_panic(counters));
    (axum::Router::new().nest("/api/v1", router), doc)
}

/// A panic in a handler becomes a 500 problem, logged and counted; the hub goes on serving.
fn catch_panic(
    counters: Arc<ApiCounters>,
) -> tower_http::catch_panic::CatchPanicLayer<
    impl Fn(Box<dyn std::any::Any + Send>) -> Response + Clone,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(move |panic: Box<dyn std::any::Any + Send>| {
        counters.panics.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Problem::internal(format!("a handler panicked: {what}")).into_response()
    })
}

/// A path parameter; a bad one is a 400 naming it.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct ApiPath<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for Problem {
    fn from(e: axum::extract::rejection::PathRejection) -> Problem {
        Problem::bad("id", format!("path: {}", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A handler that panics gets a 500 problem and a count; the router serves the next request.
    #[tokio::test]
    async fn test_a_panic_is_a_500_not_the_end() {
        let counters = Arc::new(ApiCounters::default());
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a bug in a handler");
                    }
                    "never"
                }),
            )
            .route("/fine", axum::routing::get(|| async { "ok" }))
            .layer(catch_panic(counters.clone()));
        let get = |uri: &str| {
            axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap_or_default()
        };
        let r = app.clone().oneshot(get("/boom")).await.unwrap_or_default();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(counters.panics.load(std::sync::atomic::Ordering::Relaxed), 1);
        let r = app.oneshot(get("/fine")).await.unwrap_or_default();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
