//! `roomguard-collector migrate`: copies a SQLite store into PostgreSQL so a
//! site that outgrows the embedded store keeps its history.
//!
//! Every table is copied in key order, in chunks; each chunk goes in by
//! binary COPY in one transaction together with the key it reached
//! (`roomguard_transfer`), so an interrupted copy goes on from the last
//! committed chunk and never stores a row twice. Ids are kept (alarm
//! serials, point ids, hazard and patrol ids), and the sequences are moved
//! past them at the end. Then every table's rows are counted on both sides.
//!
//! Not copied: sessions (everyone signs in again on the new store) and
//! `staging`, whose readings are first moved into samples.

use super::migrate::{ensure_days, migrate};
use super::{connect_to, PgError, Target};
use futures_util::pin_mut;
use rusqlite::types::Value as Cell;
use rusqlite::OpenFlags;
use std::path::Path;
use thiserror::Error;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

#[derive(Debug, Error)]
pub enum TransferError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("the SQLite store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("--to: database {db:?} already holds {table} rows and no copy was started into it; migrate into a new, empty database")]
    NotEmpty { db: String, table: String },
    #[error("{table}.{column}: {detail}")]
    Value {
        table: String,
        column: String,
        detail: String,
    },
    #[error("store.path: {} does not exist (is this the collector's configuration?)", .0.display())]
    NoStore(std::path::PathBuf),
    #[error("roomguard_transfer: the position reached in {0} is unreadable ({1}); delete its row to copy that table again from the start, after emptying it")]
    Cursor(String, String),
    #[error(
        "counts differ after the copy (is a collector still writing into the SQLite store?): {0}"
    )]
    Counts(String),
}

/// The tables copied, each with the columns that order it (its key).
const TABLES: &[(&str, &[&str])] = &[
    ("points", &["id"]),
    ("samples", &["point_id", "ts"]),
    ("batches", &["site", "agent", "seq"]),
    ("rollup_1m", &["point_id", "bucket"]),
    ("rollup_1h", &["point_id", "bucket"]),
    ("rollup_dirty", &["point_id", "bucket"]),
    ("agents", &["site", "agent"]),
    ("alarms", &["serial"]),
    ("alarm_events", &["id"]),
    ("alarm_state", &["key"]),
    ("silences", &["id"]),
    ("outbox", &["id"]),
    ("users", &["name"]),
    ("api_tokens", &["name"]),
    ("audit_log", &["id"]),
    ("hazards", &["id"]),
    ("hazard_events", &["id"]),
    ("patrols", &["id"]),
    ("patrol_photos", &["id"]),
    ("drills", &["id"]),
    ("inspection_state", &["key"]),
];

/// Tables whose id comes from a sequence, moved past the copied ids.
const SERIALS: &[(&str, &str)] = &[
    ("points", "id"),
    ("alarm_events", "id"),
    ("silences", "id"),
    ("outbox", "id"),
    ("audit_log", "id"),
    ("hazards", "id"),
    ("hazard_events", "id"),
    ("patrols", "id"),
    ("patrol_photos", "id"),
    ("drills", "id"),
];

/// One table's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Copied {
    pub table: String,
    /// Rows in the SQLite store (and, verified, in PostgreSQL).
    pub rows: i64,
    /// Rows copied by this run (the rest by an earlier, interrupted one).
    pub copied_now: i64,
}

/// A column as PostgreSQL has it.
struct Column {
    pg: String,
    /// SQLite's name (`user` where PostgreSQL says `user_name`).
    sqlite: String,
    ty: Type,
}

