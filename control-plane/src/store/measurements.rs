//! Variant choice by measurement: what devices measured of a release's variants on its golden inputs, and each
//! device class's choice per rollout (stored whole as JSON; a decided one is never overwritten).

use edgefleet_protocol::rollout::{ClassChoice, VariantMeasurement};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use sqlx::Row;

use super::{Audit, Store, StoreError, json, parse};

/// The most measurement rows one evaluation reads for a release (devices × variants).
const MAX_ROWS: i64 = 100_000;

/// One device's measurement of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredRow {
    pub class: String,
    pub device: DeviceId,
    pub measurement: VariantMeasurement,
}

impl Store {
    /// Records what a device measured of a release's variants, replacing what it reported of them before.
    pub async fn add_measurements(
        &self,
        device: &DeviceId,
        class: &str,
        model: &ModelName,
        release: ReleaseVersion,
        measured: &[VariantMeasurement],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for m in measured {
            sqlx::query(
                "INSERT INTO variant_measurements (model, release, device_id, variant, device_class, golden_passed, \
                 runs, median_us, p95_us, energy_uj, detail, measured_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (model, release, device_id, variant) DO UPDATE SET device_class = excluded.device_class, \
                 golden_passed = excluded.golden_passed, runs = excluded.runs, median_us = excluded.median_us, \
                 p95_us = excluded.p95_us, energy_uj = excluded.energy_uj, detail = excluded.detail, \
                 measured_at = excluded.measured_at",
            )
            .bind(model.as_str())
            .bind(release.get() as i64)
            .bind(device.as_str())
            .bind(m.variant.as_str())
            .bind(class)
            .bind(i64::from(m.golden_passed))
            .bind(m.runs.min(i64::MAX as u64) as i64)
            .bind(m.median_us.min(i64::MAX as u64) as i64)
            .bind(m.p95_us.min(i64::MAX as u64) as i64)
            .bind(m.energy_uj.map(|e| e.min(i64::MAX as u64) as i64))
            .bind(m.detail.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every device's measurements of a release's variants (at most `MAX_ROWS`), by class and device.
    pub async fn measurements(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
    ) -> Result<Vec<MeasuredRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_class, device_id, variant, golden_passed, runs, median_us, p95_us, energy_uj, detail \
             FROM variant_measurements WHERE model = $1 AND release = $2 \
             ORDER BY device_class, device_id, variant LIMIT $3",
        )
        .bind(model.as_str())
        .bind(release.get() as i64)
        .bind(MAX_ROWS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let count = |c: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
                Ok(MeasuredRow {
                    class: r.try_get("device_class")?,
                    device: parse("device id", &r.try_get::<String, _>("device_id")?)?,
                    measurement: VariantMeasurement {
                        variant: parse("variant id", &r.try_get::<String, _>("variant")?)?,
                        golden_passed: r.try_get::<i64, _>("golden_passed")? != 0,
                        runs: count("runs")?,
                        median_us: count("median_us")?,
                        p95_us: count("p95_us")?,
                        energy_uj: r.try_get::<Option<i64>, _>("energy_uj")?.map(|e| e.max(0) as u64),
                        detail: r.try_get("detail")?,
                    },
                })
            })
            .collect()
    }

    /// Each device class's choice in a rollout, decided or in progress, by class.
    pub async fn rollout_choices(&self, rollout: &str) -> Result<Vec<ClassChoice>, StoreError> {
        let rows = sqlx::query("SELECT body FROM rollout_choices WHERE rollout_id = $1 ORDER BY device_class")
            .bind(rollout)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| json("rollout choice", &r.try_get::<String, _>("body")?)).collect()
    }

    /// Stores a class's choice as it stands, unless the class's choice was already decided; a decision comes with
    /// its audit entry, in the same transaction. Answers whether anything was written.
    pub async fn set_rollout_choice(
        &self,
        rollout: &str,
        choice: &ClassChoice,
        audit: Option<Audit<'_>>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let body = serde_json::to_string(choice)
            .map_err(|e| StoreError::Corrupt { what: "rollout choice", message: e.to_string() })?;
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "INSERT INTO rollout_choices (rollout_id, device_class, decided, body, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rollout_id, device_class) DO UPDATE SET \
             decided = excluded.decided, body = excluded.body, updated_at = excluded.updated_at \
             WHERE rollout_choices.decided = 0",
        )
        .bind(rollout)
        .bind(choice.class.as_str())
        .bind(i64::from(choice.decided))
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(a) = audit {
            Self::audit_in(&mut tx, a, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
