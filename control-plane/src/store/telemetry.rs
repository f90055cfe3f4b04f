//! Telemetry rollups and series state: written together, read back per release and device class for gates.

use edgefleet_protocol::telemetry::ROUTE_REASONS;
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use sqlx::Row;

use super::{Backend, Store, StoreError};
use crate::rollout::{LlmStats, RouteStats, Stats};
use crate::telemetry::otlp::NBUCKETS;
use crate::telemetry::{Batch, quantile};

const ROLLUP_COLUMNS: usize = 31 + 2 * NBUCKETS + 3 + ROUTE_REASONS.len() + 3 + NBUCKETS;
/// Rows per statement: 101 parameters each stays under SQLite's 32,766 and Postgres' 65,535.
const CHUNK: usize = 300;

/// The histogram columns: inference duration (`b`), time to first token (`t`), time per output token (`p`).
fn histogram_columns(prefix: char) -> impl Iterator<Item = String> {
    (0..NBUCKETS).map(move |i| format!("{prefix}{i:02}"))
}

fn bucket_columns() -> String {
    histogram_columns('b').collect::<Vec<_>>().join(", ")
}

/// The language-model columns, then the routing ones, in the order they are bound: every column summed as a
/// count.
fn llm_columns() -> Vec<String> {
    histogram_columns('t')
        .chain(histogram_columns('p'))
        .chain(["tokens_in", "tokens_out", "energy_tokens"].map(String::from))
        .chain(ROUTE_REASONS.iter().map(|r| format!("route_{r}")))
        .chain(["route_cloud", "cloud_errors", "cloud_bytes"].map(String::from))
        .chain(histogram_columns('c'))
        .collect()
}

/// The `n`-th (from 1) placeholder: `$n` on Postgres; plain `?` on SQLite, whose driver would otherwise look
/// every `$n` up by name (quadratic in the number of parameters of a many-row statement).
fn param(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".into(),
        Backend::Postgres => format!("${n}"),
    }
}

fn upsert_rollups_sql(backend: Backend, rows: usize) -> String {
    let mut sql = format!(
        "INSERT INTO telemetry_rollups (device_id, model, release, variant, provider, window_start, device_class, \
         ok, errors, duration_sum, {}, energy_j, energy_inferences, installs, install_failures, {}) VALUES ",
        bucket_columns(),
        llm_columns().join(", ")
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..ROLLUP_COLUMNS {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&param(backend, r * ROLLUP_COLUMNS + c + 1));
        }
        sql.push(')');
    }
    let adds: Vec<String> =
        ["ok", "errors", "duration_sum", "energy_j", "energy_inferences", "installs", "install_failures"]
            .into_iter()
            .map(String::from)
            .chain(histogram_columns('b'))
            .chain(llm_columns())
            .map(|c| format!("{c} = telemetry_rollups.{c} + excluded.{c}"))
            .collect();
    sql.push_str(&format!(
        " ON CONFLICT (device_id, model, release, variant, provider, window_start) DO UPDATE SET \
         device_class = excluded.device_class, {}",
        adds.join(", ")
    ));
    sql
}

fn upsert_series_sql(backend: Backend, rows: usize) -> String {
    let p = |n| param(backend, n);
    let values: Vec<String> =
        (0..rows).map(|r| format!("({}, {}, {})", p(r * 3 + 1), p(r * 3 + 2), p(r * 3 + 3))).collect();
    format!(
        "INSERT INTO telemetry_series (device_id, series, updated_at) VALUES {} ON CONFLICT (device_id) DO UPDATE \
         SET series = excluded.series, updated_at = excluded.updated_at",
        values.join(",")
    )
}

/// A release's numbers on one device class.
#[derive(Debug, Clone)]
pub struct ClassStats {
    pub class: String,
    pub release: ReleaseVersion,
    pub stats: Stats,
    pub buckets: [u64; NBUCKETS],
}

/// The select list of per-group sums, named as their columns.
fn sums() -> String {
    let counts: Vec<String> = ["ok", "errors", "energy_inferences", "installs", "install_failures"]
        .into_iter()
        .map(String::from)
        .chain(histogram_columns('b'))
        .chain(llm_columns())
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect();
    format!("{}, CAST(SUM(energy_j) AS DOUBLE PRECISION) AS energy_j", counts.join(", "))
}

