//! Rollouts: create one (operator), list and show them with every gate's numbers (viewer), and pause, resume,
//! abort or promote (operator). Each change is audited; the engine moves them on its own between calls.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use edgefleet_protocol::rollout::{Action, CreateRollout, Gate, Rollout, RolloutView, State as RolloutState};
use edgefleet_protocol::{ModelName, ReleaseVersion};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiResult, Authorized, Operator, Source, Viewer, new_token};
use crate::rollout::engine;
use crate::state::{AppState, now_ms, rfc3339};
use crate::store::{Audit, RolloutRow};

/// A rollout as the API shows it, with each device class's variant choice when it chooses by measurement.
async fn view(state: &AppState, row: RolloutRow) -> ApiResult<RolloutView> {
    let variant_choices = if row.rollout.choose_variant.is_first_fit() {
        Vec::new()
    } else {
        state.store.rollout_choices(&row.rollout.id).await?
    };
    Ok(RolloutView {
        variant_choices,
        share_percent: crate::rollout::share(&row.rollout, &row.state),
        rollout: row.rollout,
        state: row.state,
        gate_results: row.gates,
        evaluated_at: row.evaluated_at.map(rfc3339),
        created_at: rfc3339(row.created_at),
        created_by: row.created_by,
        updated_at: rfc3339(row.updated_at),
    })
}

/// The release the newest assignment or rollout of `model` leaves devices on: an assignment's release; a
/// finished rollout's new release; the baseline of one rolled back, aborted or still moving. (A baseline
/// taken from the assignment alone sent a fleet two releases back when the rollout after a finished one was
/// rolled back.)
async fn current_release(state: &AppState, model: &ModelName) -> ApiResult<Option<ReleaseVersion>> {
    let assigned =
        state.store.assignments().await?.into_iter().filter(|a| a.model == *model).map(|a| (a.created_at, a.version));
    let rolled = state.store.rollouts().await?.into_iter().filter(|r| r.rollout.model == *model).map(|r| {
        let v = if r.state == RolloutState::Done { r.rollout.release } else { r.rollout.baseline };
        (r.created_at, v)
    });
    Ok(assigned.chain(rolled).max_by_key(|(at, _)| *at).map(|(_, v)| v))
}

/// What a release is, as far as a rollout's gates and variant choice go: a language model, one whose signed
/// routing policy may send requests to a cloud tier, and how many variants it has.
async fn release_kind(
    state: &AppState,
    model: &edgefleet_protocol::ModelName,
    version: edgefleet_protocol::ReleaseVersion,
) -> ApiResult<(bool, bool, usize)> {
    let Some(row) = state.store.get_release(model, version).await? else { return Ok((false, false, 0)) };
    let envelope: serde_json::Value = serde_json::from_str(&row.manifest).unwrap_or_default();
    let variants = envelope["signed"]["variants"].as_array().cloned().unwrap_or_default();
    let routing = &envelope["signed"]["routing"];
    let may_use_cloud = routing.is_object() && routing["mode"] != "local_only" && routing["private"] != true;
    Ok((variants.iter().any(|v| v["format"] == "gguf"), may_use_cloud, variants.len()))
}

