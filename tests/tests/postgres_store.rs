//! The PostgreSQL backend of the store against a real PostgreSQL the test
//! starts (issue 21): the schema is applied once and versioned, a newer
//! schema or another application's database is refused, and each way of
//! failing to connect names the setting at fault.

use anyhow::Result;
use roomguard_collector::store::postgres::{self, migrate, PgError};
use roomguard_e2e::*;

async fn client(pg: &Postgres, db: &str) -> Result<tokio_postgres::Client> {
    let cfg = postgres::settings(&pg.url(db), Some(Postgres::PASSWORD))?;
    Ok(postgres::connect(&cfg).await?)
}

#[tokio::test]
async fn the_schema_is_applied_once_and_a_newer_or_foreign_database_is_refused() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE roomguard")?;
    let mut c = client(&pg, "roomguard").await?;
    assert_eq!(migrate::migrate(&mut c, "roomguard").await?, [1, 2, 3, 4]);
    // The trails and patrol records are append-only here too.
    pg.psql(
        "roomguard",
        "INSERT INTO patrols (site, room, kind, slot, at, by, period_from, period_to, record, digest)
         VALUES ('s', 'r', 'auto', 0, 0, 'roomguard', 0, 0, '{}', 'x')",
    )?;
    for sql in ["UPDATE patrols SET by = 'x'", "DELETE FROM patrols"] {
        let e = pg.psql("roomguard", sql).unwrap_err().to_string();
        assert!(e.contains("patrols is append-only"), "{sql}: {e}");
    }
    assert!(
        migrate::migrate(&mut c, "roomguard").await?.is_empty(),
        "applied once"
    );
    // Samples go to the partition of their day.
    let ts = 1_796_600_000_000i64;
    migrate::ensure_partitions(&c, ts, ts, &mut Default::default()).await?;
    c.execute("INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
               VALUES ('s', 'p', 'a', 'r', 'd', 'temperature', '°C', 0, 0)", &[]).await?;
    c.execute(
        "INSERT INTO samples (point_id, ts, value) VALUES (1, $1, 21.5)",
        &[&ts],
    )
    .await?;
    assert_eq!(
        pg.psql("roomguard", "SELECT count(*) FROM samples_20261206")?,
        "1"
    );

    // A schema from a newer collector: refused, nothing changed.
    pg.psql("roomguard", "INSERT INTO roomguard_schema VALUES (99, 0)")?;
    let e = migrate::migrate(&mut c, "roomguard").await.unwrap_err();
    assert!(matches!(e, PgError::Newer { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("version 99"), "{e}");

    // Another application's database: refused, naming its tables.
    pg.psql("postgres", "CREATE DATABASE billing")?;
    pg.psql("billing", "CREATE TABLE invoices (id int)")?;
    let mut other = client(&pg, "billing").await?;
    let e = migrate::migrate(&mut other, "billing").await.unwrap_err();
    assert!(
        matches!(&e, PgError::Foreign { tables, .. } if tables == "invoices"),
        "{e}"
    );
    assert_eq!(
        pg.psql(
            "billing",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )?,
        "1"
    );
    Ok(())
}

#[tokio::test]
async fn each_way_of_failing_to_connect_names_its_setting() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let fail = |url: String, password: Option<&'static str>| async move {
        let cfg = postgres::settings(&url, password).expect("a valid URL");
        postgres::connect(&cfg)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let wrong = fail(pg.url("postgres"), Some("not-the-password")).await;
    assert!(
        wrong.starts_with("store.password: PostgreSQL refused user \"postgres\""),
        "{wrong}"
    );
    let none = fail(pg.url("postgres"), None).await;
    assert!(none.starts_with("store.password:"), "{none}");
    let missing = fail(pg.url("nosuchdb"), Some(Postgres::PASSWORD)).await;
    assert!(
        missing.contains("database \"nosuchdb\" does not exist"),
        "{missing}"
    );
    let closed = free_port();
    let away = fail(
        format!("postgresql://postgres@127.0.0.1:{closed}/postgres"),
        Some(Postgres::PASSWORD),
    )
    .await;
    assert!(
        away.starts_with(&format!(
            "store.url: cannot reach PostgreSQL at 127.0.0.1:{closed}"
        )),
        "{away}"
    );
    Ok(())
}

/// A database `roomguard` made for the test, its settings, and the writer
/// (which applies the schema).
async fn fresh_store(
    pg: &Postgres,
) -> Result<(
    tokio_postgres::Config,
    roomguard_collector::store::postgres::writer::PgWriter,
)> {
    pg.psql("postgres", "CREATE DATABASE roomguard")?;
    let cfg = postgres::settings(&pg.url("roomguard"), Some(Postgres::PASSWORD))?;
    let target = postgres::Target {
        config: cfg.clone(),
        tls: None,
    };
    let w = roomguard_collector::store::postgres::writer::PgWriter::open(&target).await?;
    Ok((cfg, w))
}

/// A batch of `readings` of device `d` (points `d.pN`), at `ts`, described.
fn batch(seq: u64, ts: i64, values: &[Option<f64>]) -> roomguard_protocol::Batch {
    use roomguard_protocol::{Batch, Label, PointMeta, Quality, Reading, PROTOCOL_VERSION};
    Batch {
        v: PROTOCOL_VERSION,
        site: "s".into(),
        agent: "a".into(),
        seq,
        device: "d".into(),
        polled_at: ts,
        backfill: false,
        points: (0..values.len())
            .map(|i| PointMeta {
                id: Label::from(format!("d.p{i}").as_str()),
                room: "battery-room".into(),
                quantity: "temperature".into(),
                unit: "°C".into(),
            })
            .collect(),
        readings: values
            .iter()
            .enumerate()
            .map(|(i, v)| Reading {
                point: Label::from(format!("d.p{i}").as_str()),
                value: *v,
                text: None,
                ts,
                quality: match v {
                    Some(_) => Quality::Good,
                    None => Quality::Bad("no reply".into()),
                },
            })
            .collect(),
    }
}

/// Ingest keeps the store's promises on PostgreSQL as on SQLite: a batch
/// sent again is stored once, a reading stored already is counted and not
/// stored again, a late backlog does not replace a newer latest value, bad
/// readings keep their reason, readings land in their day's partition and
/// their minutes wait for rollups.
#[tokio::test]
async fn ingest_stores_each_batch_and_reading_once_and_keeps_the_newest_as_latest() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let (_, mut w) = fresh_store(&pg).await?;
    let t0 = 1_796_600_000_000i64; // 2026-12-06, 23:33 UTC
    let day = 86_400_000;
    let now = t0 + 2 * day;
    let first = w
        .write_batches(
            &[
                batch(1, t0, &[Some(21.0), None]),
                batch(2, t0 + day, &[Some(22.0), Some(5.0)]),
            ],
            now,
            None,
        )
        .await?;
    assert_eq!((first.batches, first.readings, first.duplicates), (2, 4, 0));
    // The same batch again, and a new batch repeating a stored reading.
    let again = w
        .write_batches(
            &[
                batch(2, t0 + day, &[Some(22.0), Some(5.0)]),
                batch(3, t0 + day, &[Some(22.0), Some(6.0)]),
            ],
            now,
            None,
        )
        .await?;
    assert_eq!(again.duplicate_batches, 1);
    assert_eq!((again.batches, again.readings, again.duplicates), (1, 0, 4));
    // A late backlog from before: stored, but the latest stays the newest.
    let late = w
        .write_batches(
            &[batch(4, t0 - 60_000, &[Some(19.0), Some(4.0)])],
            now,
            None,
        )
        .await?;
    assert_eq!(late.readings, 2);
    // The catalogue takes the newest readings at most once a second (and at
    // each maintenance step); here, now.
    w.flush_latest(now).await?;
    let q = |sql: &str| pg.psql("roomguard", sql);
    assert_eq!(q("SELECT count(*) FROM samples")?, "6");
    assert_eq!(q("SELECT count(*) FROM batches")?, "4");
    assert_eq!(
        q("SELECT last_value FROM points WHERE point = 'd.p0'")?,
        "22"
    );
    assert_eq!(
        q("SELECT last_ts = 1796686400000 FROM points WHERE point = 'd.p0'")?,
        "t"
    );
    assert_eq!(q("SELECT bad FROM samples WHERE point_id = (SELECT id FROM points WHERE point = 'd.p1') AND ts = 1796600000000")?, "no reply");
    assert_eq!(
        q("SELECT room || '/' || quantity || '/' || unit FROM points WHERE point = 'd.p1'")?,
        "battery-room/temperature/°C"
    );
    // Two days, two partitions (and the backlog's minute is in the first).
    assert_eq!(
        q("SELECT count(*) FROM pg_inherits WHERE inhparent = 'samples'::regclass")?,
        "2"
    );
    assert_eq!(q("SELECT count(*) FROM samples_20261206")?, "4");
    // Minutes with numbers wait for their rollups; the bad reading's does not.
    assert_eq!(q("SELECT count(*) FROM rollup_dirty")?, "5");
    Ok(())
}

