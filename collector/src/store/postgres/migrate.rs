//! The PostgreSQL schema, in numbered migrations applied at start, each in
//! its own transaction under an advisory lock (several collectors starting
//! at once apply each migration once). A database whose schema is newer
//! than this build knows is refused rather than written into; a database
//! holding another application's tables is refused rather than mixed with.

use super::PgError;
use tokio_postgres::{Client, GenericClient};

/// The advisory lock key the migrations take ("RGSCHEMA" in ASCII).
const LOCK: i64 = 0x5247_5343_4845_4d41;

/// The advisory lock key making a day's partition takes ("RGPARTIT").
const PARTITION_LOCK: i64 = 0x5247_5041_5254_4954;

/// (version, SQL), in order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4)];

/// Drills kept apart and one fault one incident: an alarm raised inside a
/// declared drill names it, every alarm names its incident (the serial of
/// the incident's first alarm), and every drill has an end (a planned one
/// where none was given).
const V4: &str = r#"
ALTER TABLE alarms ADD COLUMN drill BIGINT, ADD COLUMN incident BIGINT;
CREATE INDEX alarms_by_drill ON alarms (drill) WHERE drill IS NOT NULL;
CREATE INDEX alarms_by_incident ON alarms (incident);
ALTER TABLE hazards ADD COLUMN alarm BIGINT;
UPDATE drills SET ended_at = started_at + 1800000 WHERE ended_at IS NULL;
ALTER TABLE drills ADD COLUMN declared_at BIGINT;
UPDATE drills SET declared_at = started_at;
ALTER TABLE drills ALTER COLUMN ended_at SET NOT NULL;
CREATE INDEX drills_by_end ON drills (ended_at);
"#;

