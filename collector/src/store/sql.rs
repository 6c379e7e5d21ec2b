//! One way to run the record's SQL (alarms, outbox, inspection) on either
//! backend, so each of those statements is written once.
//!
//! The statements use what SQLite and PostgreSQL share: `$1` parameters
//! (turned into SQLite's `?1`), `ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`,
//! `CASE` instead of two-argument `min`. Arguments and columns go through
//! two small value types that fit whatever type the server asks for or
//! answers with: SQLite keeps flags as 0/1 and PostgreSQL as `BOOLEAN`,
//! levels are `SMALLINT` there, and the same Rust code reads both.
//!
//! `Conn` is an enum, not a trait, as the backend boundary is (see
//! ARCHITECTURE.md). Its calls are async; on SQLite they never wait, so the
//! SQLite callers (the writer thread, the blocking pool) finish them with
//! [`now`]. Where PostgreSQL is called from a blocking thread, its calls
//! are driven by the runtime's handle.

use crate::store::postgres::PgError;
use futures_util::FutureExt;
use std::future::Future;
use thiserror::Error;
use tokio_postgres::types::{private::BytesMut, FromSql, IsNull, ToSql, Type};

#[derive(Debug, Error)]
pub enum SqlError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Postgres(#[from] PgError),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("column {index}: expected {wanted}, found {found}")]
    Column {
        index: usize,
        wanted: &'static str,
        found: &'static str,
    },
}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        SqlError::Postgres(e.into())
    }
}

/// A connection (or transaction) to run record statements on.
#[derive(Clone, Copy)]
pub enum Conn<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(&'a tokio_postgres::Client),
    PgTx(&'a tokio_postgres::Transaction<'a>),
}

/// Finishes a call on SQLite, which never waits.
pub fn now<F: Future>(f: F) -> F::Output {
    f.now_or_never()
        .expect("SQLite calls complete without waiting")
}

/// An argument: borrowed, converted to the column's type when sent.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(&'a str),
    Bytes(&'a [u8]),
}

macro_rules! arg_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg<'_> {
            fn from(v: $t) -> Self {
                // Every caller's integers fit i64 (serials, times, counts).
                Arg::Int(v as i64)
            }
        }
    )*};
}
arg_from_int!(i64, i32, u32, u8, u64, usize);

impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Real(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}
impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Bytes(v)
    }
}
impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Arg::Null, Arg::Text)
    }
}

/// `args![a, b, c]`: the arguments of a statement.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::sql::Arg::from($a)),*] };
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match *self {
            Arg::Null => ToSqlOutput::Owned(Value::Null),
            Arg::Int(v) => ToSqlOutput::Owned(Value::Integer(v)),
            Arg::Real(v) => ToSqlOutput::Owned(Value::Real(v)),
            Arg::Bool(v) => ToSqlOutput::Owned(Value::Integer(v.into())),
            Arg::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let mismatch = || -> BoxError { format!("cannot send {self:?} as {ty}").into() };
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v).map_err(|_| mismatch())?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v).map_err(|_| mismatch())?.to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Arg::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Arg::Bool(v) => match *ty {
                Type::BOOL => v.to_sql(ty, out),
                Type::INT8 => i64::from(v).to_sql(ty, out),
                Type::INT4 => i32::from(v).to_sql(ty, out),
                Type::INT2 => i16::from(v).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Arg::Text(v) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    v.to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
            Arg::Bytes(v) => match *ty {
                Type::BYTEA => v.to_sql(ty, out),
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A column's value as either backend answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "NULL",
            Val::Int(_) => "an integer",
            Val::Real(_) => "a real",
            Val::Bool(_) => "a boolean",
            Val::Text(_) => "text",
            Val::Bytes(_) => "bytes",
        }
    }
}

