//! Who is calling, and may they: users with roles, browser sessions, API tokens, login with a
//! rate limit, and the audit log.
//!
//! - Passwords are argon2id hashes (PHC strings). Session cookies and API tokens are 32 random
//!   bytes; only their SHA-256 is stored, so a copy of the database opens no session.
//! - The session cookie is HttpOnly and SameSite=Strict; a change made with it must also carry
//!   the session's CSRF token in `X-CSRF-Token` (a token sent as `Authorization: Bearer` needs
//!   none: browsers never attach it on their own).
//! - Roles are ordered: viewer < analyst < admin. Handlers call [`Caller::require`].
//! - Login attempts are limited per user name and client address, per address, and for all
//!   ([`LoginLimiter`]); the address is the peer's, or `X-Forwarded-For`'s from a trusted proxy.
//!   A failed attempt is audited like a successful one.

use super::{ApiJson, ApiPath, ApiQuery, ApiResult, ApiState, Problem};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

pub const SESSION_COOKIE: &str = "tapwatch_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A role; the order is the order of power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Analyst,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Analyst, Role::Admin].into_iter().find(|r| r.name() == s)
    }
}

/// Session and login settings (from `[http]`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub session_hours: u32,
    pub cookie_secure: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<cidr::IpCidr>,
}

