//! Every table of the SQLite store, in one place: readings and the
//! catalogue live in `sqlite.rs`; here the alarm record, users and audit, and
//! the inspection tables (hazards, patrols, drills). Created at open by the
//! store (`sqlite.rs`), in the order they depend on each other.

use rusqlite::Connection;

/// The alarm record: alarms, their audit trail, the engine's state,
/// silences and the notification outbox.
pub const ALARMS: &str = r#"
CREATE TABLE IF NOT EXISTS alarms (
    serial      INTEGER PRIMARY KEY,
    rule        TEXT NOT NULL,
    name        TEXT NOT NULL,
    level       INTEGER NOT NULL,
    category    TEXT NOT NULL,
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    room        TEXT NOT NULL,
    device      TEXT NOT NULL,
    point       TEXT NOT NULL,
    began_at    INTEGER NOT NULL,
    raised_at   INTEGER NOT NULL,
    value       REAL,
    cleared_at  INTEGER,
    clear_value REAL,
    late        INTEGER NOT NULL DEFAULT 0,
    inhibited   INTEGER NOT NULL DEFAULT 0,
    silenced_by INTEGER,
    notified    INTEGER NOT NULL DEFAULT 0,
    notified_at INTEGER,
    escalated   INTEGER NOT NULL DEFAULT 0,
    ack_by      TEXT,
    ack_at      INTEGER,
    ack_comment TEXT,
    assignee    TEXT,
    updated_at  INTEGER NOT NULL,
    drill       INTEGER,
    incident    INTEGER
);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms (cleared_at, ack_at);
CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (raised_at);
CREATE TABLE IF NOT EXISTS alarm_events (
    id      INTEGER PRIMARY KEY,
    serial  INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    by      TEXT NOT NULL,
    text    TEXT
);
CREATE INDEX IF NOT EXISTS alarm_events_by_serial ON alarm_events (serial);
CREATE TABLE IF NOT EXISTS alarm_state (
    key   TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS silences (
    id         INTEGER PRIMARY KEY,
    site       TEXT,
    room       TEXT,
    rule       TEXT,
    reason     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    starts_at  INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    ended_at   INTEGER,
    ended_by   TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY,
    channel    TEXT NOT NULL,
    key        TEXT NOT NULL,
    serial     INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER,
    UNIQUE (channel, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
CREATE INDEX IF NOT EXISTS outbox_by_alarm ON outbox (serial, channel, id);
CREATE INDEX IF NOT EXISTS alarms_unacknowledged ON alarms (raised_at) WHERE ack_at IS NULL;
CREATE INDEX IF NOT EXISTS alarms_active ON alarms (raised_at) WHERE cleared_at IS NULL;
"#;

/// After [`ALARMS`] on a file of any version (the column may be new).
pub const ALARMS_BY_DRILL: &str =
    "CREATE INDEX IF NOT EXISTS alarms_by_drill ON alarms (drill) WHERE drill IS NOT NULL;
     CREATE INDEX IF NOT EXISTS alarms_by_incident ON alarms (incident);";

/// Users, sessions, tokens and the audit log.
pub const AUTH: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash BLOB PRIMARY KEY,
    user       TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash BLOB PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_log (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    user   TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT
);
"#;

/// The hazard register and its append-only trail.
pub const HAZARDS: &str = r#"
CREATE TABLE IF NOT EXISTS hazards (
    id          INTEGER PRIMARY KEY,
    site        TEXT NOT NULL,
    room        TEXT NOT NULL,
    category    TEXT NOT NULL,
    grade       TEXT NOT NULL,
    description TEXT NOT NULL,
    found_by    TEXT NOT NULL,
    found_at    INTEGER NOT NULL,
    owner       TEXT,
    deadline    INTEGER,
    plan        TEXT,
    status      TEXT NOT NULL,
    evidence    TEXT,
    verifier    TEXT,
    closed_at   INTEGER,
    source      TEXT NOT NULL,
    rule        TEXT,
    overdue_told_at INTEGER,
    updated_at  INTEGER NOT NULL,
    alarm       INTEGER
);
CREATE INDEX IF NOT EXISTS hazards_by_site ON hazards (site, status);
CREATE TABLE IF NOT EXISTS hazard_events (
    id      INTEGER PRIMARY KEY,
    hazard  INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    by      TEXT NOT NULL,
    action  TEXT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hazard_events_by_hazard ON hazard_events (hazard);
CREATE TRIGGER IF NOT EXISTS hazard_events_no_update BEFORE UPDATE ON hazard_events
BEGIN SELECT RAISE(ABORT, 'hazard_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS hazard_events_no_delete BEFORE DELETE ON hazard_events
BEGIN SELECT RAISE(ABORT, 'hazard_events is append-only'); END;
"#;

/// Patrol records (append-only).
pub const PATROLS: &str = r#"
CREATE TABLE IF NOT EXISTS patrols (
    id          INTEGER PRIMARY KEY,
    site        TEXT NOT NULL,
    room        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    by          TEXT NOT NULL,
    period_from INTEGER NOT NULL,
    period_to   INTEGER NOT NULL,
    record      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    UNIQUE (site, room, kind, slot)
);
CREATE INDEX IF NOT EXISTS patrols_by_time ON patrols (slot);
CREATE TABLE IF NOT EXISTS patrol_photos (
    id           INTEGER PRIMARY KEY,
    patrol       INTEGER NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data         BLOB NOT NULL,
    sha256       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patrol_photos_by_patrol ON patrol_photos (patrol);
CREATE TRIGGER IF NOT EXISTS patrols_no_update BEFORE UPDATE ON patrols
BEGIN SELECT RAISE(ABORT, 'patrol records are immutable'); END;
CREATE TRIGGER IF NOT EXISTS patrols_no_delete BEFORE DELETE ON patrols
BEGIN SELECT RAISE(ABORT, 'patrol records are immutable'); END;
CREATE TRIGGER IF NOT EXISTS patrol_photos_no_update BEFORE UPDATE ON patrol_photos
BEGIN SELECT RAISE(ABORT, 'patrol records are immutable'); END;
CREATE TRIGGER IF NOT EXISTS patrol_photos_no_delete BEFORE DELETE ON patrol_photos
BEGIN SELECT RAISE(ABORT, 'patrol records are immutable'); END;
"#;

/// Drills and the inspection round's own state.
pub const DRILLS: &str = r#"
CREATE TABLE IF NOT EXISTS drills (
    id         INTEGER PRIMARY KEY,
    site       TEXT NOT NULL,
    room       TEXT NOT NULL,
    scenario   TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    by         TEXT NOT NULL,
    note       TEXT,
    declared_at INTEGER
);
CREATE INDEX IF NOT EXISTS drills_by_time ON drills (started_at);
CREATE INDEX IF NOT EXISTS drills_by_end ON drills (ended_at);
CREATE TABLE IF NOT EXISTS inspection_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

/// How long a drill declared without an end lasts.
pub const DRILL_DEFAULT_MS: i64 = 30 * 60_000;

/// Version 8's changes (drills kept apart, alarms grouped into incidents,
/// hazards naming the alarm that proposed them)
/// to a file made by an older version (a no-op on a
/// new file, whose tables already have them).
pub fn upgrade_to_8(c: &Connection) -> Result<(), rusqlite::Error> {
    for (table, column) in [
        ("alarms", "drill"),
        ("alarms", "incident"),
        ("hazards", "alarm"),
        ("drills", "declared_at"),
    ] {
        let has: bool = c.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} INTEGER"))?;
        }
    }
    c.execute_batch(ALARMS_BY_DRILL)?;
    c.execute(
        "UPDATE drills SET ended_at = started_at + ?1 WHERE ended_at IS NULL",
        [DRILL_DEFAULT_MS],
    )?;
    c.execute_batch("UPDATE drills SET declared_at = started_at WHERE declared_at IS NULL")?;
    Ok(())
}

/// The inspection tables, after the alarm record they read.
pub fn init_inspection(c: &Connection) -> Result<(), rusqlite::Error> {
    c.execute_batch(HAZARDS)?;
    c.execute_batch(PATROLS)?;
    c.execute_batch(DRILLS)?;
    crate::store::inspection::start_proposals(crate::store::sql::Db::lite(c)).map_err(|e| match e {
        crate::store::sql::SqlError::Sqlite(e) => e,
        other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
    })
}
