//! Reads from PostgreSQL for the API: the catalogue, one point's history by
//! a plan of `store/history.rs` (the same planning and the same folding of
//! buckets as on SQLite, so both backends give the same answers), the
//! latest readings and agents' statuses.

use super::PgError;
use crate::store::history::{
    fold, Plan, PointFilter, PointRow, Sample, Series, Tier, MAX_POINTS_PER_SERIES,
};
use crate::store::rollup::{Agg, HOUR_MS, MINUTE_MS};
use crate::store::{AgentRow, LatestRow};
use tokio_postgres::{Client, Row, Statement};

const POINT_COLUMNS: &str =
    "id, site, point, agent, room, device, quantity, unit, first_seen, last_seen, last_ts";

fn point_row(r: &Row) -> PointRow {
    PointRow {
        id: r.get(0),
        site: r.get(1),
        point: r.get(2),
        agent: r.get(3),
        room: r.get(4),
        device: r.get(5),
        quantity: r.get(6),
        unit: r.get(7),
        first_seen: r.get(8),
        last_seen: r.get(9),
        last_ts: r.get(10),
    }
}

pub struct PgReader {
    client: Client,
    /// History statements, prepared once per connection: a month of 500
    /// points asks 500 times.
    statements: tokio::sync::Mutex<std::collections::HashMap<&'static str, Statement>>,
}

const RAW_LIMITED: &str =
    "SELECT ts, value, text, bad FROM samples WHERE point_id = $1 AND ts >= $2 AND ts < $3
     ORDER BY ts LIMIT $4";
const RAW_VALUES: &str =
    "SELECT ts, value FROM samples WHERE point_id = $1 AND ts >= $2 AND ts < $3
     AND value IS NOT NULL AND bad IS NULL ORDER BY ts";
const MINUTES: &str = "SELECT bucket, n, min, max, sum, last_ts, last FROM rollup_1m
     WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket";
const HOURS: &str = "SELECT bucket, n, min, max, sum, last_ts, last FROM rollup_1h
     WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket";

impl PgReader {
    pub fn new(client: Client) -> PgReader {
        PgReader {
            client,
            statements: Default::default(),
        }
    }

    async fn prepared(&self, sql: &'static str) -> Result<Statement, PgError> {
        if let Some(st) = self.statements.lock().await.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql).await?;
        self.statements.lock().await.insert(sql, st.clone());
        Ok(st)
    }

    /// The client, for the other tables' queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the connection broke (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The catalogue, filtered.
    pub async fn points(&self, f: &PointFilter) -> Result<Vec<PointRow>, PgError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {POINT_COLUMNS} FROM points
                     WHERE ($1::TEXT IS NULL OR site = $1) AND ($2::TEXT IS NULL OR room = $2)
                       AND ($3::TEXT IS NULL OR device = $3) AND ($4::TEXT IS NULL OR quantity = $4)
                     ORDER BY site, room, device, point"
                ),
                &[&f.site, &f.room, &f.device, &f.quantity],
            )
            .await?;
        Ok(rows.iter().map(point_row).collect())
    }

    /// Every point named `point` (in `site`, if given).
    pub async fn points_named(
        &self,
        site: Option<&str>,
        point: &str,
    ) -> Result<Vec<PointRow>, PgError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {POINT_COLUMNS} FROM points WHERE point = $2 AND ($1::TEXT IS NULL OR site = $1) ORDER BY site"
                ),
                &[&site, &point],
            )
            .await?;
        Ok(rows.iter().map(point_row).collect())
    }

    /// One point's history by `plan`: one range scan of one tier.
    pub async fn history(&self, point_id: i64, plan: &Plan) -> Result<Series, PgError> {
        let Some(step) = plan.step else {
            let rows = self
                .client
                .query(
                    &self.prepared(RAW_LIMITED).await?,
                    &[
                        &point_id,
                        &plan.from,
                        &plan.to,
                        &(MAX_POINTS_PER_SERIES + 1),
                    ],
                )
                .await?;
            return Ok(Series::Raw(
                rows.iter()
                    .map(|r| Sample {
                        ts: r.get(0),
                        value: r.get(1),
                        text: r.get(2),
                        bad: r.get(3),
                    })
                    .collect(),
            ));
        };
        let rows: Vec<(i64, Agg)> = match plan.tier {
            Tier::Raw => self
                .client
                .query(
                    &self.prepared(RAW_VALUES).await?,
                    &[&point_id, &plan.from, &plan.to],
                )
                .await?
                .iter()
                .map(|r| {
                    let ts: i64 = r.get(0);
                    (ts, Agg::sample(ts, r.get(1)))
                })
                .collect(),
            Tier::Minute | Tier::Hour => {
                let (sql, width) = if plan.tier == Tier::Minute {
                    (MINUTES, MINUTE_MS)
                } else {
                    (HOURS, HOUR_MS)
                };
                // Buckets that merely overlap the start are left out rather
                // than attributed to the wrong step (as on SQLite).
                let first = plan.from + (width - plan.from.rem_euclid(width)) % width;
                self.client
                    .query(&self.prepared(sql).await?, &[&point_id, &first, &plan.to])
                    .await?
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            Agg {
                                n: r.get(1),
                                min: r.get(2),
                                max: r.get(3),
                                sum: r.get(4),
                                last_ts: r.get(5),
                                last: r.get(6),
                            },
                        )
                    })
                    .collect()
            }
        };
        Ok(Series::Buckets(fold(rows, plan.from, step)))
    }

    /// The latest reading of every point, optionally of one site or room.
    pub async fn latest(
        &self,
        site: Option<&str>,
        room: Option<&str>,
    ) -> Result<Vec<LatestRow>, PgError> {
        let rows = self
            .client
            .query(
                "SELECT site, point, agent, room, device, quantity, unit, last_ts, last_value, last_text, last_bad
                 FROM points WHERE last_ts IS NOT NULL
                   AND ($1::TEXT IS NULL OR site = $1) AND ($2::TEXT IS NULL OR room = $2)
                 ORDER BY site, room, device, point",
                &[&site, &room],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LatestRow {
                site: r.get(0),
                point: r.get(1),
                agent: r.get(2),
                room: r.get(3),
                device: r.get(4),
                quantity: r.get(5),
                unit: r.get(6),
                ts: r.get(7),
                value: r.get(8),
                text: r.get(9),
                bad: r.get(10),
            })
            .collect())
    }

    /// Every agent's last status.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, PgError> {
        let rows = self
            .client
            .query(
                "SELECT site, agent, state, status_json, updated_at FROM agents ORDER BY site, agent",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AgentRow {
                site: r.get(0),
                agent: r.get(1),
                state: r.get(2),
                status: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
                updated_at: r.get(4),
            })
            .collect())
    }
}