/// One group's sums as a release's numbers on a device class.
fn class_stats(r: &sqlx::any::AnyRow) -> Result<ClassStats, StoreError> {
    let n = |c: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    let histogram = |prefix: char| -> Result<[u64; NBUCKETS], StoreError> {
        let mut h = [0u64; NBUCKETS];
        for (i, b) in h.iter_mut().enumerate() {
            *b = n(&format!("{prefix}{i:02}"))?;
        }
        Ok(h)
    };
    let (buckets, ttft, tpot, cloud) = (histogram('b')?, histogram('t')?, histogram('p')?, histogram('c')?);
    let mut by_reason = [0u64; ROUTE_REASONS.len()];
    for (n_reason, name) in by_reason.iter_mut().zip(ROUTE_REASONS) {
        *n_reason = n(&format!("route_{name}"))?;
    }
    let (tokens_out, energy_tokens) = (n("tokens_out")?, n("energy_tokens")?);
    let (ok, errors, energy_inferences) = (n("ok")?, n("errors")?, n("energy_inferences")?);
    let energy_j: f64 = r.try_get("energy_j")?;
    let stats = Stats {
        requests: ok + errors,
        errors,
        p95_ms: quantile(&buckets, 0.95).map(|s| s * 1000.0),
        energy_inferences,
        joules_per_inference: (energy_inferences > 0).then(|| energy_j / energy_inferences as f64),
        installs: n("installs")?,
        install_failures: n("install_failures")?,
        devices: 0,
        choosing: false,
        llm: LlmStats {
            ttft_requests: ttft.iter().sum(),
            ttft_p50_ms: quantile(&ttft, 0.5).map(|s| s * 1000.0),
            ttft_p95_ms: quantile(&ttft, 0.95).map(|s| s * 1000.0),
            tpot_requests: tpot.iter().sum(),
            tpot_p50_ms: quantile(&tpot, 0.5).map(|s| s * 1000.0),
            tpot_p95_ms: quantile(&tpot, 0.95).map(|s| s * 1000.0),
            tokens_in: n("tokens_in")?,
            tokens_out,
            energy_tokens,
            joules_per_token: (energy_tokens > 0).then(|| energy_j / energy_tokens as f64),
        },
        route: RouteStats {
            requests: by_reason.iter().sum(),
            cloud: n("route_cloud")?,
            by_reason,
            cloud_answered: cloud.iter().sum(),
            cloud_errors: n("cloud_errors")?,
            cloud_bytes: n("cloud_bytes")?,
            cloud_p50_ms: quantile(&cloud, 0.5).map(|s| s * 1000.0),
            cloud_p95_ms: quantile(&cloud, 0.95).map(|s| s * 1000.0),
        },
    };
    let release = super::version("release", r.try_get("release")?)?;
    Ok(ClassStats { class: r.try_get("device_class")?, release, stats, buckets })
}

impl Store {
    /// Writes a batch: rollup deltas added to what is stored, and the devices' series replaced, in one
    /// transaction.
    pub async fn write_telemetry(&self, batch: &Batch, now: i64) -> Result<(), StoreError> {
        /// Binds a chunk of rollups, then of series, to a query of either pool's database.
        macro_rules! bind_rollups {
            ($q:expr, $chunk:expr) => {{
                let mut q = $q;
                for (k, r) in $chunk {
                    q = q
                        .bind(k.device.as_str())
                        .bind(k.target.model.as_str())
                        .bind(k.target.release.get() as i64)
                        .bind(k.target.variant.as_str())
                        .bind(k.target.provider.as_str())
                        .bind(k.window_start)
                        .bind(r.class.as_str())
                        .bind(r.ok as i64)
                        .bind(r.errors as i64)
                        .bind(r.duration_sum);
                    for b in r.buckets {
                        q = q.bind(b as i64);
                    }
                    q = q
                        .bind(r.energy_j)
                        .bind(r.energy_inferences as i64)
                        .bind(r.installs as i64)
                        .bind(r.install_failures as i64);
                    let counts = r.ttft.iter().chain(&r.tpot).chain([&r.tokens_in, &r.tokens_out, &r.energy_tokens]);
                    let route = r.route.iter().chain([&r.route_cloud, &r.cloud_errors, &r.cloud_bytes]).chain(&r.cloud);
                    for b in counts.chain(route) {
                        q = q.bind(*b as i64);
                    }
                }
                q
            }};
        }
        macro_rules! bind_series {
            ($q:expr, $chunk:expr) => {{
                let mut q = $q;
                for (d, s) in $chunk {
                    q = q.bind(d.as_str()).bind(s.as_str()).bind(now);
                }
                q
            }};
        }
        /// Both upserts, in chunks, inside `$tx`, with queries of `$db`.
        macro_rules! write_all {
            ($tx:expr, $db:ty) => {{
                for chunk in batch.rollups.chunks(CHUNK) {
                    let sql = upsert_rollups_sql(self.backend, chunk.len());
                    bind_rollups!(sqlx::query::<$db>(&sql), chunk).execute(&mut *$tx).await?;
                }
                for chunk in batch.series.chunks(CHUNK) {
                    let sql = upsert_series_sql(self.backend, chunk.len());
                    bind_series!(sqlx::query::<$db>(&sql), chunk).execute(&mut *$tx).await?;
                }
            }};
        }
        if let Some(native) = &self.sqlite {
            let mut tx = native.begin_with("BEGIN IMMEDIATE").await?;
            write_all!(tx, sqlx::Sqlite);
            tx.commit().await?;
        } else {
            let mut tx = self.write_tx().await?;
            write_all!(tx, sqlx::Any);
            tx.commit().await?;
        }
        Ok(())
    }

