//! Users, sessions, machine tokens and the audit log, in either backend.
//! Only digests of session and token secrets are kept. The decisions (who
//! may do what, password rules and hashing, throttling) are in `auth.rs`.
//!
//! The calls are blocking (the API makes them from the blocking pool); on
//! PostgreSQL each waits for its query on the collector's runtime.

use super::backend::PgReads;
use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The store's user tables.
#[derive(Clone)]
pub enum AuthStore {
    Sqlite(SqliteAuth),
    Postgres(PgAuth),
}

/// Calls the same method on whichever backend holds the tables.
macro_rules! on_backend {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            AuthStore::Sqlite(s) => Ok(s.$m($($a),*)?),
            AuthStore::Postgres(p) => p.handle.block_on(p.$m($($a),*)),
        }
    };
}

impl AuthStore {
    /// SQLite: the tables, created if the store has none yet.
    pub fn sqlite(path: &Path) -> Result<AuthStore, StoreError> {
        Ok(AuthStore::Sqlite(SqliteAuth::open(path)?))
    }

    /// PostgreSQL: the schema migration made the tables; calls wait on
    /// `handle`'s runtime (never call from inside it).
    pub fn postgres(reads: Arc<PgReads>, handle: tokio::runtime::Handle) -> AuthStore {
        AuthStore::Postgres(PgAuth { reads, handle })
    }

    pub fn count_users(&self) -> Result<i64, StoreError> {
        on_backend!(self.count_users())
    }

    /// Adds a user unless the name is taken; whether it was added.
    pub fn insert_user(
        &self,
        user: (&str, &str),
        password_hash: &str,
        now: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        on_backend!(self.insert_user(user, password_hash, now, by))
    }

    /// The role and password hash of an enabled user.
    pub fn login_row(&self, name: &str) -> Result<Option<(String, String)>, StoreError> {
        on_backend!(self.login_row(name))
    }

    /// Sets a password hash and ends the user's sessions; whether the user exists.
    pub fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        on_backend!(self.set_password_hash(name, hash))
    }

    pub fn users(&self) -> Result<Vec<Value>, StoreError> {
        on_backend!(self.users())
    }

    /// Opens a session (and drops expired ones).
    pub fn open_session(
        &self,
        token_hash: &[u8],
        user: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_backend!(self.open_session(token_hash, user, csrf, now, expires_at))
    }

    /// The user, CSRF token and role of a live session of an enabled user.
    pub fn session(
        &self,
        token_hash: &[u8],
        now: i64,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        on_backend!(self.session(token_hash, now))
    }

    pub fn end_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        on_backend!(self.end_session(token_hash))
    }

    /// Adds a machine token unless the name is taken; whether it was added.
    pub fn insert_token(
        &self,
        token_hash: &[u8],
        token: (&str, &str),
        now: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        on_backend!(self.insert_token(token_hash, token, now, by))
    }

    /// The name and role of an unrevoked token.
    pub fn token(&self, token_hash: &[u8]) -> Result<Option<NameRole>, StoreError> {
        on_backend!(self.token(token_hash))
    }

    /// Revokes a token by name; whether there was one to revoke.
    pub fn revoke_token(&self, name: &str, now: i64, by: &str) -> Result<bool, StoreError> {
        on_backend!(self.revoke_token(name, now, by))
    }

    pub fn tokens(&self) -> Result<Vec<Value>, StoreError> {
        on_backend!(self.tokens())
    }

    pub fn audit(
        &self,
        user: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        on_backend!(self.audit(user, action, detail, now))
    }
}

/// The tables in the SQLite file, opened per call (SQLite's WAL lets them
/// read beside the writer).
#[derive(Debug, Clone)]
pub struct SqliteAuth {
    path: PathBuf,
}

/// A user or token's name and role, as stored.
pub type NameRole = (String, String);

impl SqliteAuth {
    /// The tables, created if the store has none yet.
    pub fn open(path: &Path) -> Result<SqliteAuth, rusqlite::Error> {
        let s = SqliteAuth {
            path: path.to_owned(),
        };
        s.conn()?.execute_batch(super::schema::AUTH)?;
        Ok(s)
    }

