//! Storage: one layer over SQLite (the embedded default, WAL) and PostgreSQL, chosen by the database URL.
//!
//! Queries go through sqlx's `Any` driver with `$N` placeholders and types both databases share (BIGINT,
//! TEXT); times are milliseconds since the epoch, JSON documents are TEXT. Migrations are embedded, one
//! folder per database, and applied at start.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use edgefleet_protocol::api::{ClassCount, FleetOverview, Labels, ReleaseCount, Selector, TokenRole};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} is not valid: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("database URL {0:?} is neither sqlite: nor postgres:")]
    Url(String),
}

mod changes;
mod measurements;
mod rollouts;
mod telemetry;

pub use changes::{CHANNEL, ChangeRow};
pub use measurements::MeasuredRow;
pub use rollouts::RolloutRow;
pub use telemetry::ClassStats;

/// See [`Store::try_lead`].
#[derive(Debug)]
pub struct Leadership(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl Leadership {
    /// Whether the lock is still held (its connection still answers).
    pub async fn holds(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(conn) => sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// On SQLite, a native pool of one connection for the telemetry write, the one statement hot enough for
    /// `Any`'s per-argument conversions to matter.
    sqlite: Option<sqlx::SqlitePool>,
    pub backend: Backend,
}

fn corrupt(what: &'static str) -> impl Fn(String) -> StoreError {
    move |message| StoreError::Corrupt { what, message }
}

fn parse<T: FromStr>(what: &'static str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| corrupt(what)(e.to_string()))
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what)(e.to_string()))
}

fn version(what: &'static str, v: i64) -> Result<ReleaseVersion, StoreError> {
    ReleaseVersion::new(v as u64).map_err(|e| corrupt(what)(e.to_string()))
}

// === rows ===

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    pub created_at: i64,
    pub revoked: bool,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub security_floor: ReleaseVersion,
    pub description: String,
    pub variants: Vec<String>,
    pub manifest: String,
    pub published_at: i64,
    pub published_by: String,
}

/// Which devices an inventory listing wants.
#[derive(Debug, Default)]
pub struct DeviceFilter<'a> {
    pub selector: Selector,
    /// Ids starting with this.
    pub id_prefix: Option<&'a str>,
    pub device_class: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct AssignmentRow {
    pub id: i64,
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub selector: Selector,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub id: DeviceId,
    pub labels: Labels,
    pub device_class: String,
    pub hardware: String,
    pub cert_serial: String,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub revoked: bool,
    pub report: Option<String>,
    pub desired_seq: i64,
    pub desired_digest: Option<String>,
    pub desired_doc: Option<String>,
    pub desired_expires: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub detail: String,
}

/// A new audit entry.
#[derive(Debug, Clone)]
pub struct Audit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub source: &'a str,
    pub detail: serde_json::Value,
}

/// The outcome of publishing a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    Stored,
    /// A release of this model with this version or a higher one exists.
    NotNewer {
        latest: i64,
    },
}

const DEVICE_COLUMNS: &str = "id, labels, device_class, hardware, cert_serial, enrolled_at, last_seen, revoked_at, \
     report, desired_seq, desired_digest, desired_doc, desired_expires";

/// `AND` clauses requiring every label of `selector` of the device `d`, numbering their parameters after `n`
/// (the caller binds each key, then its value, in the selector's order).
fn selector_clause(selector: &Selector, n: &mut usize) -> String {
    let mut sql = String::new();
    for _ in &selector.0 {
        let (k, v) = (*n + 1, *n + 2);
        *n += 2;
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.key = ${k} AND l.value = ${v})"
        ));
    }
    sql
}

/// Whether an enrollment token's row (`expires_at`, `used_at`) can be spent at `now`.
fn token_state(row: Option<&AnyRow>, now: i64) -> Result<Result<(), EnrollRefusal>, StoreError> {
    let Some(row) = row else { return Ok(Err(EnrollRefusal::UnknownToken)) };
    if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
        return Ok(Err(EnrollRefusal::TokenUsed));
    }
    if row.try_get::<i64, _>("expires_at")? <= now {
        return Ok(Err(EnrollRefusal::TokenExpired));
    }
    Ok(Ok(()))
}

fn device_row(r: &AnyRow) -> Result<DeviceRow, StoreError> {
    Ok(DeviceRow {
        id: parse("device id", &r.try_get::<String, _>("id")?)?,
        labels: json("device labels", &r.try_get::<String, _>("labels")?)?,
        device_class: r.try_get("device_class")?,
        hardware: r.try_get("hardware")?,
        cert_serial: r.try_get("cert_serial")?,
        enrolled_at: r.try_get("enrolled_at")?,
        last_seen: r.try_get("last_seen")?,
        revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        report: r.try_get("report")?,
        desired_seq: r.try_get("desired_seq")?,
        desired_digest: r.try_get("desired_digest")?,
        desired_doc: r.try_get("desired_doc")?,
        desired_expires: r.try_get("desired_expires")?,
    })
}