/// The readings core, as in SQLite: the point catalogue, samples keyed by
/// (point, event time), the batch register that makes a resent batch a
/// no-op, rollups and the minutes waiting for them, agents' statuses.
/// Samples are partitioned by day of event time ([`partition_for`]), so
/// retention drops whole partitions instead of deleting rows. The catalogue
/// takes every point's newest reading at every write: half-full pages let
/// those updates stay on their page (HOT, no index writes).
const V1: &str = r#"
CREATE TABLE points (
    id          BIGSERIAL PRIMARY KEY,
    site        TEXT NOT NULL,
    point       TEXT NOT NULL,
    agent       TEXT NOT NULL,
    room        TEXT NOT NULL,
    device      TEXT NOT NULL,
    quantity    TEXT NOT NULL,
    unit        TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    last_ts     BIGINT,
    last_value  DOUBLE PRECISION,
    last_text   TEXT,
    last_bad    TEXT,
    UNIQUE (site, point)
) WITH (fillfactor = 50);
CREATE TABLE samples (
    point_id BIGINT NOT NULL,
    ts       BIGINT NOT NULL,
    value    DOUBLE PRECISION,
    text     TEXT,
    bad      TEXT,
    PRIMARY KEY (point_id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE batches (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    device      TEXT NOT NULL,
    polled_at   BIGINT NOT NULL,
    readings    INTEGER NOT NULL,
    backfill    BOOLEAN NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (site, agent, seq)
);
CREATE INDEX batches_by_time ON batches (polled_at);
CREATE TABLE rollup_1m (
    point_id BIGINT NOT NULL,
    bucket   BIGINT NOT NULL,
    n        BIGINT NOT NULL,
    min      DOUBLE PRECISION NOT NULL,
    max      DOUBLE PRECISION NOT NULL,
    sum      DOUBLE PRECISION NOT NULL,
    last_ts  BIGINT NOT NULL,
    last     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (point_id, bucket)
);
CREATE TABLE rollup_1h (LIKE rollup_1m INCLUDING ALL);
CREATE TABLE rollup_dirty (
    point_id BIGINT NOT NULL,
    bucket   BIGINT NOT NULL,
    PRIMARY KEY (point_id, bucket)
);
CREATE TABLE agents (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    state       TEXT NOT NULL,
    status_json TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (site, agent)
);
"#;

/// The alarm record (alarms, their trail, the engine's state, silences,
/// the outbox), users and audit, and the inspection tables, as in SQLite
/// (`store/schema.rs`). `user` is a reserved word here: the columns that
/// SQLite calls `user` are `user_name`. Append-only tables refuse updates
/// and deletes by trigger, as in SQLite.
/// The cluster (docs/SCALING.md): nodes and their heartbeats, a fenced
/// lease per site partition (and negative ones for work done by one node at
/// a time), the sites seen and their partitions, one sequence for alarm
/// serials shared by every node's engine, and claims on outbox rows so any
/// node may deliver them. Times are the database's (`now()`), never a
/// host's clock. A single collector takes its serials from it too, so a store
/// may turn into a cluster's without renumbering.
const V3: &str = r#"
CREATE TABLE cluster_nodes (
    node       TEXT PRIMARY KEY,
    http       TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    leaving    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE cluster_leases (
    part       INTEGER PRIMARY KEY,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    taken_at   TIMESTAMPTZ,
    renewed_at TIMESTAMPTZ
);
CREATE TABLE cluster_settings (
    id         BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    partitions INTEGER NOT NULL
);
CREATE TABLE cluster_sites (
    site       TEXT PRIMARY KEY,
    part       INTEGER NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE SEQUENCE alarm_serials;
SELECT setval('alarm_serials', coalesce(max(serial), 0) + 1, false) FROM alarms;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT, ADD COLUMN claim_until TIMESTAMPTZ;
"#;

const V2: &str = r#"
CREATE TABLE alarms (
    serial      BIGINT PRIMARY KEY,
    rule        TEXT NOT NULL,
    name        TEXT NOT NULL,
    level       SMALLINT NOT NULL,
    category    TEXT NOT NULL,
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    room        TEXT NOT NULL,
    device      TEXT NOT NULL,
    point       TEXT NOT NULL,
    began_at    BIGINT NOT NULL,
    raised_at   BIGINT NOT NULL,
    value       DOUBLE PRECISION,
    cleared_at  BIGINT,
    clear_value DOUBLE PRECISION,
    late        BOOLEAN NOT NULL DEFAULT FALSE,
    inhibited   BOOLEAN NOT NULL DEFAULT FALSE,
    silenced_by BIGINT,
    notified    BOOLEAN NOT NULL DEFAULT FALSE,
    notified_at BIGINT,
    escalated   BOOLEAN NOT NULL DEFAULT FALSE,
    ack_by      TEXT,
    ack_at      BIGINT,
    ack_comment TEXT,
    assignee    TEXT,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX alarms_by_time ON alarms (raised_at);
CREATE INDEX alarms_unacknowledged ON alarms (raised_at) WHERE ack_at IS NULL;
CREATE INDEX alarms_active ON alarms (raised_at) WHERE cleared_at IS NULL;
CREATE TABLE alarm_events (
    id      BIGSERIAL PRIMARY KEY,
    serial  BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    by      TEXT NOT NULL,
    text    TEXT
);
CREATE INDEX alarm_events_by_serial ON alarm_events (serial);
CREATE TABLE alarm_state (
    key   TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE silences (
    id         BIGSERIAL PRIMARY KEY,
    site       TEXT,
    room       TEXT,
    rule       TEXT,
    reason     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    ended_at   BIGINT,
    ended_by   TEXT
);
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    channel    TEXT NOT NULL,
    key        TEXT NOT NULL,
    serial     BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at    BIGINT,
    UNIQUE (channel, key)
);
CREATE INDEX outbox_due ON outbox (state, next_at);
CREATE INDEX outbox_by_alarm ON outbox (serial, channel, id);
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    user_name  TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    token_hash BYTEA PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT,
    revoked_by TEXT
);
CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    user_name TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT
);
CREATE TABLE hazards (
    id          BIGSERIAL PRIMARY KEY,
    site        TEXT NOT NULL,
    room        TEXT NOT NULL,
    category    TEXT NOT NULL,
    grade       TEXT NOT NULL,
    description TEXT NOT NULL,
    found_by    TEXT NOT NULL,
    found_at    BIGINT NOT NULL,
    owner       TEXT,
    deadline    BIGINT,
    plan        TEXT,
    status      TEXT NOT NULL,
    evidence    TEXT,
    verifier    TEXT,
    closed_at   BIGINT,
    source      TEXT NOT NULL,
    rule        TEXT,
    overdue_told_at BIGINT,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX hazards_by_site ON hazards (site, status);
CREATE TABLE hazard_events (
    id      BIGSERIAL PRIMARY KEY,
    hazard  BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    by      TEXT NOT NULL,
    action  TEXT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX hazard_events_by_hazard ON hazard_events (hazard);
CREATE TABLE patrols (
    id          BIGSERIAL PRIMARY KEY,
    site        TEXT NOT NULL,
    room        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    slot        BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    by          TEXT NOT NULL,
    period_from BIGINT NOT NULL,
    period_to   BIGINT NOT NULL,
    record      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    UNIQUE (site, room, kind, slot)
);
CREATE INDEX patrols_by_time ON patrols (slot);
CREATE TABLE patrol_photos (
    id           BIGSERIAL PRIMARY KEY,
    patrol       BIGINT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data         BYTEA NOT NULL,
    sha256       TEXT NOT NULL
);
CREATE INDEX patrol_photos_by_patrol ON patrol_photos (patrol);
CREATE TABLE drills (
    id         BIGSERIAL PRIMARY KEY,
    site       TEXT NOT NULL,
    room       TEXT NOT NULL,
    scenario   TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT,
    by         TEXT NOT NULL,
    note       TEXT
);
CREATE INDEX drills_by_time ON drills (started_at);
CREATE TABLE inspection_state (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE FUNCTION roomguard_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER hazard_events_append_only BEFORE UPDATE OR DELETE ON hazard_events
    FOR EACH ROW EXECUTE FUNCTION roomguard_append_only();
CREATE TRIGGER patrols_append_only BEFORE UPDATE OR DELETE ON patrols
    FOR EACH ROW EXECUTE FUNCTION roomguard_append_only();
CREATE TRIGGER patrol_photos_append_only BEFORE UPDATE OR DELETE ON patrol_photos
    FOR EACH ROW EXECUTE FUNCTION roomguard_append_only();
"#;

/// The newest schema version this build knows.
pub fn known() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Brings the database to [`known`]; returns the versions applied now.
pub async fn migrate(client: &mut Client, db: &str) -> Result<Vec<i32>, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    let ours = tx
        .query_one("SELECT to_regclass('roomguard_schema') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if !ours {
        let others: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() ORDER BY 1 LIMIT 6",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !others.is_empty() {
            return Err(PgError::Foreign {
                db: db.to_owned(),
                tables: others.join(", "),
            });
        }
        tx.batch_execute(
            "CREATE TABLE roomguard_schema (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    }
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM roomguard_schema",
            &[],
        )
        .await?
        .get(0);
    if found > known() {
        return Err(PgError::Newer {
            db: db.to_owned(),
            found,
            known: known(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO roomguard_schema (version, applied_at) VALUES ($1, $2)",
            &[version, &roomguard_protocol::clock::now_ms()],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// One day of event time, in ms.
const DAY_MS: i64 = 86_400_000;

/// The day partition of `samples` holding event time `ts`: its name and
/// `[from, to)`.
pub fn partition_for(ts: i64) -> (String, i64, i64) {
    let from = ts.div_euclid(DAY_MS) * DAY_MS;
    let day = jiff::Timestamp::from_millisecond(from)
        .map(|t| t.strftime("%Y%m%d").to_string())
        .unwrap_or_else(|_| from.to_string());
    (format!("samples_{day}"), from, from + DAY_MS)
}

/// Makes sure the partitions for event times in `[from, to]` exist; days
/// in `known` are skipped, days made are added to it.
pub async fn ensure_partitions<C: GenericClient>(
    client: &C,
    from: i64,
    to: i64,
    known: &mut std::collections::HashSet<i64>,
) -> Result<(), PgError> {
    let mut day = from.div_euclid(DAY_MS) * DAY_MS;
    while day <= to {
        if known.contains(&day) {
            day += DAY_MS;
            continue;
        }
        let (name, lo, hi) = partition_for(day);
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get::<_, bool>(0);
        if !exists {
            // Collectors sharing the database (a cluster) make a new day's
            // partition at the same moment; `IF NOT EXISTS` alone does not
            // keep two from colliding, so they take turns (the lock lasts to
            // the end of the transaction).
            client
                .batch_execute(&format!(
                    "SELECT pg_advisory_xact_lock({PARTITION_LOCK});
                     CREATE TABLE IF NOT EXISTS {name} PARTITION OF samples FOR VALUES FROM ({lo}) TO ({hi})"
                ))
                .await?;
        }
        known.insert(day);
        day += DAY_MS;
    }
    Ok(())
}

/// Makes sure the partitions of the days `times` fall on exist (each day
/// once, only those days); days in `known` are skipped, days made added.
pub async fn ensure_days<C: GenericClient>(
    client: &C,
    times: impl Iterator<Item = i64>,
    known: &mut std::collections::HashSet<i64>,
) -> Result<(), PgError> {
    let days: std::collections::BTreeSet<i64> = times
        .map(|t| t.div_euclid(DAY_MS) * DAY_MS)
        .filter(|d| !known.contains(d))
        .collect();
    for day in days {
        ensure_partitions(client, day, day, known).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_lands_in_the_partition_of_its_utc_day() {
        let (name, from, to) = partition_for(1_796_600_000_000); // 2026-12-06T…Z
        assert_eq!(name, "samples_20261206");
        assert!(from <= 1_796_600_000_000 && 1_796_600_000_000 < to);
        assert_eq!(to - from, DAY_MS);
        // Before 1970 still names a day (negative times floor, not truncate).
        assert_eq!(partition_for(-1).0, "samples_19691231");
    }

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i32 + 1);
        }
    }
}