impl AuthConfig {
    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (walking from the right,
    /// since the left of the header is whatever the client wrote).
    pub fn client_ip(
        &self,
        peer: Option<IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Option<IpAddr> {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        let mut ip = peer?;
        if !trusted(&ip) {
            return Some(ip);
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(next) => {
                    ip = next;
                    if !trusted(&ip) {
                        break;
                    }
                }
                // A hop that is not an address: the proxy's view ends here.
                Err(_) => break,
            }
        }
        Some(ip)
    }
}

/// Login attempts allowed per minute: `per_minute` for one user name from one address, five
/// times that from one address whatever the names (spraying), and a ceiling for everyone
/// together (each attempt costs an argon2 hash). No bucket is shared by every address for one
/// name, so failing attempts from elsewhere cannot lock the owner out.
#[derive(Debug)]
pub struct LoginLimiter {
    by_pair: DefaultKeyedRateLimiter<(Option<IpAddr>, String)>,
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    global: governor::DefaultDirectRateLimiter,
}

impl LoginLimiter {
    pub fn new(per_minute: u32, global_per_minute: u32) -> LoginLimiter {
        let quota =
            |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        LoginLimiter {
            by_pair: DefaultKeyedRateLimiter::keyed(quota(per_minute)),
            by_ip: DefaultKeyedRateLimiter::keyed(quota(per_minute.saturating_mul(5))),
            global: governor::RateLimiter::direct(quota(global_per_minute)),
        }
    }
    /// Ok, or the seconds to wait.
    fn check(&self, ip: Option<IpAddr>, user: &str) -> Result<(), u64> {
        let now = DefaultClock::default().now();
        let wait = |d: std::time::Duration| d.as_secs().max(1);
        self.by_pair
            .check_key(&(ip, user.to_lowercase()))
            .map_err(|n| wait(n.wait_time_from(now)))?;
        if let Some(ip) = ip {
            self.by_ip.check_key(&ip).map_err(|n| wait(n.wait_time_from(now)))?;
        }
        self.global.check().map_err(|n| wait(n.wait_time_from(now)))?;
        if self.by_pair.len() > 10_000 {
            self.by_pair.retain_recent();
            self.by_ip.retain_recent();
        }
        Ok(())
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session, by the SHA-256 of its cookie (as `sessions` keeps it).
    Session {
        csrf: String,
        secret_hash: Vec<u8>,
    },
    Token {
        id: i64,
    },
}

impl Caller {
    /// Whether the credential this caller came with still holds: the session or token exists,
    /// has not expired, and its user is not disabled. What an open WebSocket checks again and
    /// again, since it outlives the request that opened it.
    pub async fn still_valid(
        &self,
        db: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = match &self.via {
            Via::Session { secret_hash, .. } => {
                db.query_opt(
                    "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.secret_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
                    &[secret_hash],
                )
                .await?
            }
            Via::Token { id } => {
                db.query_opt(
                    "SELECT 1 FROM api_tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.id = $1 AND NOT u.disabled
                       AND (t.expires_at IS NULL OR t.expires_at > now())",
                    &[id],
                )
                .await?
            }
        };
        Ok(row.is_some())
    }
}

/// The authenticated caller. Extracting it is what makes a route need credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub via: Via,
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// 403 unless the caller's role is `need` or above.
    pub fn require(&self, need: Role) -> ApiResult<()> {
        if self.role >= need {
            Ok(())
        } else {
            Err(Problem::forbidden(need))
        }
    }
}

fn client_ip(parts: &Parts, auth: &AuthConfig) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    auth.client_ip(peer, &parts.headers)
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let ip = client_ip(parts, &state.auth);
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let db = state.pool.get().await?;
        if let Some(token) = bearer {
            let row = db
                .query_opt(
                    // last_used is written at most once a minute, not on every request.
                    "WITH t AS (
                       SELECT t.id, u.id AS user_id, u.username, u.role, t.last_used
                       FROM api_tokens t JOIN users u ON u.id = t.user_id
                       WHERE t.secret_hash = $1 AND NOT u.disabled
                         AND (t.expires_at IS NULL OR t.expires_at > now())),
                     touched AS (
                       UPDATE api_tokens SET last_used = now()
                       WHERE id = (SELECT id FROM t)
                         AND (last_used IS NULL OR last_used < now() - interval '1 minute'))
                     SELECT id, user_id, username, role FROM t",
                    &[&hash_secret(token)],
                )
                .await?;
            let Some(row) = row else { return Err(Problem::unauthorized()) };
            return Ok(Caller {
                user_id: row.get(1),
                username: row.get(2),
                role: Role::parse(row.get(3)).unwrap_or(Role::Viewer),
                via: Via::Token { id: row.get(0) },
                ip,
            });
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(SESSION_COOKIE) else { return Err(Problem::unauthorized()) };
        let secret_hash = hash_secret(cookie.value());
        let row = db
            .query_opt(
                "SELECT u.id, u.username, u.role, s.csrf FROM sessions s
                 JOIN users u ON u.id = s.user_id
                 WHERE s.secret_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
                &[&secret_hash],
            )
            .await?;
        let Some(row) = row else { return Err(Problem::unauthorized()) };
        let csrf: String = row.get(3);
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let sent = parts.headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(sent, csrf.as_bytes())) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "a change made with the session cookie needs its X-CSRF-Token header",
                ));
            }
        }
        Ok(Caller {
            user_id: row.get(0),
            username: row.get(1),
            role: Role::parse(row.get(2)).unwrap_or(Role::Viewer),
            via: Via::Session { csrf, secret_hash },
            ip,
        })
    }
}

/// A caller with at least role `R` (0 viewer, 1 analyst, 2 admin): extracted before any body,
/// so a caller without the role gets 403 whatever they sent. Use [`Viewer`], [`Analyst`],
/// [`Admin`].
#[derive(Debug, Clone)]
pub struct Authed<const R: u8>(pub Caller);

pub type Viewer = Authed<0>;
pub type Analyst = Authed<1>;
pub type Admin = Authed<2>;

impl<const R: u8> FromRequestParts<ApiState> for Authed<R> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let need = match R {
            0 => Role::Viewer,
            1 => Role::Analyst,
            _ => Role::Admin,
        };
        caller.require(need)?;
        Ok(Authed(caller))
    }
}

/// Write one audit-log row.
pub async fn audit(
    db: &tokio_postgres::Client,
    user_id: Option<i64>,
    actor: &str,
    ip: Option<IpAddr>,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO audit_log (user_id, actor, action, target, detail, ip)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&user_id, &actor, &action, &target, &detail, &ip],
    )
    .await
    .map(|_| ())
}

