//! Devices: enrollment with one-time tokens and the built-in CA, check-in (mutual TLS) answering signed
//! desired-state documents or 304, events, certificate renewal, and the inventory operators see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::api::{
    CHECKIN_INTERVAL_HEADER, CreateEnrollToken, DeviceDetail, DeviceEvent, DevicePage, DeviceReport, DeviceSummary,
    DeviceTelemetry, DeviceWindow, EnrollRequest, EnrollResponse, EnrollTokenCreated, EventKind, EventsAccepted,
    FleetOverview, HardwareProfile, ROOT_VERSION_HEADER, RenewRequest, Running, Selector, SetLabels, check_label,
};
use edgefleet_protocol::rollout::MAX_MEASURED_VARIANTS;
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use model_registry::{Envelope, ReleaseManifest};
use serde::Deserialize;

use super::{
    ApiError, ApiJson, ApiResult, Authorized, DeviceCaller, Operator, Principal, Source, Viewer, new_token, token_hash,
};
use crate::changes::Scope;
use crate::desired::{self, AssignmentSnapshot, CachedDesired, Entry, Release};
use crate::state::{AppState, Reported, now_ms, rfc3339};
use crate::store::{DeviceFilter, DeviceRow, EnrollRefusal};

fn device_id(s: &str) -> ApiResult<DeviceId> {
    s.parse().map_err(|e: edgefleet_protocol::IdError| ApiError::bad_request("invalid_name", e.to_string()))
}

fn check_labels(labels: &edgefleet_protocol::api::Labels) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::bad_request("invalid_labels", "at most 64 labels"));
    }
    for (k, v) in labels {
        check_label(k, v).map_err(|m| ApiError::bad_request("invalid_labels", m))?;
    }
    Ok(())
}

// === enrollment ===

pub async fn create_enroll_token(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    ApiJson(req): ApiJson<CreateEnrollToken>,
) -> ApiResult<(StatusCode, Json<EnrollTokenCreated>)> {
    check_labels(&req.labels)?;
    let ttl = req.expires_in_secs.unwrap_or(86_400);
    if ttl == 0 || ttl > 30 * 86_400 {
        return Err(ApiError::bad_request("invalid_expiry", "expires_in_secs must be 1 to 2592000 (30 days)"));
    }
    let token = new_token("efe")?;
    let now = now_ms();
    let expires = now + (ttl as i64) * 1000;
    state.store.create_enroll_token(&token_hash(&token), &req.labels, expires, &who.actor(), now).await?;
    state
        .audit(
            &who,
            &source,
            "enroll_token.create",
            "enrollment-token",
            serde_json::json!({"labels": req.labels, "expires_in_secs": ttl}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(EnrollTokenCreated { token, expires_at: rfc3339(expires), labels: req.labels })))
}

fn check_hardware(hw: &HardwareProfile) -> ApiResult<()> {
    let ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic());
    if !ok(&hw.device_class) || !ok(&hw.arch) || hw.execution_providers.len() > 16 || hw.soc.len() > 16 {
        return Err(ApiError::bad_request("invalid_hardware", "hardware profile needs a device_class and an arch"));
    }
    if !hw.execution_providers.iter().chain(&hw.soc).all(|s| ok(s)) {
        return Err(ApiError::bad_request(
            "invalid_hardware",
            "execution providers and soc ids are short printable names",
        ));
    }
    Ok(())
}

/// Why an enrollment token was refused, as the API says it.
fn enroll_refusal(r: EnrollRefusal, device: &DeviceId) -> ApiError {
    match r {
        EnrollRefusal::UnknownToken => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_invalid", "unknown enrollment token")
        }
        EnrollRefusal::TokenUsed => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_used", "this enrollment token was already used")
        }
        EnrollRefusal::TokenExpired => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_expired", "this enrollment token has expired")
        }
        EnrollRefusal::DeviceExists => {
            ApiError::conflict("device_exists", format!("device {device} is already enrolled"))
        }
    }
}