    /// A device's persisted series (JSON), if it ever exported.
    pub async fn telemetry_series(&self, d: &DeviceId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT series FROM telemetry_series WHERE device_id = $1")
            .bind(d.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("series")).transpose()?)
    }

    /// Drops rollups of windows that started before `before` (ms); answers how many.
    /// Deletes device events received before `events_before` and audit entries before `audit_before` (ms);
    /// answers how many of each.
    pub async fn delete_history_before(&self, events_before: i64, audit_before: i64) -> Result<(u64, u64), StoreError> {
        let events = sqlx::query("DELETE FROM device_events WHERE received_at < $1")
            .bind(events_before)
            .execute(&self.pool)
            .await?;
        let audit = sqlx::query("DELETE FROM audit_log WHERE at < $1").bind(audit_before).execute(&self.pool).await?;
        Ok((events.rows_affected(), audit.rows_affected()))
    }

    pub async fn delete_rollups_before(&self, before: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM telemetry_rollups WHERE window_start < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Per device class, what each of `sides` (release, windows from this time in ms) did: the numbers gates
    /// compare.
    pub async fn release_stats(
        &self,
        model: &ModelName,
        sides: [(ReleaseVersion, i64); 2],
    ) -> Result<Vec<ClassStats>, StoreError> {
        let sql = format!(
            "SELECT device_class, release, {} FROM telemetry_rollups WHERE model = $1 AND ((release = $2 AND \
             window_start >= $3) OR (release = $4 AND window_start >= $5)) GROUP BY device_class, release \
             ORDER BY device_class, release",
            sums()
        );
        let rows = sqlx::query(&sql)
            .bind(model.as_str())
            .bind(sides[0].0.get() as i64)
            .bind(sides[0].1)
            .bind(sides[1].0.get() as i64)
            .bind(sides[1].1)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(class_stats).collect()
    }

    /// Every release of `model` per device class and window, from windows starting at `since` (ms), oldest
    /// first, at most `limit` rows: latency and energy over time.
    pub async fn release_history(
        &self,
        model: &ModelName,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ClassStats)>, StoreError> {
        let sql = format!(
            "SELECT window_start, device_class, release, {} FROM telemetry_rollups WHERE model = $1 AND \
             window_start >= $2 GROUP BY window_start, device_class, release \
             ORDER BY window_start, release, device_class LIMIT $3",
            sums()
        );
        let rows = sqlx::query(&sql).bind(model.as_str()).bind(since).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("window_start")?, class_stats(r)?))).collect()
    }

    /// One device's windows per model and release from `since` (ms), oldest first, at most `limit` rows.
    pub async fn device_history(
        &self,
        device: &DeviceId,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ModelName, ClassStats)>, StoreError> {
        let sql = format!(
            "SELECT window_start, model, release, MAX(device_class) AS device_class, {} FROM telemetry_rollups \
             WHERE device_id = $1 AND window_start >= $2 GROUP BY window_start, model, release \
             ORDER BY window_start, model, release LIMIT $3",
            sums()
        );
        let rows = sqlx::query(&sql).bind(device.as_str()).bind(since).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let model: String = r.try_get("model")?;
                Ok((r.try_get("window_start")?, super::parse("model", &model)?, class_stats(r)?))
            })
            .collect()
    }
}