impl Caller {
    pub async fn audit(
        &self,
        db: &tokio_postgres::Client,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> ApiResult<()> {
        audit(db, Some(self.user_id), &self.username, self.ip, action, target, detail).await?;
        Ok(())
    }
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Checks a new user name and password; the problem names the field.
pub fn check_credentials(username: Option<&str>, password: Option<&str>) -> ApiResult<()> {
    if let Some(u) = username {
        if u.is_empty()
            || u.len() > 64
            || !u.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(Problem::bad("username", "1 to 64 of A-Z a-z 0-9 . _ - @"));
        }
    }
    if let Some(p) = password {
        if !(10..=1024).contains(&p.chars().count()) {
            return Err(Problem::bad("password", "10 to 1024 characters"));
        }
    }
    Ok(())
}

/// Add a user (the command line's `user add`, the environment's first admin, and the API).
pub async fn add_user(
    db: &tokio_postgres::Client,
    username: &str,
    password: &str,
    role: Role,
) -> ApiResult<i64> {
    check_credentials(Some(username), Some(password))?;
    let p = password.to_string();
    let phc = tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .map_err(Problem::internal)?
        .map_err(Problem::internal)?;
    let row = db
        .query_opt(
            "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
             ON CONFLICT (username) DO NOTHING RETURNING id",
            &[&username, &phc, &role.name()],
        )
        .await?;
    row.map(|r| r.get(0))
        .ok_or_else(|| Problem::conflict("username", format!("{username:?} exists already")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub username: String,
    pub role: Role,
    /// Send in `X-CSRF-Token` with every change made with the session cookie; absent for a
    /// token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// Log in: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    security(()),
    responses(
        (status = 200, description = "Logged in; the session cookie is set", body = SessionInfo),
        (status = 400, body = Problem), (status = 401, description = "Wrong user name or password", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem)))]
pub async fn login(
    State(s): State<ApiState>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
    jar: CookieJar,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<(CookieJar, Json<SessionInfo>)> {
    let ip = s.auth.client_ip(connect.map(|c| c.0 .0.ip()), &headers);
    if req.username.len() > 256 {
        return Err(Problem::bad("username", "at most 256 bytes"));
    }
    if req.password.len() > 1024 {
        return Err(Problem::bad("password", "at most 1024 bytes"));
    }
    if let Err(wait) = s.limiter.check(ip, &req.username) {
        s.counters.logins_limited.fetch_add(1, Ordering::Relaxed);
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many login attempts");
        p.retry_after_s = Some(wait);
        return Err(p);
    }
    let db = s.pool.get().await?;
    let row = db
        .query_opt(
            "SELECT id, password_hash, role FROM users WHERE username = $1 AND NOT disabled",
            &[&req.username],
        )
        .await?;
    // A missing user costs the same hash as a wrong password.
    let phc = row.as_ref().map(|r| r.get::<_, String>(1)).unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = req.password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(Problem::internal)?;
    let Some(row) = row.filter(|_| ok) else {
        s.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
        audit(&db, None, &req.username, ip, "login_failed", "session", serde_json::json!({}))
            .await?;
        return Err(Problem::new(StatusCode::UNAUTHORIZED, "wrong user name or password"));
    };
    let user_id: i64 = row.get(0);
    let role = Role::parse(row.get(2)).unwrap_or(Role::Viewer);
    let secret = new_secret();
    let csrf = new_secret();
    db.execute(
        "INSERT INTO sessions (secret_hash, user_id, csrf, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        &[&hash_secret(&secret), &user_id, &csrf, &(s.auth.session_hours as i32)],
    )
    .await?;
    db.execute("DELETE FROM sessions WHERE expires_at < now()", &[]).await?;
    audit(&db, Some(user_id), &req.username, ip, "login", "session", serde_json::json!({})).await?;
    s.counters.logins_ok.fetch_add(1, Ordering::Relaxed);
    let cookie = Cookie::build((SESSION_COOKIE, secret))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(s.auth.cookie_secure)
        .path("/")
        .max_age(time::Duration::hours(i64::from(s.auth.session_hours)))
        .build();
    Ok((
        jar.add(cookie),
        Json(SessionInfo { username: req.username, role, csrf_token: Some(csrf) }),
    ))
}

/// An argon2id hash of a random password, verified against when the user does not exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&new_secret()).unwrap_or_default());

/// Log out: ends the session (a token is revoked with DELETE /tokens/{id} instead).
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 204, description = "Logged out"), (status = 401, body = Problem)))]
pub async fn logout(
    State(s): State<ApiState>,
    caller: Caller,
    jar: CookieJar,
) -> ApiResult<impl IntoResponse> {
    if let (Via::Session { .. }, Some(c)) = (&caller.via, jar.get(SESSION_COOKIE)) {
        let db = s.pool.get().await?;
        db.execute("DELETE FROM sessions WHERE secret_hash = $1", &[&hash_secret(c.value())])
            .await?;
        caller.audit(&db, "logout", "session", serde_json::json!({})).await?;
    }
    let gone = Cookie::build((SESSION_COOKIE, "")).path("/").build();
    Ok((jar.remove(gone), StatusCode::NO_CONTENT))
}

