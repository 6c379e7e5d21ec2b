//! Login, logout, the current user, user administration, and the middleware
//! that applies `auth::required` to every request and adds security headers.

use super::history::bad;
use super::{body, ApiError, AppState};
use crate::auth::{self, AuthError, Role, User, Via};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// A blocking task that panicked or was cancelled.
fn joined(e: tokio::task::JoinError) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Longest request body accepted anywhere (the API takes small JSON documents).
pub const MAX_BODY: usize = 64 * 1024;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::BadLogin => StatusCode::UNAUTHORIZED,
            AuthError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
            AuthError::NoUser(_) => StatusCode::NOT_FOUND,
            AuthError::Exists(_) => StatusCode::CONFLICT,
            AuthError::Store(_) | AuthError::Hash(_) => {
                tracing::error!(error = %e, "authentication store failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(code, e.to_string())
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Who may do what (`auth::required`), checked before any handler runs.
pub async fn guard(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let need = auth::required(
        req.method().as_str(),
        req.uri().path(),
        st.auth.open_health,
        st.auth.open_metrics,
    );
    if need == auth::Need::Open {
        return next.run(req).await;
    }
    let authorization = header_str(req.headers(), header::AUTHORIZATION).map(str::to_owned);
    let cookie = header_str(req.headers(), header::COOKIE).map(str::to_owned);
    let a = st.auth.clone();
    let who = tokio::task::spawn_blocking(move || {
        a.identify(authorization.as_deref(), cookie.as_deref())
    })
    .await;
    let (user, via) = match who {
        Ok(Ok(Some(w))) => w,
        Ok(Ok(None)) => {
            let mut r = ApiError(
                StatusCode::UNAUTHORIZED,
                "log in first (POST /api/v1/login) or send Authorization: Bearer <token>".into(),
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    if !need.allows(user.role) {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} ({}) may not {} {}",
                user.name,
                user.role.as_str(),
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    // A cookie is sent by the browser whatever page asks: writes must also
    // carry the session's CSRF token, which only our own page can read.
    if let Via::Session { csrf } = &via {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        let given = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if !safe && given != Some(csrf.as_str()) {
            return ApiError(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header".into(),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(user);
    req.extensions_mut().insert(via);
    next.run(req).await
}

/// Longest a request may take; then it is answered 503 and its work dropped
/// (history reads are bounded well inside this).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {} s", DEADLINE.as_secs()),
        )
        .into_response(),
    }
}

/// Most of an oversized body read (and dropped) before it is refused.
const DRAIN_AT_MOST: usize = 1024 * 1024;

/// Refuses a body declared larger than its endpoint takes with 413, after
/// reading what the client is sending (up to [`DRAIN_AT_MOST`], for a few
/// seconds). Answering at once and closing with the body unread makes the
/// kernel reset the connection, and a client still sending often loses the
/// answer: it saw "connection closed", not "too large".
pub async fn refuse_oversized(req: Request, next: Next) -> Response {
    let limit = if req.uri().path() == "/api/v1/patrols" {
        super::inspection::PATROL_BODY
    } else {
        MAX_BODY
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit as u64) else {
        return next.run(req).await;
    };
    if declared <= DRAIN_AT_MOST as u64 {
        let body = req.into_body();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            axum::body::to_bytes(body, DRAIN_AT_MOST),
        )
        .await;
    }
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {declared} bytes; this endpoint takes at most {limit}"),
    )
    .into_response()
}

/// Headers every answer carries: no sniffing, no framing, nothing loaded
/// from elsewhere, no referrer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' data: blob:; frame-ancestors 'none'"),
    );
    r
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    user: String,
    password: String,
}

/// Password checks running at once (argon2 is meant to be slow).
static LOGIN_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Longest a login waits for a slot before it is turned away.
const LOGIN_QUEUE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn login(
    State(st): State<Arc<AppState>>,
    b: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    if b.user.len() > 64 || b.password.len() > 1024 {
        return Err(bad("user or password too long"));
    }
    let a = st.auth.clone();
    let name = b.user.clone();
    // One password check at a time per core, and the lock is judged only
    // once a slot is held: concurrent guesses cannot all pass the check
    // before the first failures are counted.
    let Ok(_slot) = tokio::time::timeout(LOGIN_QUEUE, LOGIN_SLOTS.acquire()).await else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins at once; try again".into(),
        ));
    };
    let locked = st
        .auth
        .throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(&name, roomguard_protocol::clock::now_ms());
    if let Err(wait) = locked {
        tracing::warn!(user = %name.chars().take(64).collect::<String>(), "login refused: too many failures");
        return Err(AuthError::Throttled(wait).into());
    }
    let result = tokio::task::spawn_blocking(move || a.login(&b.user, &b.password))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    {
        let mut throttle = st.auth.throttle.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => throttle.succeeded(&name),
            Err(AuthError::BadLogin) => throttle.failed(&name, roomguard_protocol::clock::now_ms()),
            Err(_) => {}
        }
    }
    drop(_slot);
    let (token, csrf, user) = match result {
        Ok(v) => v,
        Err(AuthError::BadLogin) => {
            tracing::warn!(user = %name.chars().take(64).collect::<String>(), "failed login");
            // Slows guessing down; the answer says nothing about which part was wrong.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            return Err(AuthError::BadLogin.into());
        }
        Err(e) => return Err(e.into()),
    };
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_COOKIE,
        st.auth.session_ttl_s(),
        if st.secure_cookies { "; Secure" } else { "" }
    );
    let mut r = Json(json!({ "user": user.name, "role": user.role.as_str(), "csrf": csrf }))
        .into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    Ok(r)
}