/// `POST /api/v1/enroll`: no credentials but the one-time token in the body. Rate-limited per source address
/// (before the body is read), and the token is checked before any CA work.
pub async fn enroll(
    State(state): State<AppState>,
    source: Source,
    _: super::EnrollAllowed,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    check_hardware(&req.hardware)?;
    let hash = token_hash(&req.token);
    state.store.enroll_token_usable(&hash, now_ms()).await?.map_err(|r| enroll_refusal(r, &req.device_id))?;
    let (certificate_pem, serial) = state
        .ca
        .issue(&req.csr_pem, &req.device_id, state.config.device_cert_days)
        .map_err(|e| ApiError::bad_request("invalid_csr", e.to_string()))?;
    let hardware = serde_json::to_string(&req.hardware).map_err(|e| ApiError::internal(&e))?;
    let outcome =
        state.store.enroll(&hash, &req.device_id, &req.hardware.device_class, &hardware, &serial, now_ms()).await?;
    let labels = outcome.map_err(|r| enroll_refusal(r, &req.device_id))?;
    let who = Principal::Device(req.device_id.clone());
    state
        .audit(
            &who,
            &source,
            "device.enroll",
            req.device_id.as_str(),
            serde_json::json!({"labels": labels, "class": req.hardware.device_class, "serial": serial}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device_id: req.device_id,
            certificate_pem,
            ca_pem: state.ca.pem.clone(),
            labels,
            checkin_interval_secs: state.config.checkin_interval_secs,
        }),
    ))
}

/// `POST /api/v1/device/renew`: a new certificate for the calling device's new key.
pub async fn renew(
    State(state): State<AppState>,
    DeviceCaller(id): DeviceCaller,
    source: Source,
    axum::Extension(conn): axum::Extension<super::ConnInfo>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = Principal::Device(id.clone());
    let (pem, serial) = state
        .ca
        .issue(&req.csr_pem, &id, state.config.device_cert_days)
        .map_err(|e| ApiError::bad_request("invalid_csr", e.to_string()))?;
    // The new certificate is the device's; the one it renewed with is retired at the new one's first use.
    let presented = conn.client.map(|c| c.serial).unwrap_or_default();
    state.store.renew_cert(&id, &serial, &presented).await?;
    state.changed(Scope::Device(id.clone())).await?;
    state.audit(&who, &source, "device.renew", id.as_str(), serde_json::json!({"serial": serial})).await?;
    Ok(Json(serde_json::json!({"certificate_pem": pem, "ca_pem": state.ca.pem})))
}

// === check-in ===

#[derive(Debug, Deserialize)]
pub struct CheckinQuery {
    /// Long-poll: wait up to this many seconds for the desired state to change.
    pub wait: Option<u64>,
}

/// The assignments with their parsed releases, rebuilt once per generation.
async fn snapshot(state: &AppState) -> ApiResult<Arc<AssignmentSnapshot>> {
    let cached = |generation: u64| {
        state
            .assignments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| s.generation == generation)
            .cloned()
    };
    if let Some(s) = cached(*state.generation.borrow()) {
        return Ok(s);
    }
    let _single_flight = state.rebuilding.lock().await;
    let generation = *state.generation.borrow();
    if let Some(s) = cached(generation) {
        return Ok(s);
    }
    let mut releases: HashMap<(ModelName, ReleaseVersion), Option<Release>> = HashMap::new();
    let mut release = async |model: &ModelName, version: ReleaseVersion| -> ApiResult<Option<Release>> {
        if let Some(r) = releases.get(&(model.clone(), version)) {
            return Ok(r.clone());
        }
        let parsed = match state.store.get_release(model, version).await? {
            None => None,
            Some(row) => {
                let envelope: Envelope = serde_json::from_str(&row.manifest).map_err(|e| ApiError::internal(&e))?;
                let manifest: ReleaseManifest = envelope.typed().map_err(|e| ApiError::internal(&e))?;
                Some(Release { manifest: Arc::new(manifest), envelope: Arc::new(envelope) })
            }
        };
        releases.insert((model.clone(), version), parsed.clone());
        Ok(parsed)
    };
    let mut entries = Vec::new();
    for a in state.store.assignments().await? {
        if let Some(r) = release(&a.model, a.version).await? {
            entries.push(Entry {
                created_at: a.created_at,
                selector: a.selector,
                release: r,
                rollout: None,
                choices: Default::default(),
            });
        }
    }
    for row in state.store.rollouts().await? {
        let r = &row.rollout;
        if let (Some(new), Some(baseline)) = (release(&r.model, r.release).await?, release(&r.model, r.baseline).await?)
        {
            let choices = if r.choose_variant.is_first_fit() {
                Default::default()
            } else {
                let stored = state.store.rollout_choices(&r.id).await?;
                Arc::new(stored.into_iter().filter(|c| c.decided).map(|c| (c.class, c.variant)).collect())
            };
            entries.push(Entry {
                created_at: row.created_at,
                selector: r.selector.clone(),
                release: new,
                rollout: Some((Arc::new(row.rollout), row.state, baseline)),
                choices,
            });
        }
    }
    entries.sort_by_key(|e| e.created_at);
    let snap = Arc::new(AssignmentSnapshot { generation, entries });
    *state.assignments.write().unwrap_or_else(|p| p.into_inner()) = Some(snap.clone());
    Ok(snap)
}