/// Who the caller is.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    security(("session" = ["viewer"]), ("token" = ["viewer"])),
    responses((status = 200, body = SessionInfo), (status = 401, body = Problem)))]
pub async fn me(caller: Caller) -> Json<SessionInfo> {
    let csrf_token = match caller.via {
        Via::Session { csrf, .. } => Some(csrf),
        Via::Token { .. } => None,
    };
    Json(SessionInfo { username: caller.username, role: caller.role, csrf_token })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

fn user_of(r: &tokio_postgres::Row) -> User {
    User {
        id: r.get("id"),
        username: r.get("username"),
        role: Role::parse(r.get("role")).unwrap_or(Role::Viewer),
        disabled: r.get("disabled"),
        created_at: r.get("created_at"),
    }
}

/// Users (admin).
#[utoipa::path(get, path = "/users", tag = "admin",
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 200, body = Vec<User>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_users(State(s): State<ApiState>, _: Admin) -> ApiResult<Json<Vec<User>>> {
    let db = s.pool.get().await?;
    let rows = db
        .query("SELECT id, username, role, disabled, created_at FROM users ORDER BY id", &[])
        .await?;
    Ok(Json(rows.iter().map(user_of).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub username: String,
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
    pub role: Role,
}

/// Add a user (admin).
#[utoipa::path(post, path = "/users", tag = "admin", request_body = NewUser,
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = User), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_user(
    State(s): State<ApiState>,
    Authed(caller): Admin,
    ApiJson(req): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let db = s.pool.get().await?;
    let id = add_user(&db, &req.username, &req.password, req.role).await?;
    caller
        .audit(
            &db,
            "user_create",
            &format!("user/{id}"),
            serde_json::json!({"username": req.username, "role": req.role}),
        )
        .await?;
    let row = db
        .query_one(
            "SELECT id, username, role, disabled, created_at FROM users WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user_of(&row))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub role: Option<Role>,
    #[schema(min_length = 10, max_length = 1024)]
    pub password: Option<String>,
    pub disabled: Option<bool>,
}

/// Change a user's role, password or disabled state (admin). A new password or disabling ends
/// the user's sessions (and open live connections); a new password also revokes the user's API
/// tokens. The last enabled admin cannot be demoted or disabled.
#[utoipa::path(patch, path = "/users/{id}", tag = "admin", request_body = UserChange,
    params(("id" = i64, Path)),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 200, body = User), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn update_user(
    State(s): State<ApiState>,
    Authed(caller): Admin,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UserChange>,
) -> ApiResult<Json<User>> {
    check_credentials(None, req.password.as_deref())?;
    let phc = match req.password.clone() {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || hash_password(&p))
                .await
                .map_err(Problem::internal)?
                .map_err(Problem::internal)?,
        ),
        None => None,
    };
    let mut db = s.pool.get().await?;
    let tx = db.transaction().await?;
    // Serialise changes to admins, so two demotions cannot both pass the last-admin check.
    tx.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE", &[]).await?;
    let Some(old) = tx
        .query_opt(
            "SELECT id, username, role, disabled, created_at FROM users WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Err(Problem::not_found(format!("no user {id}")));
    };
    let old = user_of(&old);
    let role = req.role.unwrap_or(old.role);
    let disabled = req.disabled.unwrap_or(old.disabled);
    if old.role == Role::Admin && !old.disabled && (role != Role::Admin || disabled) {
        let admins: i64 = tx
            .query_one("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled", &[])
            .await?
            .get(0);
        if admins <= 1 {
            return Err(Problem::conflict(
                "role",
                "the last enabled admin cannot be demoted or disabled",
            ));
        }
    }
    let row = tx
        .query_one(
            "UPDATE users SET role = $2, disabled = $3, password_hash = coalesce($4, password_hash)
             WHERE id = $1 RETURNING id, username, role, disabled, created_at",
            &[&id, &role.name(), &disabled, &phc],
        )
        .await?;
    if phc.is_some() || disabled {
        tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&id]).await?;
    }
    // A new password is what one sets after a credential leaked: the user's API tokens go too
    // (they were made under the old one), as their sessions do.
    let tokens_revoked = if phc.is_some() {
        tx.execute("DELETE FROM api_tokens WHERE user_id = $1", &[&id]).await?
    } else {
        0
    };
    tx.commit().await?;
    caller
        .audit(
            &db,
            "user_update",
            &format!("user/{id}"),
            serde_json::json!({"role": req.role, "disabled": req.disabled,
                "password_changed": req.password.is_some(), "tokens_revoked": tokens_revoked}),
        )
        .await?;
    Ok(Json(user_of(&row)))
}

