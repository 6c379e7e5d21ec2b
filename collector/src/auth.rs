//! Who may do what on the HTTP API: users with roles, password login with
//! argon2id hashes, cookie sessions with a CSRF token, bearer tokens for
//! machines (from the configuration), and an append-only audit log of
//! logins, users, tokens, silences and retries (alarm actions go to the
//! alarm's trail, hazard changes to the hazard's, patrols carry their author).
//!
//! The policy is one table (`required`), so what each role may do is read in
//! one place: viewers read; responders also acknowledge, comment, assign,
//! silence, record patrols and drills and work on hazards; inspectors record
//! and also accept, dismiss and verify hazards; admins do everything,
//! including users.

use crate::store::auth::AuthStore;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use roomguard_protocol::clock::now_ms;
use roomguard_protocol::conf::{self, Secret};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Responder,
    Inspector,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Inspector => "inspector",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Responder, Role::Inspector, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nobody needs to log in.
    Open,
    /// Any logged-in user.
    Read,
    /// Acknowledge, comment, assign, silence.
    Respond,
    /// Record patrols, drills and hazard work (everyone but viewers).
    Record,
    Admin,
}

/// The policy: what `method path` needs.
pub fn required(method: &str, path: &str, open_health: bool, open_metrics: bool) -> Need {
    match (method, path) {
        (_, "/healthz") if open_health => Need::Open,
        (_, "/metrics") if open_metrics => Need::Open,
        // The page and its scripts hold no data; the page asks for a login.
        ("GET" | "HEAD", "/") | ("POST", "/api/v1/login") => Need::Open,
        ("GET" | "HEAD", p) if p.starts_with("/ui/") => Need::Open,
        ("POST", "/api/v1/logout") => Need::Read,
        (_, p) if p == "/api/v1/tokens" || p.starts_with("/api/v1/tokens/") => Need::Admin,
        // Node addresses and lease details: for whoever runs the cluster.
        (_, "/api/v1/cluster") => Need::Admin,
        (_, p) if p == "/api/v1/users" || p.starts_with("/api/v1/users/") => {
            // Changing one's own password is the handler's check.
            if method == "POST" && p.ends_with("/password") {
                Need::Read
            } else {
                Need::Admin
            }
        }
        ("POST", p) if p.starts_with("/api/v1/notifications/") => Need::Admin,
        ("POST", p) if p.starts_with("/api/v1/alarms/") || p.starts_with("/api/v1/silences") => {
            Need::Respond
        }
        ("POST", p)
            if p == "/api/v1/patrols"
                || p == "/api/v1/drills"
                || (p.starts_with("/api/v1/drills/") && p.ends_with("/end"))
                || p == "/api/v1/hazards"
                || p.starts_with("/api/v1/hazards/") =>
        {
            Need::Record
        }
        ("GET" | "HEAD", _) => Need::Read,
        // Anything else that writes: only admins, until the policy names it.
        _ => Need::Admin,
    }
}

impl Need {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Open | Need::Read => true,
            Need::Respond => matches!(role, Role::Responder | Role::Admin),
            Need::Record => role != Role::Viewer,
            Need::Admin => role == Role::Admin,
        }
    }
}

/// A machine's token, from the configuration (`[[auth.tokens]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who the token acts as in the audit trail.
    pub name: String,
    pub role: Role,
    /// `{ env = "…" }` or `{ file = "…" }`; at least 32 characters.
    pub token: Secret,
}

/// `[auth]` in the collector's configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off only for a closed test bench: every request is then `anonymous`, an admin.
    pub enabled: bool,
    /// Password of the `admin` user created at first start; when absent a
    /// random one is made and printed once.
    pub initial_admin_password: Option<Secret>,
    /// `/healthz` and `/metrics` without login (for load balancers and Prometheus).
    pub open_health: bool,
    pub open_metrics: bool,
    #[serde(with = "conf::duration")]
    pub session_ttl: Duration,
    pub tokens: Vec<TokenConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            initial_admin_password: None,
            open_health: true,
            open_metrics: true,
            session_ttl: Duration::from_secs(12 * 3600),
            tokens: Vec::new(),
        }
    }
}