/// Rollups and retention on PostgreSQL give SQLite's answers: a minute's
/// count, min, max, mean and last from its good readings (a bad one is not
/// a number), late data folded into the minute and its hour when it comes,
/// and raw samples past their retention gone by whole day partitions while
/// their rollups stay.
#[tokio::test]
async fn rollups_fold_late_data_and_retention_drops_whole_days() -> Result<()> {
    use roomguard_collector::store::postgres::maintain;
    use roomguard_collector::store::retention::Policy;
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let (cfg, mut w) = fresh_store(&pg).await?;
    let mut c = postgres::connect(&cfg).await?;
    let day = 86_400_000i64;
    let t0 = 1_796_601_600_000i64; // 2026-12-07T00:00:00Z
    let now = t0 + 3 * day;
    // Minute 0: 20, bad, 24 (in that order of event time); minute 1: 30.
    w.write_batches(&[batch(1, t0, &[Some(20.0), Some(1.0)])], now, None)
        .await?;
    w.write_batches(&[batch(2, t0 + 20_000, &[None, Some(2.0)])], now, None)
        .await?;
    w.write_batches(
        &[batch(3, t0 + 40_000, &[Some(24.0), Some(3.0)])],
        now,
        None,
    )
    .await?;
    w.write_batches(
        &[batch(4, t0 + 60_000, &[Some(30.0), Some(4.0)])],
        now,
        None,
    )
    .await?;
    assert_eq!(maintain::rollup_step(&mut c, now, 1000).await?, 4);
    let q = |sql: &str| pg.psql("roomguard", sql);
    let p0 = "(SELECT id FROM points WHERE point = 'd.p0')";
    assert_eq!(
        q(&format!("SELECT n || ' ' || min || ' ' || max || ' ' || sum / n || ' ' || last FROM rollup_1m WHERE point_id = {p0} AND bucket = {t0}"))?,
        "2 20 24 22 24"
    );
    assert_eq!(
        q(&format!("SELECT n || ' ' || min || ' ' || max || ' ' || last FROM rollup_1h WHERE point_id = {p0}"))?,
        "3 20 30 30"
    );
    // A late reading of minute 0 arrives: the minute and its hour change,
    // the hour's last stays the newest minute's.
    w.write_batches(
        &[batch(5, t0 + 10_000, &[Some(10.0), Some(5.0)])],
        now,
        None,
    )
    .await?;
    assert_eq!(maintain::rollup_step(&mut c, now, 1000).await?, 2);
    assert_eq!(
        q(&format!("SELECT n || ' ' || min || ' ' || last FROM rollup_1m WHERE point_id = {p0} AND bucket = {t0}"))?,
        "3 10 24"
    );
    assert_eq!(
        q(&format!(
            "SELECT n || ' ' || min || ' ' || last FROM rollup_1h WHERE point_id = {p0}"
        ))?,
        "4 10 30"
    );
    // A minute still open waits.
    w.write_batches(
        &[batch(6, now + 10_000, &[Some(25.0), Some(6.0)])],
        now,
        None,
    )
    .await?;
    assert_eq!(maintain::rollup_step(&mut c, now + 20_000, 1000).await?, 0);

    // Raw kept two days: the first day's partition goes, the last's stays;
    // rollups are kept for their own periods.
    let policy = Policy {
        raw: std::time::Duration::from_millis(2 * day as u64),
        ..Policy::default()
    };
    let (dropped, _) = maintain::retention_step(&mut c, &policy, now).await?;
    assert_eq!(dropped, 1);
    assert_eq!(
        q("SELECT count(*) FROM pg_inherits WHERE inhparent = 'samples'::regclass")?,
        "1"
    );
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM samples WHERE ts < {}",
            t0 + day
        ))?,
        "0"
    );
    assert_eq!(q("SELECT count(*) FROM rollup_1m")?, "4");
    Ok(())
}

