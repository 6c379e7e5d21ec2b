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
    assert_eq!(migrate::migrate(&mut c, "roomguard").await?, [1]);
    assert!(
        migrate::migrate(&mut c, "roomguard").await?.is_empty(),
        "applied once"
    );
    // Samples go to the partition of their day.
    let ts = 1_796_600_000_000i64;
    migrate::ensure_partitions(&c, ts, ts).await?;
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