impl<'a> FromSql<'a> for Val {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Val::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Val::Int(i16::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Val::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Val::Real(f32::from_sql(ty, raw)?.into()),
            Type::BOOL => Val::Bool(bool::from_sql(ty, raw)?),
            Type::BYTEA => Val::Bytes(raw.to_vec()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Val::Text(String::from_sql(&Type::TEXT, raw)?)
            }
            // NUMERIC and the rest: the statements cast to one of the above.
            _ => return Err(format!("no reading of PostgreSQL type {ty}").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Val::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Val {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(r) => Val::Real(r),
            ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
        }
    }
}

/// A Rust type a column can be read as.
pub trait FromVal: Sized {
    const WANTED: &'static str;
    fn from_val(v: Val) -> Option<Self>;
}

macro_rules! int_from_val {
    ($($t:ty),*) => {$(
        impl FromVal for $t {
            const WANTED: &'static str = "an integer";
            fn from_val(v: Val) -> Option<Self> {
                match v {
                    Val::Int(i) => <$t>::try_from(i).ok(),
                    Val::Bool(b) => Some(<$t>::from(b)),
                    _ => None,
                }
            }
        }
    )*};
}
int_from_val!(i64, i32, u32, u8, u64);

impl FromVal for f64 {
    const WANTED: &'static str = "a number";
    fn from_val(v: Val) -> Option<Self> {
        match v {
            Val::Real(r) => Some(r),
            Val::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

impl FromVal for bool {
    const WANTED: &'static str = "a flag";
    fn from_val(v: Val) -> Option<Self> {
        match v {
            Val::Bool(b) => Some(b),
            Val::Int(i) => Some(i != 0),
            _ => None,
        }
    }
}

impl FromVal for String {
    const WANTED: &'static str = "text";
    fn from_val(v: Val) -> Option<Self> {
        match v {
            Val::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl FromVal for Vec<u8> {
    const WANTED: &'static str = "bytes";
    fn from_val(v: Val) -> Option<Self> {
        match v {
            Val::Bytes(b) => Some(b),
            Val::Text(t) => Some(t.into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromVal> FromVal for Option<T> {
    const WANTED: &'static str = T::WANTED;
    fn from_val(v: Val) -> Option<Self> {
        match v {
            Val::Null => Some(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// One row of an answer.
#[derive(Debug, Clone)]
pub struct Row(Vec<Val>);

impl Row {
    /// Column `i` as `T`.
    pub fn get<T: FromVal>(&self, i: usize) -> Result<T, SqlError> {
        let v = self.0.get(i).cloned().unwrap_or(Val::Null);
        let found = v.kind();
        T::from_val(v).ok_or(SqlError::Column {
            index: i,
            wanted: T::WANTED,
            found,
        })
    }
}

/// `$1` → `?1`: SQLite numbers named parameters by first appearance, so
/// `$2 … $1` would bind the wrong way round.
fn lite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_args<'b>(args: &'b [Arg<'_>]) -> Vec<&'b (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Conn<'_> {
    pub fn is_postgres(&self) -> bool {
        !matches!(self, Conn::Lite(_))
    }

    /// Runs a statement; how many rows it changed.
    pub async fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        Ok(match *self {
            Conn::Lite(c) => {
                c.prepare_cached(&lite_sql(sql))?
                    .execute(rusqlite::params_from_iter(args.iter()))? as u64
            }
            Conn::Pg(c) => c.execute(sql, &pg_args(args)).await?,
            Conn::PgTx(c) => c.execute(sql, &pg_args(args)).await?,
        })
    }

    /// Every row of a query's answer.
    pub async fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let pg = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<Row>, SqlError> {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<_, Val>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Row)
                        .map_err(SqlError::from)
                })
                .collect()
        };
        match *self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(&lite_sql(sql))?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(Row((0..n)
                        .map(|i| r.get_ref(i).map(Val::from))
                        .collect::<Result<_, _>>()?));
                }
                Ok(out)
            }
            Conn::Pg(c) => pg(c.query(sql, &pg_args(args)).await?),
            Conn::PgTx(c) => pg(c.query(sql, &pg_args(args)).await?),
        }
    }

    /// The first row of an answer, if any.
    pub async fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, SqlError> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }

    /// The first column of the first row (a count, a new id).
    pub async fn value<T: FromVal>(&self, sql: &str, args: &[Arg<'_>]) -> Result<T, SqlError> {
        match self.row(sql, args).await? {
            Some(r) => r.get(0),
            None => T::from_val(Val::Null).ok_or(SqlError::Column {
                index: 0,
                wanted: T::WANTED,
                found: "no row",
            }),
        }
    }
}

/// A [`Conn`] for code that blocks: the inspection round and its API
/// endpoints, which run on the blocking pool. On PostgreSQL each call is
/// driven by the runtime's handle (allowed on a blocking thread); on
/// SQLite it completes at once.
#[derive(Clone, Copy)]
pub struct Db<'a> {
    conn: Conn<'a>,
    handle: Option<&'a tokio::runtime::Handle>,
}

impl<'a> Db<'a> {
    pub fn lite(c: &'a rusqlite::Connection) -> Db<'a> {
        Db {
            conn: Conn::Lite(c),
            handle: None,
        }
    }

    pub fn pg(conn: Conn<'a>, handle: &'a tokio::runtime::Handle) -> Db<'a> {
        Db {
            conn,
            handle: Some(handle),
        }
    }

    pub fn conn(&self) -> Conn<'a> {
        self.conn
    }

    pub fn is_postgres(&self) -> bool {
        self.conn.is_postgres()
    }

    /// Runs `f` to its end: at once on SQLite, on the runtime otherwise.
    pub fn wait<F: Future>(&self, f: F) -> F::Output {
        match self.handle {
            Some(h) => h.block_on(f),
            None => now(f),
        }
    }

    pub fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        self.wait(self.conn.exec(sql, args))
    }

    pub fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        self.wait(self.conn.rows(sql, args))
    }

    pub fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, SqlError> {
        self.wait(self.conn.row(sql, args))
    }

    pub fn value<T: FromVal>(&self, sql: &str, args: &[Arg<'_>]) -> Result<T, SqlError> {
        self.wait(self.conn.value(sql, args))
    }

    /// Whether the store has table `name`: on SQLite the alarm and
    /// inspection tables exist only once those are turned on; PostgreSQL's
    /// schema has every table from the start.
    pub fn has_table(&self, name: &str) -> Result<bool, SqlError> {
        match self.conn {
            Conn::Lite(c) => Ok(crate::store::sqlite::table_exists(c, name)?),
            _ => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_sqlites_and_dollars_in_text_stay() {
        assert_eq!(
            lite_sql("SELECT json_extract(x, '$.at') FROM t WHERE a = $2 AND b = $1 OR $10"),
            "SELECT json_extract(x, '$.at') FROM t WHERE a = ?2 AND b = ?1 OR ?10"
        );
    }

    #[test]
    fn sqlite_flags_and_integers_read_as_the_rust_types_asked_for() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let db = Conn::Lite(&c);
        now(db.exec("CREATE TABLE t (a INTEGER, b REAL, c TEXT, d INTEGER)", &[])).unwrap();
        now(db.exec(
            "INSERT INTO t VALUES ($1, $2, $3, $4)",
            crate::args![7_i64, 1.5, "x", true],
        ))
        .unwrap();
        let r = now(db.row("SELECT a, b, c, d, NULL FROM t WHERE d = TRUE", &[]))
            .unwrap()
            .unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 7);
        assert_eq!(r.get::<f64>(1).unwrap(), 1.5);
        assert_eq!(r.get::<String>(2).unwrap(), "x");
        assert!(r.get::<bool>(3).unwrap());
        assert_eq!(r.get::<Option<i64>>(4).unwrap(), None);
        let e = r.get::<i64>(2).unwrap_err().to_string();
        assert_eq!(e, "column 2: expected an integer, found text");
    }
}