/// The device's current document: from the cache when nothing changed and it is fresh, else planned again,
/// and signed anew only when its content changed or it passed half its lifetime.
async fn desired_for(state: &AppState, id: &DeviceId) -> ApiResult<CachedDesired> {
    let generation = *state.generation.borrow();
    let now = now_ms();
    if let Some(c) = state.desired.get(id)
        && c.generation == generation
        && now < c.refresh_at
    {
        return Ok(c.clone());
    }
    let snap = snapshot(state).await?;
    let ttl_ms = (state.config.desired_ttl_secs as i64) * 1000;
    let mut cached = None;
    for _attempt in 0..3 {
        let row: DeviceRow =
            state.store.device(id).await?.ok_or_else(|| ApiError::forbidden(format!("device {id} is not enrolled")))?;
        let hw: HardwareProfile = serde_json::from_str(&row.hardware).map_err(|e| ApiError::internal(&e))?;
        let plan = desired::plan(&snap, id, &row.labels, &hw);
        let digest = desired::content_digest(&plan);
        if let (Some(d), Some(doc), Some(exp)) = (&row.desired_digest, &row.desired_doc, row.desired_expires)
            && *d == digest
            && exp - ttl_ms / 2 > now
        {
            cached = Some(CachedDesired {
                generation,
                sequence: row.desired_seq,
                body: doc.clone().into(),
                refresh_at: exp - ttl_ms / 2,
                releases: plan.releases(),
                previous: Arc::from([]),
            });
            break;
        }
        let sequence = row.desired_seq + 1;
        let issued = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        let body =
            desired::sign(&plan, id, sequence as u64, issued, chrono::Duration::milliseconds(ttl_ms), &state.fleet_key)
                .map_err(|e| ApiError::internal(&e))?;
        let body = String::from_utf8(body).map_err(|e| ApiError::internal(&e))?;
        // Only a higher sequence is written; if another check-in of this device won, read again.
        if state.store.set_desired(id, sequence, &digest, &body, now + ttl_ms).await? {
            record_unfit(state, id, &plan.unfit, &hw, now).await?;
            cached = Some(CachedDesired {
                generation,
                sequence,
                body: body.into(),
                refresh_at: now + ttl_ms / 2,
                releases: plan.releases(),
                previous: Arc::from([]),
            });
            break;
        }
    }
    let cached = cached.ok_or_else(|| ApiError::internal(&"desired state kept changing under concurrent check-ins"))?;
    let mut cached = cached;
    if let Some(old) = state.desired.get(id) {
        cached.previous = if old.releases != cached.releases { old.releases.clone() } else { old.previous.clone() };
    }
    state.desired.insert(id.clone(), cached.clone());
    Ok(cached)
}

/// The releases device `id` was told to run, which the telemetry receiver takes points about: those of its
/// cached document and of the one before it; else (the cache let it go) planned afresh from the assignments —
/// reads only: nothing is signed or written on the telemetry path.
pub(crate) async fn told_releases(state: &AppState, id: &DeviceId) -> ApiResult<Vec<(ModelName, ReleaseVersion)>> {
    if let Some(c) = state.desired.get(id) {
        return Ok(c.releases.iter().chain(c.previous.iter()).cloned().collect());
    }
    let snap = snapshot(state).await?;
    let Some(row) = state.store.device(id).await? else { return Ok(Vec::new()) };
    let hw: HardwareProfile = serde_json::from_str(&row.hardware).map_err(|e| ApiError::internal(&e))?;
    Ok(desired::plan(&snap, id, &row.labels, &hw).releases().to_vec())
}

/// Records, as the device's events, each assigned model for which no variant fits its hardware: the device gets
/// no entry for it (nothing is guessed), and operators see why. One event per (model, release) and device.
async fn record_unfit(
    state: &AppState,
    id: &DeviceId,
    unfit: &[(ModelName, ReleaseVersion)],
    hw: &HardwareProfile,
    now: i64,
) -> ApiResult<()> {
    let mut rows = Vec::new();
    for (model, release) in unfit {
        let event = DeviceEvent {
            id: format!("no-variant-fits-{model}-{release}"),
            kind: EventKind::NoVariantFits,
            model: Some(model.clone()),
            release: Some(*release),
            variant: None,
            detail: format!(
                "no variant of {model} {release} fits this device (class {}, providers {})",
                hw.device_class,
                hw.execution_providers.join(", ")
            ),
            at: rfc3339(now),
            measurements: Vec::new(),
        };
        let body = serde_json::to_string(&event).map_err(|e| ApiError::internal(&e))?;
        rows.push((event.id, "no_variant_fits".to_owned(), body));
    }
    if !rows.is_empty() {
        state.store.add_events(id, &rows, now).await?;
    }
    Ok(())
}