pub async fn create(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    ApiJson(req): ApiJson<CreateRollout>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    req.validate().map_err(|m| ApiError::bad_request("invalid_rollout", m))?;
    super::trusted_release(&state, &req.model, req.release).await?;
    let (llm, may_use_cloud, variants) = release_kind(&state, &req.model, req.release).await?;
    if let Some(g) = req.gates.iter().find(|g| g.is_llm())
        && !llm
    {
        return Err(ApiError::bad_request(
            "invalid_rollout",
            format!("the {} gate judges language models; {} {} is not one", g.name(), req.model, req.release),
        ));
    }
    if let Some(g) = req.gates.iter().find(|g| matches!(g, Gate::CloudShareRatio { .. }))
        && !may_use_cloud
    {
        return Err(ApiError::bad_request(
            "invalid_rollout",
            format!(
                "the {} gate judges where requests are answered; {} {} has no signed routing policy that may use \
                 a cloud tier",
                g.name(),
                req.model,
                req.release
            ),
        ));
    }
    if !req.choose_variant.is_first_fit() {
        if llm {
            return Err(ApiError::bad_request(
                "invalid_rollout",
                "variant choice by measurement runs an ONNX release's golden vectors on the devices; a language \
                 model's variants are not measured yet",
            ));
        }
        if variants < 2 {
            return Err(ApiError::bad_request(
                "invalid_rollout",
                format!(
                    "{} {} has {variants} variant(s): nothing to choose between by measurement",
                    req.model, req.release
                ),
            ));
        }
    }
    let baseline = match req.baseline {
        Some(b) => b,
        None => current_release(&state, &req.model).await?.ok_or_else(|| {
            ApiError::bad_request(
                "no_baseline",
                format!("{} has no assignment to take a baseline from: name one", req.model),
            )
        })?,
    };
    if baseline == req.release {
        return Err(ApiError::bad_request("invalid_rollout", "the baseline and the new release are the same"));
    }
    if state.store.get_release(&req.model, baseline).await?.is_none() {
        return Err(ApiError::not_found(format!("baseline release {baseline} of {}", req.model)));
    }
    // Both sides must be at or above every floor devices may have seen, the new release's own included: a
    // rollback or an abort sends the wave's devices back to the baseline.
    super::above_floor(&state, &req.model, &[req.release, baseline]).await?;
    let suffix = new_token("r")?;
    let id = format!("{}-{}-{}", req.model, req.release, &suffix[2..10]);
    let now = now_ms();
    let row = RolloutRow {
        rollout: Rollout {
            id: id.clone(),
            model: req.model,
            selector: req.selector,
            baseline,
            release: req.release,
            waves: req.waves,
            gates: req.gates,
            min_samples: req.min_samples,
            on_failure: req.on_failure,
            choose_variant: req.choose_variant,
        },
        state: RolloutState::Running { wave: 0, since: now },
        gates: vec![],
        evaluated_at: None,
        created_at: now,
        created_by: who.actor(),
        updated_at: now,
    };
    let actor = who.actor();
    let detail = serde_json::to_value(&row.rollout).map_err(|e| ApiError::internal(&e))?;
    state
        .store
        .insert_rollout(&row, Audit { actor: &actor, action: "rollout.create", target: &id, source: &source.0, detail })
        .await?;
    state.changed(crate::changes::Scope::All).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row).await?)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub model: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<RolloutView>>> {
    let model: Option<ModelName> = q
        .model
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: edgefleet_protocol::IdError| ApiError::bad_request("invalid_name", e.to_string()))?;
    let mut rows = state.store.rollouts().await?;
    rows.retain(|r| model.as_ref().is_none_or(|m| &r.rollout.model == m));
    rows.reverse();
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        views.push(view(&state, row).await?);
    }
    Ok(Json(views))
}

fn rollout_id(id: &str) -> ApiResult<&str> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(id) } else { Err(ApiError::bad_request("invalid_id", format!("{id:?} is not a rollout id"))) }
}

pub async fn show(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    let row =
        state.store.rollout(rollout_id(&id)?).await?.ok_or_else(|| ApiError::not_found(format!("rollout {id}")))?;
    Ok(Json(view(&state, row).await?))
}

async fn act(
    state: AppState,
    who: super::Principal,
    source: Source,
    id: String,
    action: Action,
) -> ApiResult<Json<RolloutView>> {
    let id = rollout_id(&id)?;
    match engine::act(&state, id, action, &who.actor(), &source.0).await? {
        Ok(row) => Ok(Json(view(&state, row).await?)),
        Err(engine::Refused::NotFound) => Err(ApiError::not_found(format!("rollout {id}"))),
        Err(engine::Refused::Conflict(why)) => Err(ApiError::conflict("rollout_state", why)),
    }
}

macro_rules! action_handlers {
    ($($name:ident => $action:ident),*) => {$(
        pub async fn $name(
            State(state): State<AppState>,
            Authorized(who, _): Authorized<Operator>,
            source: Source,
            Path(id): Path<String>,
        ) -> ApiResult<Json<RolloutView>> {
            act(state, who, source, id, Action::$action).await
        }
    )*};
}

action_handlers!(pause => Pause, resume => Resume, abort => Abort, promote => Promote);