/// Remove a user, with their sessions and tokens (admin); not the last enabled admin.
#[utoipa::path(delete, path = "/users/{id}", tag = "admin", params(("id" = i64, Path)),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 204, description = "Removed"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_user(
    State(s): State<ApiState>,
    Authed(caller): Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let mut db = s.pool.get().await?;
    let tx = db.transaction().await?;
    tx.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE", &[]).await?;
    let Some(row) =
        tx.query_opt("SELECT role, disabled, username FROM users WHERE id = $1", &[&id]).await?
    else {
        return Err(Problem::not_found(format!("no user {id}")));
    };
    if row.get::<_, &str>(0) == "admin" && !row.get::<_, bool>(1) {
        let admins: i64 = tx
            .query_one("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled", &[])
            .await?
            .get(0);
        if admins <= 1 {
            return Err(Problem::conflict("id", "the last enabled admin cannot be removed"));
        }
    }
    let username: String = row.get(2);
    tx.execute("DELETE FROM users WHERE id = $1", &[&id]).await?;
    tx.commit().await?;
    caller
        .audit(&db, "user_delete", &format!("user/{id}"), serde_json::json!({"username": username}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub username: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used: Option<OffsetDateTime>,
}

fn token_of(r: &tokio_postgres::Row) -> Token {
    Token {
        id: r.get("id"),
        name: r.get("name"),
        username: r.get("username"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used: r.get("last_used"),
    }
}

const TOKEN_COLUMNS: &str =
    "t.id, t.name, u.username, t.created_at, t.expires_at, t.last_used FROM api_tokens t JOIN users u ON u.id = t.user_id";

/// API tokens (admin). Their secrets are never shown again after creation.
#[utoipa::path(get, path = "/tokens", tag = "admin",
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 200, body = Vec<Token>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_tokens(State(s): State<ApiState>, _: Admin) -> ApiResult<Json<Vec<Token>>> {
    let db = s.pool.get().await?;
    let rows = db.query(&format!("SELECT {TOKEN_COLUMNS} ORDER BY t.id"), &[]).await?;
    Ok(Json(rows.iter().map(token_of).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for: 1 to 200 characters, not all blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// The user it acts as (and whose role it has); the caller when absent.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub username: Option<String>,
    /// Days until it expires; never when absent.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    /// Send as `Authorization: Bearer <secret>`. Shown only now.
    pub secret: String,
}

/// Make an API token (admin).
#[utoipa::path(post, path = "/tokens", tag = "admin", request_body = NewToken,
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 201, body = CreatedToken), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn create_token(
    State(s): State<ApiState>,
    Authed(caller): Admin,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if req.name.trim().is_empty() || req.name.chars().count() > 200 {
        return Err(Problem::bad("name", "1 to 200 characters"));
    }
    if let Some(d) = req.expires_days {
        if !(1..=3650).contains(&d) {
            return Err(Problem::bad("expires_days", "1 to 3650"));
        }
    }
    let db = s.pool.get().await?;
    let username = req.username.clone().unwrap_or_else(|| caller.username.clone());
    let Some(user) = db.query_opt("SELECT id FROM users WHERE username = $1", &[&username]).await?
    else {
        return Err(Problem {
            field: Some("username".into()),
            ..Problem::not_found(format!("no user {username:?}"))
        });
    };
    let user_id: i64 = user.get(0);
    let secret = format!("tw_{}", new_secret());
    let days = req.expires_days.map(|d| d as i32);
    let row = db
        .query_one(
            "WITH t AS (INSERT INTO api_tokens (user_id, name, secret_hash, expires_at)
               VALUES ($1, $2, $3, now() + make_interval(days => $4)) RETURNING *)
             SELECT t.id, t.name, u.username, t.created_at, t.expires_at, t.last_used
             FROM t JOIN users u ON u.id = t.user_id",
            &[&user_id, &req.name, &hash_secret(&secret), &days],
        )
        .await?;
    let token = token_of(&row);
    caller
        .audit(
            &db,
            "token_create",
            &format!("token/{}", token.id),
            serde_json::json!({"name": req.name, "username": username}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revoke an API token (admin).
#[utoipa::path(delete, path = "/tokens/{id}", tag = "admin", params(("id" = i64, Path)),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn delete_token(
    State(s): State<ApiState>,
    Authed(caller): Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let db = s.pool.get().await?;
    if db.execute("DELETE FROM api_tokens WHERE id = $1", &[&id]).await? == 0 {
        return Err(Problem::not_found(format!("no token {id}")));
    }
    caller.audit(&db, "token_delete", &format!("token/{id}"), serde_json::json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// RFC 3339; default 7 days before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Rows before this id (the previous page's `next_before`).
    pub before: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
    pub ip: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_before: Option<i64>,
}

/// The audit log, newest first (admin).
#[utoipa::path(get, path = "/audit", tag = "admin", params(AuditQuery),
    security(("session" = ["admin"]), ("token" = ["admin"])),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn audit_log(
    State(s): State<ApiState>,
    _: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let (from, to) = super::time_range(
        q.from.as_deref(),
        q.to.as_deref(),
        time::Duration::days(7),
        time::Duration::days(366),
    )?;
    let limit = i64::from(q.limit.unwrap_or(100));
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad("limit", "1 to 1000"));
    }
    let db = s.pool.get().await?;
    let rows = db
        .query(
            "SELECT id, ts, actor, action, target, detail, host(ip) FROM audit_log
             WHERE ts >= $1 AND ts < $2 AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
            &[&from, &to, &q.before, &(limit + 1)],
        )
        .await?;
    let mut entries: Vec<AuditEntry> = rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            ts: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            detail: r.get(5),
            ip: r.get(6),
        })
        .collect();
    let next_before = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditPage { entries, next_before }))
}