async fn store_report(state: &AppState, id: &DeviceId, report: &DeviceReport) -> ApiResult<()> {
    let text = serde_json::to_string(report).map_err(|e| ApiError::internal(&e))?;
    let reported = Reported::new(report, &text);
    let unchanged = state.reports.get(id).is_some_and(|d| d == reported.digest);
    if unchanged {
        return Ok(());
    }
    let hardware = match &report.hardware {
        Some(hw) => {
            check_hardware(hw)?;
            Some(serde_json::to_string(hw).map_err(|e| ApiError::internal(&e))?)
        }
        None => None,
    };
    let changed = state.store.set_report(id, &text, hardware.as_deref(), &reported.active, !reported.healthy).await?;
    // The device accepted a higher sequence than this database remembers (restored from an older backup): go
    // on above it, or the device would refuse every document as a replay.
    if let Some(seq) = report.desired_sequence.and_then(|s| i64::try_from(s).ok())
        && state.store.raise_desired_seq(id, seq).await?
    {
        tracing::warn!(device = %id, sequence = seq, "the device is ahead of the database's sequence; continuing above it");
        state.desired.invalidate(id);
    }
    if hardware.is_some() {
        // A changed hardware profile can change the variant chosen.
        state.desired.invalidate(id);
    }
    state.reports.insert(id.clone(), reported.digest);
    // Other replicas drop what they cached of this device: a report they remember may be this one's
    // predecessor (a device that went back to it through them would otherwise not be written). Not for a
    // report the database already had (every device's first check-in after a restart).
    if changed {
        state.publish(&Scope::Device(id.clone())).await?;
    }
    Ok(())
}

/// Refuses to answer a device from caches this server can no longer vouch for (see `crate::changes`).
fn in_sync(state: &AppState) -> ApiResult<()> {
    if state.in_sync() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "out_of_sync",
        "this server cannot reach its database; try again (another replica may answer)",
    ))
}