/// Copies the store at `path` into the database of `target`, `chunk` rows
/// per transaction, telling `progress` (table, rows done, rows in all).
pub async fn copy_store(
    path: &Path,
    target: &Target,
    chunk: usize,
    mut progress: impl FnMut(&str, i64, i64),
) -> Result<Vec<Copied>, TransferError> {
    // Never a store made here by a wrong path: it would copy nothing and
    // mark every table done.
    if !path.is_file() {
        return Err(TransferError::NoStore(path.to_owned()));
    }
    // Readings still waiting in staging go into samples first.
    crate::store::sqlite::SqliteWriter::open(path)?.move_pending()?;
    let src = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut pg = connect_to(target).await?;
    let db = target.config.get_dbname().unwrap_or("").to_owned();
    migrate(&mut pg, &db).await?;
    pg.batch_execute(
        "CREATE TABLE IF NOT EXISTS roomguard_transfer (
             tbl TEXT PRIMARY KEY, cursor TEXT, copied BIGINT NOT NULL, done BOOLEAN NOT NULL)",
    )
    .await
    .map_err(PgError::from)?;
    let started: i64 = pg
        .query_one("SELECT count(*) FROM roomguard_transfer", &[])
        .await
        .map_err(PgError::from)?
        .get(0);
    if started == 0 {
        for (table, _) in TABLES {
            let any: bool = pg
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await
                .map_err(PgError::from)?
                .get(0);
            if any {
                return Err(TransferError::NotEmpty {
                    db,
                    table: table.to_string(),
                });
            }
        }
    }
    let mut out = Vec::new();
    for (table, key) in TABLES {
        if !crate::store::sqlite::table_exists(&src, table)? {
            continue;
        }
        let total: i64 =
            src.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let copied_now = copy_table(&src, &mut pg, table, key, chunk, total, &mut progress).await?;
        out.push(Copied {
            table: table.to_string(),
            rows: total,
            copied_now,
        });
    }
    for (table, col) in SERIALS {
        pg.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), max({col})) FROM {table} HAVING max({col}) IS NOT NULL"
            ),
            &[],
        )
        .await
        .map_err(PgError::from)?;
    }
    // Counted on both sides.
    let mut differ = Vec::new();
    for c in &out {
        let there: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {}", c.table), &[])
            .await
            .map_err(PgError::from)?
            .get(0);
        let here: i64 = src.query_row(&format!("SELECT count(*) FROM {}", c.table), [], |r| {
            r.get(0)
        })?;
        if there != here {
            differ.push(format!(
                "{} {here} in SQLite, {there} in PostgreSQL",
                c.table
            ));
        }
    }
    if !differ.is_empty() {
        return Err(TransferError::Counts(differ.join("; ")));
    }
    Ok(out)
}

