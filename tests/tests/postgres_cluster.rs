//! The PostgreSQL cluster the storage tests start for themselves (issue 21):
//! it comes up on an ephemeral port as the right user, takes SQL, and keeps
//! what was committed across a SIGKILL and restart, which the fault tests
//! of the PostgreSQL store rely on.

use anyhow::Result;
use roomguard_e2e::*;

#[test]
fn a_test_cluster_starts_takes_sql_and_keeps_commits_across_a_kill() -> Result<()> {
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    pg.psql("postgres", "CREATE DATABASE roomguard")?;
    pg.psql(
        "roomguard",
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
    )?;
    let port = pg.port;
    pg.restart()?;
    assert_eq!(pg.psql("roomguard", "SELECT count(*) FROM t")?, "1000");
    assert_eq!(pg.port, port, "restarted on its port");
    assert!(pg.url("roomguard").ends_with(&format!(":{port}/roomguard")));
    Ok(())
}