/// `POST /api/v1/device/checkin[?wait=SECONDS]`: 200 with the signed desired state, or 304 when the device's
/// `If-None-Match` already names it.
pub async fn checkin(
    State(state): State<AppState>,
    super::Limited(id, _): super::Limited<super::Checkins>,
    Query(q): Query<CheckinQuery>,
    headers: HeaderMap,
    ApiJson(report): ApiJson<DeviceReport>,
) -> ApiResult<Response> {
    in_sync(&state)?;
    let _ = state.seen.send((id.clone(), now_ms()));
    store_report(&state, &id, &report).await?;
    let known = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.config.max_wait_secs));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.generation.subscribe();
    let interval = HeaderValue::from(state.config.checkin_interval_secs);
    let root_at_start = state.trust().root.version;
    let root_header = |v: u64| (ROOT_VERSION_HEADER, HeaderValue::from(v));
    // A change to this device alone (labels, revocation) wakes this long-poll without waking the fleet's.
    let waiter = if wait.is_zero() {
        None
    } else {
        Some(state.waiters.get_with(id.clone(), || Arc::new(tokio::sync::Notify::new())))
    };
    loop {
        let device_changed = waiter.as_ref().map(|w| w.notified());
        let mut device_changed = std::pin::pin!(async move {
            match device_changed {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        });
        let current = desired_for(&state, &id).await?;
        let etag = current.etag();
        if known.as_deref() != Some(etag.as_str()) {
            state.checkins_changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let etag = HeaderValue::from_str(&etag).map_err(|e| ApiError::internal(&e))?;
            return Ok((
                StatusCode::OK,
                [(header::ETAG, etag), (header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                [(CHECKIN_INTERVAL_HEADER, interval), root_header(state.trust().root.version)],
                current.body,
            )
                .into_response());
        }
        let refresh =
            tokio::time::Instant::now() + Duration::from_millis((current.refresh_at - now_ms()).max(0) as u64);
        tokio::select! {
            changed = changes.changed(), if tokio::time::Instant::now() < deadline => {
                // A new trust root leaves the document as it was: answer now, so the device walks to it.
                if changed.is_err() || state.trust().root.version != root_at_start { break; }
            }
            () = &mut device_changed, if tokio::time::Instant::now() < deadline => {}
            _ = tokio::time::sleep_until(refresh), if refresh < deadline => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    // "Unchanged" only from a server that still follows the database.
    in_sync(&state)?;
    state.checkins_unchanged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok((StatusCode::NOT_MODIFIED, [(CHECKIN_INTERVAL_HEADER, interval), root_header(state.trust().root.version)])
        .into_response())
}

/// `POST /api/v1/device/events`: a batch of events, each with its own idempotency id.
pub async fn events(
    State(state): State<AppState>,
    super::Limited(id, _): super::Limited<super::Events>,
    ApiJson(events): ApiJson<Vec<DeviceEvent>>,
) -> ApiResult<Json<EventsAccepted>> {
    if events.len() > 1000 {
        return Err(ApiError::bad_request("too_many_events", "at most 1000 events per request"));
    }
    let mut rows = Vec::with_capacity(events.len());
    for e in &events {
        if e.id.is_empty() || e.id.len() > 128 || e.detail.len() > 4096 {
            return Err(ApiError::bad_request(
                "invalid_event",
                "event ids are 1 to 128 characters; details at most 4 KiB",
            ));
        }
        let kind = serde_json::to_value(e.kind).map_err(|e| ApiError::internal(&e))?;
        let body = serde_json::to_string(e).map_err(|e| ApiError::internal(&e))?;
        rows.push((e.id.clone(), kind.as_str().unwrap_or_default().to_owned(), body));
    }
    let now = now_ms();
    for e in events.iter().filter(|e| !e.measurements.is_empty()) {
        record_measurements(&state, &id, e, now).await?;
    }
    let accepted = state.store.add_events(&id, &rows, now).await?;
    Ok(Json(EventsAccepted { accepted, duplicates: rows.len() - accepted }))
}

/// The variant measurements a `measured` event carries, stored under the device's class for the rollout
/// engine's choice: only of the new release of a rollout that chooses by measurement (from the assignment
/// snapshot every check-in uses), and only of variants that release has.
async fn record_measurements(state: &AppState, id: &DeviceId, e: &DeviceEvent, now: i64) -> ApiResult<()> {
    let invalid = |m: String| ApiError::bad_request("invalid_event", m);
    let (EventKind::Measured, Some(model), Some(release)) = (e.kind, &e.model, e.release) else {
        return Err(invalid("measurements come in a measured event that names its model and release".into()));
    };
    if e.measurements.len() > MAX_MEASURED_VARIANTS || e.measurements.iter().any(|m| m.detail.len() > 1024) {
        return Err(invalid(format!(
            "at most {MAX_MEASURED_VARIANTS} measurements per event, each detail at most 1 KiB"
        )));
    }
    let snap = snapshot(state).await?;
    let measured = snap.entries.iter().find(|e| {
        let m = &e.release.manifest;
        e.rollout.as_ref().is_some_and(|(r, ..)| !r.choose_variant.is_first_fit())
            && m.model == *model
            && m.version == release
    });
    let Some(entry) = measured else {
        return Err(invalid(format!("no rollout chooses the variant of {model} {release} by measurement")));
    };
    if let Some(m) = e.measurements.iter().find(|m| entry.release.manifest.variant(&m.variant).is_none()) {
        return Err(invalid(format!("release {release} of {model} has no variant {}", m.variant)));
    }
    let device =
        state.store.device(id).await?.ok_or_else(|| ApiError::forbidden(format!("device {id} is not enrolled")))?;
    state.store.add_measurements(id, &device.device_class, model, release, &e.measurements, now).await?;
    Ok(())
}

// === inventory ===

/// A device is online when seen within three check-in intervals.
fn online_since(state: &AppState) -> (i64, u64) {
    let window = 3 * state.config.checkin_interval_secs.max(1);
    (now_ms() - window as i64 * 1000, window)
}

fn summary(d: &DeviceRow, online_since: i64) -> DeviceSummary {
    let report: Option<DeviceReport> = d.report.as_deref().and_then(|r| serde_json::from_str(r).ok());
    let running = report
        .iter()
        .flat_map(|r| &r.models)
        .filter_map(|m| m.active.as_ref().map(|a| Running { model: m.model.clone(), release: a.release }))
        .collect();
    DeviceSummary {
        id: d.id.clone(),
        labels: d.labels.clone(),
        device_class: d.device_class.clone(),
        enrolled_at: rfc3339(d.enrolled_at),
        last_seen: d.last_seen.map(rfc3339),
        revoked: d.revoked,
        online: !d.revoked && d.last_seen.is_some_and(|t| t >= online_since),
        running,
        last_error: report.and_then(|r| r.last_error),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub selector: Option<String>,
    /// Devices whose id starts with this.
    pub q: Option<String>,
    pub class: Option<String>,
    pub after: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<DevicePage>> {
    let selector: Selector =
        q.selector.as_deref().unwrap_or("").parse().map_err(|e: edgefleet_protocol::api::SelectorError| {
            ApiError::bad_request("invalid_selector", e.to_string())
        })?;
    fn nonempty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    let filter = DeviceFilter { selector, id_prefix: nonempty(&q.q), device_class: nonempty(&q.class) };
    if filter.id_prefix.is_some_and(|p| p.len() > 128) || filter.device_class.is_some_and(|c| c.len() > 64) {
        return Err(ApiError::bad_request("invalid_filter", "q is at most 128 characters, class at most 64"));
    }
    let after = q.after.as_deref().map(device_id).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.store.list_devices(&filter, after.as_ref(), limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id.clone())).flatten();
    let (since, _) = online_since(&state);
    Ok(Json(DevicePage { devices: rows.iter().map(|d| summary(d, since)).collect(), next }))
}

/// `GET /api/v1/fleet`: devices per class, online, failing and per running release.
pub async fn fleet(State(state): State<AppState>, _: Authorized<Viewer>) -> ApiResult<Json<FleetOverview>> {
    let (since, window) = online_since(&state);
    let mut f = state.store.fleet_overview(since).await?;
    for c in &f.by_class {
        f.devices += c.devices;
        f.online += c.online;
        f.never_seen += c.never_seen;
        f.failing += c.failing;
    }
    f.offline = f.devices.saturating_sub(f.online + f.never_seen);
    f.online_window_secs = window;
    Ok(Json(f))
}

pub async fn show(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
    let id = device_id(&id)?;
    let d = state.store.device(&id).await?.ok_or_else(|| ApiError::not_found(format!("device {id}")))?;
    let events = state.store.events(&id, 100).await?.iter().filter_map(|b| serde_json::from_str(b).ok()).collect();
    Ok(Json(DeviceDetail {
        summary: summary(&d, online_since(&state).0),
        hardware: serde_json::from_str(&d.hardware).unwrap_or_default(),
        report: d.report.as_deref().and_then(|r| serde_json::from_str(r).ok()),
        desired_sequence: (d.desired_seq > 0).then_some(d.desired_seq as u64),
        events,
    }))
}

/// `GET /api/v1/devices/{id}/telemetry[?since=MS]`: the device's latency, errors, energy and power per window,
/// model and release; oldest first, at most 10,000 rows.
pub async fn telemetry(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Path(id): Path<String>,
    Query(q): Query<super::registry::TelemetryQuery>,
) -> ApiResult<Json<DeviceTelemetry>> {
    let id = device_id(&id)?;
    let since = q.since.unwrap_or_else(|| now_ms() - 86_400_000);
    let window = state.config.telemetry_window_secs;
    let rows = state.store.device_history(&id, since, 10_000).await?;
    let windows = rows
        .into_iter()
        .map(|(start, model, c)| DeviceWindow {
            window_start: rfc3339(start),
            model,
            release: c.release,
            stats: super::registry::window_stats(&c, window),
        })
        .collect();
    Ok(Json(DeviceTelemetry { device_id: id, window_secs: window, windows }))
}

pub async fn set_labels(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetLabels>,
) -> ApiResult<Json<SetLabels>> {
    let id = device_id(&id)?;
    check_labels(&req.labels)?;
    if !state.store.set_labels(&id, &req.labels).await? {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    state.audit(&who, &source, "device.labels", id.as_str(), serde_json::json!({"labels": req.labels})).await?;
    // Labels choose what this one device runs: it alone is planned again (and woken if it long-polls).
    state.changed(Scope::Device(id)).await?;
    Ok(Json(req))
}

pub async fn revoke(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    if state.store.device(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    state.store.revoke_device(&id, now_ms()).await?;
    // Every replica reads the device's credentials again (revoked), here at once, the others within a second.
    state.changed(Scope::Device(id.clone())).await?;
    state.audit(&who, &source, "device.revoke", id.as_str(), serde_json::json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}