pub async fn logout(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cookie = header_str(&headers, header::COOKIE).map(str::to_owned);
    let a = st.auth.clone();
    tokio::task::spawn_blocking(move || a.logout(cookie.as_deref()))
        .await
        .map_err(joined)??;
    let mut r = Json(json!({ "logged_out": true })).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "roomguard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(r)
}

pub async fn me(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Extension(via): Extension<Via>,
) -> Json<serde_json::Value> {
    let csrf = match via {
        Via::Session { csrf } => Some(csrf),
        _ => None,
    };
    Json(json!({
        "user": user.name,
        "role": user.role.as_str(),
        "csrf": csrf,
        "time_zone": st.time_zone,
    }))
}

pub async fn users(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let a = st.auth.clone();
    let users = tokio::task::spawn_blocking(move || a.users())
        .await
        .map_err(joined)??;
    Ok(Json(json!({ "users": users })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: Role,
    password: String,
}

pub async fn create_user(
    State(st): State<Arc<AppState>>,
    Extension(by): Extension<User>,
    b: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let b = body(b)?;
    let a = st.auth.clone();
    let (name, role) = (b.name.clone(), b.role);
    tokio::task::spawn_blocking(move || a.create_user(&by.name, &b.name, b.role, &b.password))
        .await
        .map_err(joined)??;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "role": role.as_str() })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    password: String,
}

pub async fn set_password(
    State(st): State<Arc<AppState>>,
    Extension(by): Extension<User>,
    Path(name): Path<String>,
    b: Result<Json<NewPassword>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if by.name != name && by.role != Role::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only an admin may set another user's password".into(),
        ));
    }
    let b = body(b)?;
    let a = st.auth.clone();
    tokio::task::spawn_blocking(move || a.set_password(&by.name, &name, &b.password))
        .await
        .map_err(joined)??;
    Ok(Json(json!({ "password_changed": true })))
}

pub async fn tokens(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let a = st.auth.clone();
    let tokens = tokio::task::spawn_blocking(move || a.tokens())
        .await
        .map_err(joined)??;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: Role,
}

/// A machine token, shown in this answer only.
pub async fn create_token(
    State(st): State<Arc<AppState>>,
    Extension(by): Extension<User>,
    b: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let b = body(b)?;
    let a = st.auth.clone();
    let (name, role) = (b.name.clone(), b.role);
    let token = tokio::task::spawn_blocking(move || a.create_token(&by.name, &b.name, b.role))
        .await
        .map_err(joined)??;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "role": role.as_str(), "token": token })),
    ))
}

pub async fn revoke_token(
    State(st): State<Arc<AppState>>,
    Extension(by): Extension<User>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = st.auth.clone();
    tokio::task::spawn_blocking(move || a.revoke_token(&by.name, &name))
        .await
        .map_err(joined)??;
    Ok(Json(json!({ "revoked": true })))
}