impl AuthConfig {
    pub fn check(&self, p: &mut conf::Problems) {
        if let Some(s) = &self.initial_admin_password {
            match s.resolve() {
                Err(e) => p.push("auth.initial_admin_password", e),
                Ok(Some(pw)) if pw.chars().count() < 8 => p.push(
                    "auth.initial_admin_password",
                    "must be at least 8 characters",
                ),
                Ok(_) => {}
            }
        }
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(30 * 86_400)
        {
            p.push("auth.session_ttl", "must be between 1m and 30d");
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let path = format!("auth.tokens[{i}]");
            if let Err(e) = valid_name(&t.name) {
                p.push(format!("{path}.name"), e);
            }
            match t.token.resolve() {
                Err(e) => p.push(format!("{path}.token"), e),
                Ok(None) => p.push(format!("{path}.token"), "give one of value, env, file"),
                Ok(Some(v)) if v.len() < 32 => {
                    p.push(format!("{path}.token"), "must be at least 32 characters")
                }
                // Inline tokens are named by CollectorConfig::warnings.
                Ok(Some(_)) => {}
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("wrong user name or password")]
    BadLogin,
    #[error("too many failed logins for this user; try again in {0} s")]
    Throttled(u64),
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("user {0:?} exists already")]
    Exists(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Someone the API knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session cookie, with the session's CSRF token (writes must repeat it).
    Session {
        csrf: String,
    },
    Token,
    /// Authentication is off.
    Nobody,
}

pub struct Auth {
    pub enabled: bool,
    pub open_health: bool,
    pub open_metrics: bool,
    db: AuthStore,
    session_ttl_ms: i64,
    /// (SHA-256 of the token, who it is).
    tokens: Vec<([u8; 32], User)>,
    pub throttle: std::sync::Mutex<Throttle>,
}

/// Failed logins per user name: after [`Throttle::MAX_FAILURES`] within
/// [`Throttle::WINDOW_MS`], that name is refused until the oldest failure
/// leaves the window. Password guessing on one account is capped at 60 an
/// hour; the price is that someone can lock a name out for ten minutes by
/// failing on purpose (answered 429, which the UI shows).
#[derive(Debug, Default)]
pub struct Throttle {
    failures: std::collections::HashMap<String, std::collections::VecDeque<i64>>,
}

impl Throttle {
    pub const MAX_FAILURES: usize = 10;
    pub const WINDOW_MS: i64 = 10 * 60_000;
    /// Names tracked at most; beyond, the oldest entries go (a flood of
    /// made-up names cannot grow memory).
    const MAX_NAMES: usize = 10_000;

    // User names are case-sensitive: so is the lock.
    fn key(user: &str) -> String {
        user.to_owned()
    }

    /// `Err(seconds to wait)` while the name is locked.
    pub fn check(&mut self, user: &str, now: i64) -> Result<(), u64> {
        let Some(f) = self.failures.get_mut(&Self::key(user)) else {
            return Ok(());
        };
        while f.front().is_some_and(|t| *t <= now - Self::WINDOW_MS) {
            f.pop_front();
        }
        match f.front() {
            Some(oldest) if f.len() >= Self::MAX_FAILURES => {
                Err(((oldest + Self::WINDOW_MS - now).max(1000) / 1000) as u64)
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&mut self, user: &str, now: i64) {
        if self.failures.len() >= Self::MAX_NAMES && !self.failures.contains_key(user) {
            // Forget names whose failures left the window; if all are recent,
            // the one with the fewest (a made-up name tried once), never a
            // name that is locked.
            self.failures
                .retain(|_, f| f.back().is_some_and(|t| *t > now - Self::WINDOW_MS));
            if self.failures.len() >= Self::MAX_NAMES {
                if let Some(k) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.len())
                    .map(|(k, _)| k.clone())
                {
                    self.failures.remove(&k);
                }
            }
        }
        let f = self.failures.entry(Self::key(user)).or_default();
        f.push_back(now);
        while f.len() > Self::MAX_FAILURES {
            f.pop_front();
        }
    }

    pub fn succeeded(&mut self, user: &str) {
        self.failures.remove(&Self::key(user));
    }
}

pub const SESSION_COOKIE: &str = "roomguard_session";
const MIN_PASSWORD: usize = 8;

fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    roomguard_protocol::auth::hex(bytes)
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    // The system RNG failing is not something to go on without.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    hex(&bytes)
}

fn valid_name(name: &str) -> Result<(), String> {
    // The name every request has when authentication is off.
    if name == "anonymous" {
        return Err("\"anonymous\" is reserved".into());
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.@".contains(c))
    {
        return Err("must be 1–64 letters, digits, '-', '_', '.', '@'".into());
    }
    Ok(())
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AuthError::Hash("no randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Auth {
    /// The tables (their migration made them) and, on first start, the
    /// `admin` user. Returns the admin's one-time password when it was
    /// generated here.
    pub fn init(db: AuthStore, cfg: &AuthConfig) -> Result<(Auth, Option<String>), AuthError> {
        let auth = Auth::new(db, cfg);
        let created = auth.first_admin(cfg, &random_hex(12))?;
        Ok((auth, created))
    }

    /// Authentication by `cfg` on `db`, touching the store only when asked.
    pub fn new(db: AuthStore, cfg: &AuthConfig) -> Auth {
        let mut tokens = Vec::new();
        for t in &cfg.tokens {
            if let Ok(Some(v)) = t.token.resolve() {
                tokens.push((
                    sha256(&v),
                    User {
                        name: t.name.clone(),
                        role: t.role,
                    },
                ));
            }
        }
        Auth {
            enabled: cfg.enabled,
            open_health: cfg.open_health,
            open_metrics: cfg.open_metrics,
            db,
            session_ttl_ms: cfg.session_ttl.as_millis() as i64,
            tokens,
            throttle: Default::default(),
        }
    }

    /// Makes the `admin` user when there is no user at all; its one-time
    /// password (`generated`, unless the config gives one) when it was
    /// generated here. Called again after a failure with the same
    /// `generated`: an admin an earlier call made (whose answer was lost
    /// with the connection) is recognised by that password and said then.
    pub fn first_admin(
        &self,
        cfg: &AuthConfig,
        generated: &str,
    ) -> Result<Option<String>, AuthError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let given = match &cfg.initial_admin_password {
            Some(s) => s.resolve().map_err(AuthError::Invalid)?,
            None => None,
        };
        let is_generated = given.is_none();
        let password = given.unwrap_or_else(|| generated.to_owned());
        let made_earlier = |db: &AuthStore| -> Result<bool, AuthError> {
            Ok(is_generated
                && db
                    .login_row("admin")?
                    .is_some_and(|(_, hash)| verify_password(&password, &hash)))
        };
        if self.db.count_users()? > 0 {
            return Ok(made_earlier(&self.db)?.then(|| password.clone()));
        }
        // Another collector on the same database may have made it first.
        if !self.db.insert_user(
            ("admin", "admin"),
            &hash_password(&password)?,
            now_ms(),
            "first start",
        )? {
            return Ok(made_earlier(&self.db)?.then(|| password.clone()));
        }
        self.db
            .audit("first start", "user.create", "admin (admin)", now_ms())?;
        Ok(is_generated.then_some(password))
    }

    /// Who sent these headers (blocking: reads the store).
    pub fn identify(
        &self,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Option<(User, Via)>, AuthError> {
        if !self.enabled {
            return Ok(Some((
                User {
                    name: "anonymous".into(),
                    role: Role::Admin,
                },
                Via::Nobody,
            )));
        }
        if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            let h = sha256(token.trim());
            // Digests compared without an early exit: no timing hint about
            // how much matched.
            if let Some((_, u)) = self.tokens.iter().find(|(t, _)| {
                t.iter()
                    .zip(h.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            }) {
                return Ok(Some((u.clone(), Via::Token)));
            }
            // Tokens made through the API; looked up by their digest.
            return Ok(self.db.token(&h)?.and_then(|(name, role)| {
                Some((
                    User {
                        name,
                        role: Role::parse(&role)?,
                    },
                    Via::Token,
                ))
            }));
        }
        let Some(session) = cookie.and_then(session_of) else {
            return Ok(None);
        };
        let row = self.db.session(&sha256(session), now_ms())?;
        Ok(row.and_then(|(name, csrf, role)| {
            Some((
                User {
                    name,
                    role: Role::parse(&role)?,
                },
                Via::Session { csrf },
            ))
        }))
    }

    /// Checks a password and opens a session: (session token, CSRF token, user).
    pub fn login(&self, name: &str, password: &str) -> Result<(String, String, User), AuthError> {
        let Some((role, hash)) = self.db.login_row(name)? else {
            // Same work as a real check, so a missing user is not faster.
            let _ = verify_password(password, dummy_hash());
            return Err(AuthError::BadLogin);
        };
        if !verify_password(password, &hash) {
            return Err(AuthError::BadLogin);
        }
        let role = Role::parse(&role).ok_or(AuthError::BadLogin)?;
        let token = random_hex(32);
        let csrf = random_hex(16);
        let now = now_ms();
        self.db
            .open_session(&sha256(&token), name, &csrf, now, now + self.session_ttl_ms)?;
        self.db.audit(name, "login", "", now)?;
        Ok((
            token,
            csrf,
            User {
                name: name.to_owned(),
                role,
            },
        ))
    }

    pub fn logout(&self, cookie: Option<&str>) -> Result<(), AuthError> {
        if let Some(session) = cookie.and_then(session_of) {
            self.db.end_session(&sha256(session))?;
        }
        Ok(())
    }

    pub fn session_ttl_s(&self) -> i64 {
        self.session_ttl_ms / 1000
    }

    pub fn users(&self) -> Result<Vec<serde_json::Value>, AuthError> {
        Ok(self.db.users()?)
    }

    pub fn create_user(
        &self,
        by: &str,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<(), AuthError> {
        valid_name(name).map_err(|e| AuthError::Invalid(format!("name: {e}")))?;
        check_password(password)?;
        if !self.db.insert_user(
            (name, role.as_str()),
            &hash_password(password)?,
            now_ms(),
            by,
        )? {
            return Err(AuthError::Exists(name.to_owned()));
        }
        self.db.audit(
            by,
            "user.create",
            &format!("{name} ({})", role.as_str()),
            now_ms(),
        )?;
        Ok(())
    }

    /// Sets a password; other sessions of the user end.
    pub fn set_password(&self, by: &str, name: &str, password: &str) -> Result<(), AuthError> {
        check_password(password)?;
        if !self.db.set_password_hash(name, &hash_password(password)?)? {
            return Err(AuthError::NoUser(name.to_owned()));
        }
        self.db.audit(by, "user.password", name, now_ms())?;
        Ok(())
    }

    /// A new machine token, returned once; only its digest is kept.
    pub fn create_token(&self, by: &str, name: &str, role: Role) -> Result<String, AuthError> {
        valid_name(name).map_err(|e| AuthError::Invalid(format!("name: {e}")))?;
        let token = random_hex(32);
        if !self
            .db
            .insert_token(&sha256(&token), (name, role.as_str()), now_ms(), by)?
        {
            return Err(AuthError::Exists(name.to_owned()));
        }
        self.db.audit(
            by,
            "token.create",
            &format!("{name} ({})", role.as_str()),
            now_ms(),
        )?;
        Ok(token)
    }

    pub fn revoke_token(&self, by: &str, name: &str) -> Result<(), AuthError> {
        if !self.db.revoke_token(name, now_ms(), by)? {
            return Err(AuthError::NoUser(name.to_owned()));
        }
        self.db.audit(by, "token.revoke", name, now_ms())?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<serde_json::Value>, AuthError> {
        Ok(self.db.tokens()?)
    }

    pub fn audit(&self, user: &str, action: &str, detail: &str) -> Result<(), AuthError> {
        self.db.audit(user, action, detail, now_ms())?;
        Ok(())
    }
}

fn check_password(p: &str) -> Result<(), AuthError> {
    if p.chars().count() < MIN_PASSWORD || p.len() > 1024 {
        return Err(AuthError::Invalid(format!(
            "password: must be {MIN_PASSWORD} to 1024 characters"
        )));
    }
    Ok(())
}

/// The session token in a `Cookie` header.
fn session_of(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// An argon2id hash of a random password, checked against when a user does
/// not exist so that the answer takes as long.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failed_logins_lock_a_name_until_the_oldest_leaves_the_window() {
        let mut t = Throttle::default();
        for i in 0..10 {
            assert_eq!(t.check("admin", i * 1000), Ok(()));
            t.failed("admin", i * 1000);
        }
        assert_eq!(t.check("admin", 10_000), Err(590));
        assert_eq!(t.check("Admin", 10_000), Ok(()), "names are case-sensitive");
        // A flood of made-up names does not unlock it.
        for i in 0..Throttle::MAX_NAMES {
            t.failed(&format!("made-up-{i}"), 11_000);
        }
        assert_eq!(t.check("admin", 12_000), Err(588));
        // The first failure leaves the window ten minutes after it.
        assert_eq!(t.check("admin", Throttle::WINDOW_MS), Ok(()));
        t.succeeded("admin");
        assert_eq!(t.check("admin", 10_000), Ok(()));
    }

    #[test]
    fn the_policy_gives_each_role_what_it_needs() {
        let need = |m, p| required(m, p, true, false);
        assert_eq!(need("GET", "/healthz"), Need::Open);
        assert_eq!(
            need("GET", "/metrics"),
            Need::Read,
            "metrics closed by config"
        );
        assert_eq!(need("GET", "/api/v1/history"), Need::Read);
        assert_eq!(need("POST", "/api/v1/alarms/3/ack"), Need::Respond);
        assert_eq!(need("POST", "/api/v1/silences"), Need::Respond);
        assert_eq!(need("POST", "/api/v1/users"), Need::Admin);
        assert_eq!(need("GET", "/api/v1/users"), Need::Admin);
        assert_eq!(need("POST", "/api/v1/users/bob/password"), Need::Read);
        assert_eq!(need("POST", "/api/v1/notifications/4/retry"), Need::Admin);
        assert_eq!(need("GET", "/api/v1/tokens"), Need::Admin);
        assert_eq!(need("POST", "/api/v1/tokens/x/revoke"), Need::Admin);
        assert_eq!(need("DELETE", "/api/v1/anything"), Need::Admin);
        assert!(Need::Respond.allows(Role::Responder) && !Need::Respond.allows(Role::Viewer));
        assert!(!Need::Respond.allows(Role::Inspector));
        assert!(Need::Admin.allows(Role::Admin) && !Need::Admin.allows(Role::Responder));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(session_of("a=1; roomguard_session=abc; b=2"), Some("abc"));
        assert_eq!(session_of("roomguard_session="), None);
        assert_eq!(session_of("other=1"), None);
    }

    #[test]
    fn login_sessions_and_roles_work_against_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        let cfg = AuthConfig::default();
        let (auth, created) = Auth::init(AuthStore::sqlite(&store).unwrap(), &cfg).unwrap();
        let admin_pw = created.expect("a one-time admin password");
        // A second start creates nothing.
        assert!(Auth::init(AuthStore::sqlite(&store).unwrap(), &cfg)
            .unwrap()
            .1
            .is_none());
        assert!(matches!(
            auth.login("admin", "nope"),
            Err(AuthError::BadLogin)
        ));
        assert!(matches!(
            auth.login("ghost", "nope"),
            Err(AuthError::BadLogin)
        ));
        let (token, csrf, user) = auth.login("admin", &admin_pw).unwrap();
        assert_eq!(user.role, Role::Admin);
        let cookie = format!("{SESSION_COOKIE}={token}");
        let (who, via) = auth.identify(None, Some(&cookie)).unwrap().unwrap();
        assert_eq!((who.name.as_str(), via), ("admin", Via::Session { csrf }));
        auth.create_user("admin", "night-shift", Role::Responder, "s3cret-pass")
            .unwrap();
        assert!(matches!(
            auth.create_user("admin", "night-shift", Role::Viewer, "s3cret-pass"),
            Err(AuthError::Exists(_))
        ));
        assert!(matches!(
            auth.create_user("admin", "bad name!", Role::Viewer, "s3cret-pass"),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.create_user("admin", "short", Role::Viewer, "abc"),
            Err(AuthError::Invalid(_))
        ));
        // A new password ends the user's sessions.
        auth.set_password("admin", "admin", "another-pass").unwrap();
        assert!(auth.identify(None, Some(&cookie)).unwrap().is_none());
        auth.logout(Some(&cookie)).unwrap();
        assert!(auth.identify(None, None).unwrap().is_none());
        assert!(auth.identify(Some("Bearer nope"), None).unwrap().is_none());
    }
}
