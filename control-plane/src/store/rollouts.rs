//! Rollouts: what was asked for, where each stands, and its gates at the last evaluation. A state changes only
//! from the state it was read in (compare and set), in one transaction with its audit entry.

use edgefleet_protocol::rollout::{ChooseVariant, Gate, GateResult, OnFailure, Rollout, State, Wave};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use edgefleet_protocol::DeviceId;
use edgefleet_protocol::api::{Labels, Selector};

use super::{Audit, Store, StoreError, json, parse, selector_clause, version};

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub rollout: Rollout,
    pub state: State,
    pub gates: Vec<GateResult>,
    pub evaluated_at: Option<i64>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
}

/// The `spec` column.
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    waves: Vec<Wave>,
    gates: Vec<Gate>,
    min_samples: u64,
    on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "ChooseVariant::is_first_fit")]
    choose_variant: ChooseVariant,
}

fn text<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt { what: "rollout", message: e.to_string() })
}

fn rollout_row(r: &AnyRow) -> Result<RolloutRow, StoreError> {
    let spec: Spec = json("rollout spec", &r.try_get::<String, _>("spec")?)?;
    Ok(RolloutRow {
        rollout: Rollout {
            id: r.try_get("id")?,
            model: parse("model name", &r.try_get::<String, _>("model")?)?,
            selector: parse("selector", &r.try_get::<String, _>("selector")?)?,
            baseline: version("baseline", r.try_get("baseline")?)?,
            release: version("release", r.try_get("release")?)?,
            waves: spec.waves,
            gates: spec.gates,
            min_samples: spec.min_samples,
            on_failure: spec.on_failure,
            choose_variant: spec.choose_variant,
        },
        state: json("rollout state", &r.try_get::<String, _>("state")?)?,
        gates: json("rollout gates", &r.try_get::<String, _>("gates")?)?,
        evaluated_at: r.try_get("evaluated_at")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLUMNS: &str =
    "id, model, baseline, release, selector, spec, state, gates, evaluated_at, created_at, created_by, updated_at";

impl Store {
    /// Devices `selector` picks that are enrolled, not revoked and seen since `online_after` (ms), in id order
    /// after `after`, at most `limit`: their ids, classes and labels, which say where a rollout's waves reached.
    pub async fn online_selected(
        &self,
        selector: &Selector,
        online_after: i64,
        after: Option<&DeviceId>,
        limit: i64,
    ) -> Result<Vec<(DeviceId, String, Labels)>, StoreError> {
        let mut n = 2;
        let sql = format!(
            "SELECT id, device_class, labels FROM devices d WHERE d.id > $1 AND d.last_seen >= $2 \
             AND d.revoked_at IS NULL{} ORDER BY d.id LIMIT ${}",
            selector_clause(selector, &mut n),
            n + 1
        );
        let mut q = sqlx::query(&sql).bind(after.map(|a| a.as_str().to_owned()).unwrap_or_default()).bind(online_after);
        for (k, v) in &selector.0 {
            q = q.bind(k.clone()).bind(v.clone());
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse("device id", &r.try_get::<String, _>("id")?)?,
                    r.try_get("device_class")?,
                    json("device labels", &r.try_get::<String, _>("labels")?)?,
                ))
            })
            .collect()
    }

    pub async fn insert_rollout(&self, row: &RolloutRow, audit: Audit<'_>) -> Result<(), StoreError> {
        let r = &row.rollout;
        let spec = Spec {
            waves: r.waves.clone(),
            gates: r.gates.clone(),
            min_samples: r.min_samples,
            on_failure: r.on_failure,
            choose_variant: r.choose_variant,
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(r.id.as_str())
        .bind(r.model.as_str())
        .bind(r.baseline.get() as i64)
        .bind(r.release.get() as i64)
        .bind(r.selector.to_string())
        .bind(text(&spec)?)
        .bind(text(&row.state)?)
        .bind(text(&row.gates)?)
        .bind(row.evaluated_at)
        .bind(row.created_at)
        .bind(row.created_by.as_str())
        .bind(row.updated_at)
        .execute(&mut *tx)
        .await?;
        Self::audit_in(&mut tx, audit, row.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every rollout, oldest first (a newer one for the same model and devices wins).
    pub async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rollout_row).collect()
    }

    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rollout_row).transpose()
    }

    /// Moves a rollout from `from` to `to` with its audit entry, if it is still in `from`; answers whether it was.
    pub async fn set_rollout_state(
        &self,
        id: &str,
        from: &State,
        to: &State,
        audit: Audit<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE rollouts SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4")
            .bind(text(to)?)
            .bind(now)
            .bind(id)
            .bind(text(from)?)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        Self::audit_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the gates' numbers of an evaluation.
    pub async fn set_rollout_gates(&self, id: &str, gates: &[GateResult], now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE rollouts SET gates = $1, evaluated_at = $2 WHERE id = $3")
            .bind(text(&gates)?)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