    fn conn(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    pub fn count_users(&self) -> Result<i64, rusqlite::Error> {
        self.conn()?
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
    }

    /// Adds a user unless the name is taken; whether it was added.
    pub fn insert_user(
        &self,
        (name, role): (&str, &str),
        password_hash: &str,
        now: i64,
        by: &str,
    ) -> Result<bool, rusqlite::Error> {
        let n = self.conn()?.execute(
            "INSERT OR IGNORE INTO users (name, role, password_hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, role, password_hash, now, by],
        )?;
        Ok(n == 1)
    }

    /// The role and password hash of an enabled user.
    pub fn login_row(&self, name: &str) -> Result<Option<(String, String)>, rusqlite::Error> {
        self.conn()?
            .query_row(
                "SELECT role, password_hash FROM users WHERE name = ?1 AND disabled = 0",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Sets a password hash and ends the user's sessions; whether the user exists.
    pub fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, rusqlite::Error> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, hash],
        )?;
        if n == 1 {
            conn.execute("DELETE FROM sessions WHERE user = ?1", [name])?;
        }
        Ok(n == 1)
    }

    pub fn users(&self) -> Result<Vec<Value>, rusqlite::Error> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT name, role, created_at, created_by, disabled FROM users ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(json!({
                "name": r.get::<_, String>(0)?,
                "role": r.get::<_, String>(1)?,
                "created_at": r.get::<_, i64>(2)?,
                "created_by": r.get::<_, String>(3)?,
                "disabled": r.get::<_, bool>(4)?,
            }))
        })?;
        rows.collect()
    }

    /// Opens a session (and drops expired ones).
    pub fn open_session(
        &self,
        token_hash: &[u8],
        user: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), rusqlite::Error> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "INSERT INTO sessions (token_hash, user, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, user, csrf, now, expires_at],
        )?;
        Ok(())
    }

    /// The user, CSRF token and role of a live session of an enabled user.
    pub fn session(
        &self,
        token_hash: &[u8],
        now: i64,
    ) -> Result<Option<(String, String, String)>, rusqlite::Error> {
        self.conn()?
            .query_row(
                "SELECT s.user, s.csrf, u.role FROM sessions s JOIN users u ON u.name = s.user
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.disabled = 0",
                params![token_hash, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
    }

    pub fn end_session(&self, token_hash: &[u8]) -> Result<(), rusqlite::Error> {
        self.conn()?
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
        Ok(())
    }

    /// Adds a machine token unless the name is taken; whether it was added.
    pub fn insert_token(
        &self,
        token_hash: &[u8],
        (name, role): (&str, &str),
        now: i64,
        by: &str,
    ) -> Result<bool, rusqlite::Error> {
        let n = self.conn()?.execute(
            "INSERT OR IGNORE INTO api_tokens (token_hash, name, role, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, name, role, now, by],
        )?;
        Ok(n == 1)
    }

    /// The name and role of an unrevoked token.
    pub fn token(&self, token_hash: &[u8]) -> Result<Option<NameRole>, rusqlite::Error> {
        self.conn()?
            .query_row(
                "SELECT name, role FROM api_tokens WHERE token_hash = ?1 AND revoked_at IS NULL",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Revokes a token by name; whether there was one to revoke.
    pub fn revoke_token(&self, name: &str, now: i64, by: &str) -> Result<bool, rusqlite::Error> {
        let n = self.conn()?.execute(
            "UPDATE api_tokens SET revoked_at = ?2, revoked_by = ?3 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, now, by],
        )?;
        Ok(n == 1)
    }

    pub fn tokens(&self) -> Result<Vec<Value>, rusqlite::Error> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT name, role, created_at, created_by, revoked_at, revoked_by FROM api_tokens ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(json!({
                "name": r.get::<_, String>(0)?,
                "role": r.get::<_, String>(1)?,
                "created_at": r.get::<_, i64>(2)?,
                "created_by": r.get::<_, String>(3)?,
                "revoked_at": r.get::<_, Option<i64>>(4)?,
                "revoked_by": r.get::<_, Option<String>>(5)?,
            }))
        })?;
        rows.collect()
    }

    pub fn audit(
        &self,
        user: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), rusqlite::Error> {
        audit(&self.conn()?, user, action, detail, now)
    }
}

/// Records a write action in the audit log inside the caller's
/// transaction, on either backend: the action and its entry commit together.
pub async fn audit_in(
    db: crate::store::sql::Conn<'_>,
    user: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), crate::store::sql::SqlError> {
    // `user` is reserved in PostgreSQL; the column is `user_name` there.
    let sql = if db.is_postgres() {
        "INSERT INTO audit_log (at, user_name, action, detail) VALUES ($1, $2, $3, $4)"
    } else {
        "INSERT INTO audit_log (at, user, action, detail) VALUES ($1, $2, $3, $4)"
    };
    db.exec(sql, crate::args![now, user, action, detail])
        .await?;
    Ok(())
}