/// Copies one table from where an earlier run stopped; returns the rows
/// copied now.
async fn copy_table(
    src: &rusqlite::Connection,
    pg: &mut Client,
    table: &str,
    key: &[&str],
    chunk: usize,
    total: i64,
    progress: &mut impl FnMut(&str, i64, i64),
) -> Result<i64, TransferError> {
    let state = pg
        .query_opt(
            "SELECT cursor, copied, done FROM roomguard_transfer WHERE tbl = $1",
            &[&table],
        )
        .await
        .map_err(PgError::from)?;
    let (mut cursor, mut copied): (Option<Vec<serde_json::Value>>, i64) = match &state {
        Some(r) if r.get::<_, bool>(2) => return Ok(0),
        Some(r) => (
            match r.get::<_, Option<String>>(0) {
                Some(c) => Some(
                    serde_json::from_str(&c)
                        .map_err(|e| TransferError::Cursor(table.to_owned(), e.to_string()))?,
                ),
                None => None,
            },
            r.get(1),
        ),
        None => (None, 0),
    };
    // Photos are up to 2 MiB each: a few per transaction, not thousands.
    let chunk = if table == "patrol_photos" {
        chunk.min(16)
    } else {
        chunk
    };
    let columns = columns(src, pg, table).await?;
    let names: Vec<&str> = columns.iter().map(|c| c.sqlite.as_str()).collect();
    let key_at: Vec<usize> = key
        .iter()
        .map(|k| {
            names
                .iter()
                .position(|n| n == k)
                .expect("key columns are columns")
        })
        .collect();
    let select = |after: bool| {
        let cols = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = key.join(", ");
        let marks = vec!["?"; key.len()].join(", ");
        let filter = if after {
            format!("WHERE ({keys}) > ({marks})")
        } else {
            String::new()
        };
        format!("SELECT {cols} FROM {table} {filter} ORDER BY {keys} LIMIT {chunk}")
    };
    let (first, next) = (select(false), select(true));
    let types: Vec<Type> = columns.iter().map(|c| c.ty.clone()).collect();
    let pg_cols = columns
        .iter()
        .map(|c| c.pg.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut partitions = std::collections::HashSet::new();
    let mut copied_now = 0;
    loop {
        let rows: Vec<Vec<Cell>> = {
            let (sql, args): (&str, Vec<Cell>) = match &cursor {
                None => (&first, Vec::new()),
                Some(c) => (&next, c.iter().map(json_cell).collect()),
            };
            let mut st = src.prepare_cached(sql)?;
            let n = names.len();
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                (0..n)
                    .map(|i| r.get::<_, Cell>(i))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let Some(last) = rows.last() else {
            pg.execute(
                "INSERT INTO roomguard_transfer (tbl, cursor, copied, done) VALUES ($1, NULL, $2, TRUE)
                 ON CONFLICT (tbl) DO UPDATE SET done = TRUE",
                &[&table, &copied],
            )
            .await
            .map_err(PgError::from)?;
            return Ok(copied_now);
        };
        let reached: Vec<serde_json::Value> = key_at.iter().map(|&i| cell_json(&last[i])).collect();
        let tx = pg.transaction().await.map_err(PgError::from)?;
        if table == "samples" {
            let ts_at = names
                .iter()
                .position(|n| *n == "ts")
                .expect("samples have ts");
            let times = rows.iter().filter_map(|r| match r[ts_at] {
                Cell::Integer(t) => Some(t),
                _ => None,
            });
            ensure_days(&tx, times, &mut partitions).await?;
        }
        let sink = tx
            .copy_in(&format!("COPY {table} ({pg_cols}) FROM STDIN BINARY"))
            .await
            .map_err(PgError::from)?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let n = rows.len() as i64;
        for row in rows {
            let values = row
                .into_iter()
                .zip(&columns)
                .map(|(cell, col)| value(cell, col, table))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            writer.as_mut().write(&refs).await.map_err(PgError::from)?;
        }
        writer.finish().await.map_err(PgError::from)?;
        copied += n;
        copied_now += n;
        let reached_text = serde_json::to_string(&reached).unwrap_or_default();
        tx.execute(
            "INSERT INTO roomguard_transfer (tbl, cursor, copied, done) VALUES ($1, $2, $3, FALSE)
             ON CONFLICT (tbl) DO UPDATE SET cursor = excluded.cursor, copied = excluded.copied",
            &[&table, &reached_text, &copied],
        )
        .await
        .map_err(PgError::from)?;
        tx.commit().await.map_err(PgError::from)?;
        progress(table, copied, total);
        cursor = Some(reached);
    }
}

/// The table's columns in PostgreSQL's order, with SQLite's names, checked
/// to exist in the SQLite table.
async fn columns(
    src: &rusqlite::Connection,
    pg: &Client,
    table: &str,
) -> Result<Vec<Column>, TransferError> {
    let rows = pg
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .map_err(PgError::from)?;
    let mut have = std::collections::HashSet::new();
    let mut st = src.prepare(&format!("PRAGMA table_info({table})"))?;
    for name in st.query_map([], |r| r.get::<_, String>(1))? {
        have.insert(name?);
    }
    let mut out = Vec::new();
    for r in rows {
        let pg_name: String = r.get(0);
        let data_type: String = r.get(1);
        // The cluster's claims on outbox rows exist only on PostgreSQL
        // (a copied row is unclaimed).
        if table == "outbox" && matches!(pg_name.as_str(), "claimed_by" | "claim_until") {
            continue;
        }
        let sqlite = if pg_name == "user_name" {
            "user".to_owned()
        } else {
            pg_name.clone()
        };
        let ty = match data_type.as_str() {
            "bigint" => Type::INT8,
            "integer" => Type::INT4,
            "smallint" => Type::INT2,
            "double precision" => Type::FLOAT8,
            "boolean" => Type::BOOL,
            "bytea" => Type::BYTEA,
            _ => Type::TEXT,
        };
        if !have.contains(&sqlite) {
            return Err(TransferError::Value {
                table: table.into(),
                column: sqlite,
                detail: "missing in the SQLite store (made by an older collector? start it once to bring its schema up to date)".into(),
            });
        }
        out.push(Column {
            pg: pg_name,
            sqlite,
            ty,
        });
    }
    Ok(out)
}

/// One SQLite cell as the PostgreSQL column's type.
fn value(cell: Cell, col: &Column, table: &str) -> Result<Box<dyn ToSql + Sync>, TransferError> {
    let wrong = |detail: String| TransferError::Value {
        table: table.into(),
        column: col.sqlite.clone(),
        detail,
    };
    let int = |c: &Cell| match c {
        Cell::Integer(i) => Ok(*i),
        Cell::Real(f) if f.fract() == 0.0 => Ok(*f as i64),
        other => Err(wrong(format!("{other:?} is not an integer"))),
    };
    Ok(match (cell, &col.ty) {
        (Cell::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Cell::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Cell::Null, t) if *t == Type::INT2 => Box::new(None::<i16>),
        (Cell::Null, t) if *t == Type::FLOAT8 => Box::new(None::<f64>),
        (Cell::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Cell::Null, t) if *t == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Cell::Null, _) => Box::new(None::<String>),
        (c, t) if *t == Type::INT8 => Box::new(Some(int(&c)?)),
        (c, t) if *t == Type::INT4 => Box::new(Some(
            i32::try_from(int(&c)?).map_err(|e| wrong(e.to_string()))?,
        )),
        (c, t) if *t == Type::INT2 => Box::new(Some(
            i16::try_from(int(&c)?).map_err(|e| wrong(e.to_string()))?,
        )),
        (c, t) if *t == Type::BOOL => Box::new(Some(int(&c)? != 0)),
        (Cell::Real(f), t) if *t == Type::FLOAT8 => Box::new(Some(f)),
        (Cell::Integer(i), t) if *t == Type::FLOAT8 => Box::new(Some(i as f64)),
        (Cell::Blob(b), t) if *t == Type::BYTEA => Box::new(Some(b)),
        (Cell::Text(s), t) if *t == Type::BYTEA => Box::new(Some(s.into_bytes())),
        (Cell::Text(s), t) if *t == Type::TEXT => Box::new(Some(s)),
        (Cell::Integer(i), t) if *t == Type::TEXT => Box::new(Some(i.to_string())),
        (Cell::Real(f), t) if *t == Type::TEXT => Box::new(Some(f.to_string())),
        (other, t) => return Err(wrong(format!("{other:?} cannot be stored as {t}"))),
    })
}

/// A key value kept in the cursor.
fn cell_json(c: &Cell) -> serde_json::Value {
    match c {
        Cell::Integer(i) => (*i).into(),
        Cell::Real(f) => (*f).into(),
        Cell::Text(s) => s.clone().into(),
        Cell::Blob(b) => crate::auth::hex(b).into(),
        Cell::Null => serde_json::Value::Null,
    }
}

/// A cursor's key value, to compare in SQLite.
fn json_cell(v: &serde_json::Value) -> Cell {
    match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Integer(i),
            None => Cell::Real(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Cell::Text(s.clone()),
        _ => Cell::Null,
    }
}
