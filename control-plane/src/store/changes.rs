//! Replicas over PostgreSQL: the change log that keeps every server's caches true (see `crate::changes`), and
//! the PEM material all servers share. On SQLite (one server) the log is not written and nothing is shared.

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// The NOTIFY channel that wakes servers when the change log grows.
pub const CHANNEL: &str = "edgefleet_changes";

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub seq: i64,
    /// The server that made the change (it applied the change itself already).
    pub origin: String,
    pub scope: String,
    pub device: Option<String>,
}

impl Store {
    /// Appends a change to the log and wakes every listening server (PostgreSQL); does nothing on SQLite.
    pub async fn publish_change(
        &self,
        origin: &str,
        scope: &str,
        device: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query(
            "WITH c AS (INSERT INTO changes (origin, scope, device_id, at) VALUES ($1, $2, $3, $4) RETURNING seq) \
             SELECT pg_notify('edgefleet_changes', CAST(seq AS TEXT)) FROM c",
        )
        .bind(origin)
        .bind(scope)
        .bind(device)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest entry's sequence number (0 when the log is empty).
    pub async fn last_change(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM changes").fetch_one(&self.pool).await?;
        Ok(row.try_get("seq")?)
    }

    /// The oldest entry still kept (0 when the log is empty).
    pub async fn first_change(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MIN(seq), 0) AS seq FROM changes").fetch_one(&self.pool).await?;
        Ok(row.try_get("seq")?)
    }

    /// Entries after `after`, oldest first, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<ChangeRow>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, origin, scope, device_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(ChangeRow {
                    seq: r.try_get("seq")?,
                    origin: r.try_get("origin")?,
                    scope: r.try_get("scope")?,
                    device: r.try_get("device_id")?,
                })
            })
            .collect()
    }

    /// Drops entries older than `before` (ms).
    pub async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM changes WHERE at < $1").bind(before).execute(&self.pool).await?.rows_affected())
    }

    /// The shared PEM named `name`, if one was stored.
    pub async fn shared_pem(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT pem FROM shared_pem WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("pem")).transpose()?)
    }

    /// Stores each `(name, pem)` unless *any* of them is there already (one transaction): the first server to
    /// start writes the set, and every other reads back that one. Answers whether this call wrote it.
    pub async fn share_pems_once(&self, pems: &[(&str, &str)], now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        // Serialise concurrent first starts on the first name's row.
        let Some((first, _)) = pems.first() else { return Ok(false) };
        let exists = sqlx::query("SELECT 1 AS one FROM shared_pem WHERE name = $1")
            .bind(*first)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Ok(false);
        }
        for (name, pem) in pems {
            let done = sqlx::query(
                "INSERT INTO shared_pem (name, pem, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(*name)
            .bind(*pem)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                // Another server got there first: keep its set, not half of each.
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