fn release_row(r: &AnyRow) -> Result<ReleaseRow, StoreError> {
    Ok(ReleaseRow {
        model: parse("model name", &r.try_get::<String, _>("model")?)?,
        version: version("release version", r.try_get("version")?)?,
        security_floor: version("security floor", r.try_get("security_floor")?)?,
        description: r.try_get("description")?,
        variants: json("variants", &r.try_get::<String, _>("variants")?)?,
        manifest: r.try_get("manifest")?,
        published_at: r.try_get("published_at")?,
        published_by: r.try_get("published_by")?,
    })
}

impl Store {
    /// Connects and migrates. `sqlite:` URLs get WAL, `NORMAL` sync and a busy timeout on every connection.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        options = match backend {
            Backend::Sqlite => options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA cache_size = -65536").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(16),
        };
        let pool = options.connect(url).await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        let sqlite = match backend {
            Backend::Sqlite => {
                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
                let options = SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .pragma("cache_size", "-65536");
                Some(SqlitePoolOptions::new().max_connections(1).connect_with(options).await?)
            }
            Backend::Postgres => None,
        };
        Ok(Self { pool, sqlite, backend })
    }

    /// A transaction that will write. On SQLite it takes the write lock at `BEGIN IMMEDIATE`: a deferred
    /// transaction that reads and then writes fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT,
    /// which the busy timeout does not cover) when another connection committed in between.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(native) = &self.sqlite {
            native.close().await;
        }
    }

    // === tokens ===

    pub async fn create_token(
        &self,
        name: &str,
        role: TokenRole,
        hash: &str,
        by: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(now)
        .bind(by)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    fn token_row(r: &AnyRow) -> Result<TokenRow, StoreError> {
        Ok(TokenRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            role: parse("token role", &r.try_get::<String, _>("role")?)?,
            created_at: r.try_get("created_at")?,
            revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            expires_at: r.try_get("expires_at")?,
        })
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at, expires_at FROM api_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::token_row).transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query("SELECT id, name, role, created_at, revoked_at, expires_at FROM api_tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::token_row).collect()
    }

    pub async fn revoke_token(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // === audit ===

    pub async fn audit(&self, a: Audit<'_>, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::audit_in(&mut tx, a, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An audit entry inside a transaction that changes what it records.
    async fn audit_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        a: Audit<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, source, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now)
        .bind(a.actor)
        .bind(a.action)
        .bind(a.target)
        .bind(a.source)
        .bind(a.detail.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Leadership for work one server at a time must do (rollout evaluation): on PostgreSQL a session advisory
    /// lock, held by the connection kept in the answer (dropped with it, or when the connection dies); on
    /// SQLite, which one server process owns, always granted.
    pub async fn try_lead(&self, key: i64) -> Result<Option<Leadership>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(Some(Leadership(None))),
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await?;
                let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("got")?;
                Ok(got.then_some(Leadership(Some(conn))))
            }
        }
    }

    pub async fn list_audit(
        &self,
        limit: i64,
        before: Option<i64>,
        target: Option<&str>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, source, detail FROM audit_log WHERE id < $1 \
             AND ($2 = '' OR target = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(target.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    source: r.try_get("source")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    // === roots ===

    pub async fn roots(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query("SELECT version, body FROM roots ORDER BY version").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("version")?, r.try_get("body")?))).collect()
    }

    /// Adds a root version; false if that version is already stored.
    pub async fn add_root(&self, version: i64, body: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO roots (version, body, added_at) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version)
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // === releases ===

    /// Stores a release if its version is above every stored version of the model, atomically.
    pub async fn publish_release(&self, r: &ReleaseRow) -> Result<Publish, StoreError> {
        let mut tx = self.write_tx().await?;
        let latest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM releases WHERE model = $1")
            .bind(r.model.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        if let Some(latest) = latest
            && latest >= r.version.get() as i64
        {
            return Ok(Publish::NotNewer { latest });
        }
        let inserted = sqlx::query(
            "INSERT INTO releases (model, version, security_floor, description, variants, manifest, published_at, \
             published_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (model, version) DO NOTHING",
        )
        .bind(r.model.as_str())
        .bind(r.version.get() as i64)
        .bind(r.security_floor.get() as i64)
        .bind(&r.description)
        .bind(serde_json::to_string(&r.variants).unwrap_or_default())
        .bind(&r.manifest)
        .bind(r.published_at)
        .bind(&r.published_by)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            // Another publisher won the race for this version.
            return Ok(Publish::NotNewer { latest: r.version.get() as i64 });
        }
        tx.commit().await?;
        Ok(Publish::Stored)
    }

    pub async fn list_models(&self) -> Result<Vec<(ModelName, ReleaseVersion, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT model, MAX(version) AS latest, COUNT(*) AS n FROM releases GROUP BY model ORDER BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse("model name", &r.try_get::<String, _>("model")?)?,
                    version("release version", r.try_get("latest")?)?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    pub async fn list_releases(&self, model: &ModelName) -> Result<Vec<ReleaseRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM releases WHERE model = $1 ORDER BY version DESC")
            .bind(model.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(release_row).collect()
    }

    pub async fn get_release(&self, model: &ModelName, v: ReleaseVersion) -> Result<Option<ReleaseRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM releases WHERE model = $1 AND version = $2")
            .bind(model.as_str())
            .bind(v.get() as i64)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(release_row).transpose()
    }

    // === assignments ===

    pub async fn add_assignment(
        &self,
        model: &ModelName,
        v: ReleaseVersion,
        selector: &Selector,
        by: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO assignments (model, version, selector, created_at, created_by) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(model.as_str())
        .bind(v.get() as i64)
        .bind(selector.to_string())
        .bind(now)
        .bind(by)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    pub async fn delete_assignment(&self, id: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM assignments WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every assignment, oldest first (a newer one for the same model and devices wins).
    pub async fn assignments(&self) -> Result<Vec<AssignmentRow>, StoreError> {
        let rows =
            sqlx::query("SELECT id, model, version, selector, created_at, created_by FROM assignments ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(AssignmentRow {
                    id: r.try_get("id")?,
                    model: parse("model name", &r.try_get::<String, _>("model")?)?,
                    version: version("release version", r.try_get("version")?)?,
                    selector: parse("selector", &r.try_get::<String, _>("selector")?)?,
                    created_at: r.try_get("created_at")?,
                    created_by: r.try_get("created_by")?,
                })
            })
            .collect()
    }

    // === enrollment ===

    pub async fn create_enroll_token(
        &self,
        hash: &str,
        labels: &Labels,
        expires_at: i64,
        by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enroll_tokens (token_hash, labels, expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash)
        .bind(serde_json::to_string(labels).unwrap_or_default())
        .bind(expires_at)
        .bind(now)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enrolls a device with a one-time token, in one transaction: the token is spent and the device created,
    /// or neither. Answers the token's labels, or why not.
    /// Whether an enrollment token could be spent now (known, unused, unexpired): checked before any CA work,
    /// so a caller without a token costs the server a lookup, not a signature. `enroll` checks again, in the
    /// transaction that spends it.
    pub async fn enroll_token_usable(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<(), EnrollRefusal>, StoreError> {
        let row = sqlx::query("SELECT expires_at, used_at FROM enroll_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        token_state(row.as_ref(), now)
    }

    pub async fn enroll(
        &self,
        token_hash: &str,
        device: &DeviceId,
        device_class: &str,
        hardware: &str,
        cert_serial: &str,
        now: i64,
    ) -> Result<Result<Labels, EnrollRefusal>, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT labels, expires_at, used_at FROM enroll_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        if let Err(refused) = token_state(row.as_ref(), now)? {
            return Ok(Err(refused));
        }
        let Some(row) = row else { return Ok(Err(EnrollRefusal::UnknownToken)) };
        let labels: Labels = json("enrollment token labels", &row.try_get::<String, _>("labels")?)?;
        let spent = sqlx::query(
            "UPDATE enroll_tokens SET used_at = $1, used_by = $2 WHERE token_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(device.as_str())
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Ok(Err(EnrollRefusal::TokenUsed));
        }
        let created = sqlx::query(
            "INSERT INTO devices (id, labels, device_class, hardware, cert_serial, enrolled_at) VALUES ($1, $2, $3, $4, \
             $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(device.as_str())
        .bind(serde_json::to_string(&labels).unwrap_or_default())
        .bind(device_class)
        .bind(hardware)
        .bind(cert_serial)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if created.rows_affected() != 1 {
            return Ok(Err(EnrollRefusal::DeviceExists));
        }
        Self::write_labels(&mut tx, device, &labels).await?;
        tx.commit().await?;
        Ok(Ok(labels))
    }

    async fn write_labels(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        device: &DeviceId,
        labels: &Labels,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM device_labels WHERE device_id = $1").bind(device.as_str()).execute(&mut **tx).await?;
        for (k, v) in labels {
            sqlx::query("INSERT INTO device_labels (device_id, key, value) VALUES ($1, $2, $3)")
                .bind(device.as_str())
                .bind(k)
                .bind(v)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    // === devices ===

    pub async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_row).transpose()
    }

    /// Devices matching the filter, in id order, after `after`, at most `limit`.
    pub async fn list_devices(
        &self,
        filter: &DeviceFilter<'_>,
        after: Option<&DeviceId>,
        limit: i64,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        let mut sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id > $1");
        let mut n = 1;
        sql.push_str(&selector_clause(&filter.selector, &mut n));
        let mut next = || {
            n += 1;
            n
        };
        if filter.id_prefix.is_some() {
            let (a, b) = (next(), next());
            sql.push_str(&format!(" AND substr(d.id, 1, CAST(${a} AS INTEGER)) = ${b}"));
        }
        if filter.device_class.is_some() {
            sql.push_str(&format!(" AND d.device_class = ${}", next()));
        }
        sql.push_str(&format!(" ORDER BY d.id LIMIT ${}", next()));
        let mut q = sqlx::query(&sql).bind(after.map(|a| a.as_str().to_owned()).unwrap_or_default());
        for (k, v) in &filter.selector.0 {
            q = q.bind(k.clone()).bind(v.clone());
        }
        if let Some(p) = filter.id_prefix {
            q = q.bind(p.chars().count() as i64).bind(p.to_owned());
        }
        if let Some(c) = filter.device_class {
            q = q.bind(c.to_owned());
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(device_row).collect()
    }

    /// The fleet in numbers: devices per class (online since `online_since`, never seen, failing), revoked
    /// devices, and devices per model and release in their active slots, all counted by the database. The
    /// totals are left for the caller to add up.
    pub async fn fleet_overview(&self, online_since: i64) -> Result<FleetOverview, StoreError> {
        let classes = sqlx::query(
            "SELECT device_class, COUNT(*) AS devices, \
             CAST(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END) AS BIGINT) AS online, \
             CAST(SUM(CASE WHEN last_seen IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS never_seen, \
             CAST(SUM(failing) AS BIGINT) AS failing \
             FROM devices WHERE revoked_at IS NULL GROUP BY device_class ORDER BY device_class",
        )
        .bind(online_since)
        .fetch_all(&self.pool)
        .await?;
        let count =
            |r: &sqlx::any::AnyRow, c: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        let mut out = FleetOverview::default();
        for r in &classes {
            out.by_class.push(ClassCount {
                device_class: r.try_get("device_class")?,
                devices: count(r, "devices")?,
                online: count(r, "online")?,
                never_seen: count(r, "never_seen")?,
                failing: count(r, "failing")?,
            });
        }
        out.revoked = count(
            &sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE revoked_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
            "n",
        )?;
        let releases = "SELECT model, release, COUNT(*) AS devices FROM device_running GROUP BY model, release \
                        ORDER BY model, release";
        for r in sqlx::query(releases).fetch_all(&self.pool).await? {
            let model: String = r.try_get("model")?;
            out.by_release.push(ReleaseCount {
                model: parse("model", &model)?,
                release: version("release", r.try_get("release")?)?,
                devices: count(&r, "devices")?,
            });
        }
        Ok(out)
    }

    pub async fn set_labels(&self, id: &DeviceId, labels: &Labels) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE devices SET labels = $1 WHERE id = $2")
            .bind(serde_json::to_string(labels).unwrap_or_default())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        Self::write_labels(&mut tx, id, labels).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a device; what it ran no longer counts in the fleet overview.
    pub async fn revoke_device(&self, id: &DeviceId, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM device_running WHERE device_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Devices per class and status (`online`: seen since `online_after` ms; `offline`; `revoked`).
    pub async fn device_counts(&self, online_after: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_class, CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN last_seen >= $1 THEN 'online' \
             ELSE 'offline' END AS status, COUNT(*) AS n FROM devices GROUP BY device_class, status",
        )
        .bind(online_after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("device_class")?, r.try_get("status")?, r.try_get("n")?))).collect()
    }

    /// Devices per (model, release in the active slot, whether the device reports an error), from their last
    /// reports; revoked devices have none.
    pub async fn running_counts(&self) -> Result<Vec<(String, i64, bool, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.model, r.release, d.failing, COUNT(*) AS n FROM device_running r JOIN devices d \
             ON d.id = r.device_id GROUP BY r.model, r.release, d.failing ORDER BY r.model, r.release",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get("model")?, r.try_get("release")?, r.try_get::<i64, _>("failing")? != 0, r.try_get("n")?))
            })
            .collect()
    }

    /// Whether any device was ever enrolled, revoked or not.
    pub async fn has_devices(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 AS one FROM devices LIMIT 1").fetch_optional(&self.pool).await?.is_some())
    }

    /// A renewal: `serial` becomes the device's certificate, and `presented` (the one it renewed with) stays
    /// accepted until the new one is first used.
    pub async fn renew_cert(&self, id: &DeviceId, serial: &str, presented: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET cert_serial = $1, cert_serial_prev = $2 WHERE id = $3")
            .bind(serial)
            .bind(presented)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What the device may present: its certificate serial and, during a renewal, the one it renewed from;
    /// nothing once revoked. `None`: no such device.
    pub async fn credential(&self, id: &DeviceId) -> Result<Option<crate::state::Credential>, StoreError> {
        use crate::state::Credential;
        let row = sqlx::query("SELECT cert_serial, cert_serial_prev, revoked_at FROM devices WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(match r.try_get::<Option<i64>, _>("revoked_at")? {
                Some(_) => Credential::Revoked,
                None => {
                    Credential::Serials { current: r.try_get("cert_serial")?, previous: r.try_get("cert_serial_prev")? }
                }
            })
        })
        .transpose()
    }

    /// The device used its new certificate: the one it renewed from is retired.
    pub async fn retire_prev_cert(&self, id: &DeviceId) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET cert_serial_prev = NULL WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_cert_serial(&self, id: &DeviceId, serial: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET cert_serial = $1 WHERE id = $2")
            .bind(serial)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes many `last_seen` times in one transaction.
    pub async fn touch_devices(&self, seen: &BTreeMap<DeviceId, i64>) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for (id, at) in seen {
            sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
                .bind(*at)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a device's report (and its hardware profile, when it sent one), with what it says runs and
    /// whether it failed beside it for the fleet overview, in one transaction. Answers whether it differed from
    /// the stored one (nothing is written when it did not).
    pub async fn set_report(
        &self,
        id: &DeviceId,
        report: &str,
        hardware: Option<&str>,
        running: &[(ModelName, ReleaseVersion)],
        failing: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        // The hardware profile rides in the report: the same report text is the same profile.
        let updated = sqlx::query(
            "UPDATE devices SET report = $1, hardware = COALESCE($2, hardware), failing = $3 WHERE id = $4 \
             AND (report IS NULL OR report <> $1)",
        )
        .bind(report)
        .bind(hardware)
        .bind(failing as i64)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM device_running WHERE device_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        for (model, release) in running {
            sqlx::query("INSERT INTO device_running (device_id, model, release) VALUES ($1, $2, $3)")
                .bind(id.as_str())
                .bind(model.as_str())
                .bind(release.get() as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Raises the device's desired-state sequence to `seq` when it is below (a device accepted documents this
    /// database does not remember: it was restored from an older backup), forgetting the stored document so the
    /// next one is signed above it. Answers whether it was below.
    pub async fn raise_desired_seq(&self, id: &DeviceId, seq: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE devices SET desired_seq = $1, desired_digest = NULL, desired_doc = NULL WHERE id = $2 \
             AND desired_seq < $1",
        )
        .bind(seq)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a newly issued desired-state document; the sequence only goes up (a stale writer loses).
    pub async fn set_desired(
        &self,
        id: &DeviceId,
        seq: i64,
        digest: &str,
        doc: &str,
        expires: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE devices SET desired_seq = $1, desired_digest = $2, desired_doc = $3, desired_expires = $4 \
             WHERE id = $5 AND desired_seq < $1",
        )
        .bind(seq)
        .bind(digest)
        .bind(doc)
        .bind(expires)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // === events ===

    /// Stores events idempotently; answers how many were new.
    pub async fn add_events(
        &self,
        device: &DeviceId,
        events: &[(String, String, String)],
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut new = 0;
        for (id, kind, body) in events {
            let r = sqlx::query(
                "INSERT INTO device_events (device_id, event_id, kind, body, received_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device_id, event_id) DO NOTHING",
            )
            .bind(device.as_str())
            .bind(id)
            .bind(kind)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            new += r.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(new)
    }

    pub async fn events(&self, device: &DeviceId, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT body FROM device_events WHERE device_id = $1 ORDER BY received_at DESC, event_id LIMIT $2",
        )
        .bind(device.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("body")?)).collect()
    }
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefusal {
    UnknownToken,
    TokenUsed,
    TokenExpired,
    DeviceExists,
}