/// The same batches — repeats, a late backlog, bad readings, readings over
/// two hours — stored by the SQLite store and by PostgreSQL give the same
/// answers: raw samples, 10-second, 5-minute and hourly history, and the
/// latest values.
#[tokio::test]
async fn history_and_latest_on_postgres_answer_as_on_sqlite() -> Result<()> {
    use roomguard_collector::store::history::{plan, PointFilter};
    use roomguard_collector::store::postgres::{maintain, reader::PgReader};
    use roomguard_collector::store::retention::Policy;
    use roomguard_collector::store::sqlite::{SqliteReader, SqliteWriter};
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let (cfg, mut pw) = fresh_store(&pg).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.db");
    let mut sw = SqliteWriter::open(&path)?;
    let t0 = 1_796_601_600_000i64; // 2026-12-07T00:00:00Z
    let now = t0 + 3 * 3_600_000;
    // Two hours of a reading every 20 s, with every 7th reading of point 1
    // bad; then every tenth batch sent again, and a backlog from before.
    let mut rounds: Vec<Vec<roomguard_protocol::Batch>> = Vec::new();
    for k in 0..360u64 {
        let ts = t0 + k as i64 * 20_000;
        let v = 20.0 + (k % 13) as f64 * 0.5;
        let bad = (k % 7 == 0).then_some(()).map_or(Some(v + 1.0), |_| None);
        let mut round = vec![batch(k + 1, ts, &[Some(v), bad])];
        if k % 10 == 9 {
            round.push(batch(k, ts - 20_000, &[Some(0.0), Some(0.0)]));
        }
        rounds.push(round);
    }
    rounds.push(vec![batch(1000, t0 - 120_000, &[Some(5.0), Some(6.0)])]);
    for round in &rounds {
        let a = sw.write_batches(round, now)?;
        let b = pw.write_batches(round, now, None).await?;
        assert_eq!(
            (a.batches, a.readings, a.duplicates),
            (b.batches, b.readings, b.duplicates)
        );
    }
    sw.move_pending()?;
    pw.flush_latest(now).await?;
    while sw.maintain(now)?.minutes > 0 {}
    let mut c = postgres::connect(&cfg).await?;
    while maintain::rollup_step(&mut c, now, 500).await? > 0 {}

    let sr = SqliteReader::open(&path)?;
    let pr = PgReader::new(postgres::connect(&cfg).await?);
    let policy = Policy::default();
    for point in ["d.p0", "d.p1"] {
        let s_id = sr.points_named(Some("s"), point)?[0].id;
        let p_id = pr.points_named(Some("s"), point).await?[0].id;
        for (from, to, step) in [
            (t0 - 300_000, t0 + 600_000, Some(None)),
            (t0, t0 + 3_600_000, Some(Some(10_000))),
            (t0 - 600_000, t0 + 7_200_000, Some(Some(300_000))),
            (t0 - 3_600_000, t0 + 3 * 3_600_000, Some(Some(3_600_000))),
        ] {
            let p = plan(from, to, step, 1, now, &policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let sqlite = sr.history(s_id, &p)?;
            let empty = match &sqlite {
                roomguard_collector::store::history::Series::Raw(v) => v.is_empty(),
                roomguard_collector::store::history::Series::Buckets(v) => v.is_empty(),
            };
            assert!(!empty, "{point} {step:?}: nothing to compare");
            assert_eq!(sqlite, pr.history(p_id, &p).await?, "{point} {step:?}");
        }
    }
    let strip = |rows: Vec<roomguard_collector::store::LatestRow>| -> Vec<String> {
        rows.into_iter()
            .map(|r| {
                format!(
                    "{} {} {:?} {:?} {:?}",
                    r.point, r.ts, r.value, r.text, r.bad
                )
            })
            .collect()
    };
    assert_eq!(
        strip(sr.latest(None, None)?),
        strip(pr.latest(None, None).await?)
    );
    let names = |rows: Vec<roomguard_collector::store::history::PointRow>| -> Vec<String> {
        rows.into_iter()
            .map(|r| format!("{}/{}/{}", r.point, r.room, r.quantity))
            .collect()
    };
    assert_eq!(
        names(sr.points(&PointFilter::default())?),
        names(pr.points(&PointFilter::default()).await?)
    );
    Ok(())
}

/// TLS to PostgreSQL with rustls: with the CA that signed the server's
/// certificate the connection is encrypted (the server says so); without a
/// CA file `sslmode=require` is refused at once, and a CA that did not sign
/// the server's certificate, or a server without TLS, gives an error naming
/// `store.ca_file`.
#[tokio::test]
async fn tls_is_rustls_checked_against_the_given_ca() -> Result<()> {
    if external("openssl", "openssl").is_none() {
        return Ok(());
    }
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    let certs = tempfile::tempdir()?;
    test_certificates(certs.path(), &[])?;
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    // No TLS on the server yet.
    let plain = postgres::target_of(
        &url,
        Some(Postgres::PASSWORD),
        Some(&certs.path().join("ca.pem")),
    )?;
    let e = postgres::connect_to(&plain).await.unwrap_err().to_string();
    assert!(
        e.starts_with("store.ca_file: no TLS with PostgreSQL"),
        "{e}"
    );
    pg.enable_tls(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )?;
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    let target = postgres::target_of(
        &url,
        Some(Postgres::PASSWORD),
        Some(&certs.path().join("ca.pem")),
    )?;
    let c = postgres::connect_to(&target).await?;
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl, "the connection is encrypted");
    // sslmode=require without a CA file: refused before connecting.
    let e = postgres::target_of(&url, Some(Postgres::PASSWORD), None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("sslmode=require needs store.ca_file"), "{e}");
    // Another CA: the server's certificate is not trusted.
    let other = tempfile::tempdir()?;
    test_certificates(other.path(), &[])?;
    let wrong = postgres::target_of(
        &url,
        Some(Postgres::PASSWORD),
        Some(&other.path().join("ca.pem")),
    )?;
    let e = postgres::connect_to(&wrong).await.unwrap_err().to_string();
    assert!(
        e.starts_with("store.ca_file: no TLS with PostgreSQL"),
        "{e}"
    );
    assert!(e.contains("certificate"), "{e}");
    Ok(())
}