/// Records a write action in the audit log, on `conn` (inside the caller's
/// transaction where there is one: the action and its entry commit together).
pub fn audit(
    conn: &Connection,
    user: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO audit_log (at, user, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now, user, action, detail],
    )?;
    Ok(())
}

/// The tables in PostgreSQL (`user` is reserved there: `user_name`).
#[derive(Clone)]
pub struct PgAuth {
    reads: Arc<PgReads>,
    handle: tokio::runtime::Handle,
}

impl PgAuth {
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        Ok(self
            .reads
            .reader()
            .await?
            .client()
            .query(sql, params)
            .await?)
    }

    /// The first row, if any (every query here asks for one row at most).
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        Ok(self
            .reads
            .reader()
            .await?
            .client()
            .execute(sql, params)
            .await?)
    }

    async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(self
            .query_opt("SELECT count(*) FROM users", &[])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    async fn insert_user(
        &self,
        (name, role): (&str, &str),
        password_hash: &str,
        now: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
                "INSERT INTO users (name, role, password_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &role, &password_hash, &now, &by],
            )
            .await?;
        Ok(n == 1)
    }

    async fn login_row(&self, name: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .query_opt(
                "SELECT role, password_hash FROM users WHERE name = $1 AND NOT disabled",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        // One statement: the new hash and the end of the old sessions
        // commit together.
        let n: i64 = self.query_opt(
                "WITH changed AS (UPDATE users SET password_hash = $2 WHERE name = $1 RETURNING name),
                      ended AS (DELETE FROM sessions WHERE user_name IN (SELECT name FROM changed))
                 SELECT count(*) FROM changed",
                &[&name, &hash],
            )
            .await?
            .map_or(0, |r| r.get(0));
        Ok(n == 1)
    }

    async fn users(&self) -> Result<Vec<Value>, StoreError> {
        let rows = self
            .query(
                "SELECT name, role, created_at, created_by, disabled FROM users ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.get::<_, String>(0),
                    "role": r.get::<_, String>(1),
                    "created_at": r.get::<_, i64>(2),
                    "created_by": r.get::<_, String>(3),
                    "disabled": r.get::<_, bool>(4),
                })
            })
            .collect())
    }

    async fn open_session(
        &self,
        token_hash: &[u8],
        user: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])
            .await?;
        self.execute(
                "INSERT INTO sessions (token_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&token_hash, &user, &csrf, &now, &expires_at],
            )
            .await?;
        Ok(())
    }

    async fn session(
        &self,
        token_hash: &[u8],
        now: i64,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        let row = self.query_opt(
                "SELECT s.user_name, s.csrf, u.role FROM sessions s JOIN users u ON u.name = s.user_name
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT u.disabled",
                &[&token_hash, &now],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    async fn end_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])
            .await?;
        Ok(())
    }

    async fn insert_token(
        &self,
        token_hash: &[u8],
        (name, role): (&str, &str),
        now: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
                "INSERT INTO api_tokens (token_hash, name, role, created_at, created_by) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&token_hash, &name, &role, &now, &by],
            )
            .await?;
        Ok(n == 1)
    }

    async fn token(&self, token_hash: &[u8]) -> Result<Option<NameRole>, StoreError> {
        let row = self
            .query_opt(
                "SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                &[&token_hash],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn revoke_token(&self, name: &str, now: i64, by: &str) -> Result<bool, StoreError> {
        let n = self.execute(
                "UPDATE api_tokens SET revoked_at = $2, revoked_by = $3 WHERE name = $1 AND revoked_at IS NULL",
                &[&name, &now, &by],
            )
            .await?;
        Ok(n == 1)
    }

    async fn tokens(&self) -> Result<Vec<Value>, StoreError> {
        let rows = self.query(
                "SELECT name, role, created_at, created_by, revoked_at, revoked_by FROM api_tokens ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.get::<_, String>(0),
                    "role": r.get::<_, String>(1),
                    "created_at": r.get::<_, i64>(2),
                    "created_by": r.get::<_, String>(3),
                    "revoked_at": r.get::<_, Option<i64>>(4),
                    "revoked_by": r.get::<_, Option<String>>(5),
                })
            })
            .collect())
    }

    async fn audit(
        &self,
        user: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit_log (at, user_name, action, detail) VALUES ($1, $2, $3, $4)",
            &[&now, &user, &action, &detail],
        )
        .await?;
        Ok(())
    }
}