/// What a device or agent sends can never stop ingest: a reading from a
/// clock gone back to 2000 in the same round as today's makes two day
/// partitions, not ten thousand; a status whose text PostgreSQL's jsonb
/// would refuse (`\u0000`) is stored, and the next status of that agent too;
/// an old status replayed after a newer one is ignored.
#[tokio::test]
async fn odd_clocks_and_odd_status_texts_are_stored_without_stopping_ingest() -> Result<()> {
    use roomguard_protocol::{AgentState, Status};
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let (_, mut w) = fresh_store(&pg).await?;
    let now = roomguard_protocol::clock::now_ms();
    let y2000 = 946_684_800_000;
    let mut round = batch(1, now, &[Some(21.0)]);
    round.readings.push(roomguard_protocol::Reading {
        ts: y2000,
        ..round.readings[0].clone()
    });
    assert_eq!(w.write_batches(&[round], now, None).await?.readings, 2);
    assert_eq!(
        pg.psql(
            "roomguard",
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'samples'::regclass"
        )?,
        "2"
    );
    let status = |at: i64, software: &str| Status {
        v: 1,
        site: "s".into(),
        agent: "a".into(),
        state: AgentState::Online,
        at: Some(at),
        software: Some(software.into()),
        devices: Vec::new(),
        spool: None,
    };
    w.write_status(&status(now, "agent\u{0}1.0"), now).await?;
    w.write_status(&status(now + 1_000, "agent 1.1"), now)
        .await?;
    // A replay of the first: older than what is stored, ignored.
    w.write_status(&status(now, "agent\u{0}1.0"), now).await?;
    let stored = pg.psql("roomguard", "SELECT status_json FROM agents")?;
    assert!(stored.contains("agent 1.1"), "{stored}");
    Ok(())
}
