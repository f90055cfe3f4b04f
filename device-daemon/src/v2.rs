//! Local inference over the Open Inference Protocol (KServe v2) REST API, JSON tensors:
//! `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`, `/v2/models/{name}/ready`,
//! `/v2/models/{name}/infer`. Requests are checked against the model's signature from its manifest (names,
//! datatypes, shapes, element counts, value ranges) and refused with 400 before they reach ONNX Runtime.
//! Errors use the protocol's shape, `{"error": "message"}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model_registry::golden::HostTensor;
use model_registry::manifest::{ElementType, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serving::{InferError, Lease, ModelTable};

#[derive(Debug, Clone)]
pub struct V2State {
    pub models: Arc<ModelTable>,
}

/// A protocol error: status and message.
#[derive(Debug)]
pub struct V2Error(pub StatusCode, pub String);

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> V2Error {
    V2Error(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Value>,
    pub data: Value,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    pub data: Vec<Value>,
}

pub fn datatype(t: ElementType) -> &'static str {
    match t {
        ElementType::Float32 => "FP32",
        ElementType::Float16 => "FP16",
        ElementType::Float64 => "FP64",
        ElementType::Int8 => "INT8",
        ElementType::Uint8 => "UINT8",
        ElementType::Int16 => "INT16",
        ElementType::Int32 => "INT32",
        ElementType::Int64 => "INT64",
        ElementType::Bool => "BOOL",
    }
}

fn flatten(v: &Value, out: &mut Vec<Value>, depth: usize) -> Result<(), V2Error> {
    match v {
        Value::Array(items) if depth < 16 => items.iter().try_for_each(|i| flatten(i, out, depth + 1)),
        Value::Array(_) => Err(bad("tensor data is nested too deeply")),
        other => {
            out.push(other.clone());
            Ok(())
        }
    }
}

/// Encodes JSON numbers as little-endian bytes of `t`, refusing values that do not fit.
fn encode(name: &str, t: ElementType, values: &[Value]) -> Result<Vec<u8>, V2Error> {
    let mut out = Vec::with_capacity(values.len() * t.size());
    for v in values {
        let int = |lo: i64, hi: i64| {
            v.as_i64()
                .filter(|x| (lo..=hi).contains(x))
                .ok_or_else(|| bad(format!("input {name}: {v} is not an integer in {lo}..={hi} ({})", datatype(t))))
        };
        match t {
            ElementType::Float32 => {
                let f = v.as_f64().ok_or_else(|| bad(format!("input {name}: {v} is not a number")))?;
                out.extend_from_slice(&(f as f32).to_le_bytes());
            }
            ElementType::Float64 => {
                let f = v.as_f64().ok_or_else(|| bad(format!("input {name}: {v} is not a number")))?;
                out.extend_from_slice(&f.to_le_bytes());
            }
            ElementType::Int8 => out.extend_from_slice(&(int(i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes()),
            ElementType::Uint8 => out.push(int(0, 255)? as u8),
            ElementType::Int16 => out.extend_from_slice(&(int(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes()),
            ElementType::Int32 => out.extend_from_slice(&(int(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes()),
            ElementType::Int64 => out.extend_from_slice(&int(i64::MIN, i64::MAX)?.to_le_bytes()),
            ElementType::Bool => {
                out.push(u8::from(v.as_bool().ok_or_else(|| bad(format!("input {name}: {v} is not a boolean")))?))
            }
            ElementType::Float16 => return Err(bad(format!("input {name}: FP16 over JSON is not supported"))),
        }
    }
    Ok(out)
}

/// Checks one request tensor against its spec and turns it into a host tensor.
fn input(spec: &TensorSpec, t: &InputTensor) -> Result<HostTensor, V2Error> {
    let want = datatype(spec.dtype);
    if t.datatype != want {
        return Err(bad(format!("input {}: datatype {} where the model takes {want}", t.name, t.datatype)));
    }
    if t.shape.len() != spec.shape.len()
        || t.shape.iter().zip(&spec.shape).any(|(got, want)| *got < 0 || (*want >= 0 && got != want))
    {
        return Err(bad(format!(
            "input {}: shape {:?} does not fit the model's {:?} (-1: any size)",
            t.name, t.shape, spec.shape
        )));
    }
    let shape: Vec<usize> = t.shape.iter().map(|d| *d as usize).collect();
    let count = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d)).ok_or_else(|| bad("shape too large"))?;
    let mut values = Vec::new();
    flatten(&t.data, &mut values, 0)?;
    if values.len() != count {
        return Err(bad(format!(
            "input {}: {} values for shape {:?} ({count} expected)",
            t.name,
            values.len(),
            t.shape
        )));
    }
    let data = encode(&t.name, spec.dtype, &values)?;
    HostTensor::new(&t.name, spec.dtype, shape, data).map_err(|e| bad(e.to_string()))
}

fn output_json(name: &str, t: &HostTensor) -> OutputTensor {
    let data = match t.dtype {
        ElementType::Bool => t.data.iter().map(|b| Value::Bool(*b != 0)).collect(),
        ElementType::Float32 | ElementType::Float64 | ElementType::Float16 => {
            t.to_f64().into_iter().map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)).collect()
        }
        _ => t.to_f64().into_iter().map(|f| Value::from(f as i64)).collect(),
    };
    OutputTensor { name: name.to_owned(), shape: t.shape.clone(), datatype: datatype(t.dtype), data }
}

/// The release serving `name` for this request (waiting while a drain swaps it).
async fn model_of(state: &V2State, name: &str) -> Result<Lease, V2Error> {
    state
        .models
        .lease(name)
        .await
        .ok_or_else(|| V2Error(StatusCode::NOT_FOUND, format!("model {name:?} is not served here")))
}

async fn live() -> Json<Value> {
    Json(serde_json::json!({"live": true}))
}

async fn ready(State(state): State<V2State>) -> Response {
    let ready = state.models.has_any();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({"ready": ready}))).into_response()
}

fn tensor_meta(specs: &[TensorSpec]) -> Vec<Value> {
    specs.iter().map(|s| serde_json::json!({"name": s.name, "datatype": datatype(s.dtype), "shape": s.shape})).collect()
}

async fn metadata(State(state): State<V2State>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    let lease = model_of(&state, &name).await?;
    let m = &lease.served;
    Ok(Json(serde_json::json!({
        "name": m.model,
        "versions": [m.release.to_string()],
        "platform": "onnxruntime_onnx",
        "inputs": tensor_meta(&m.inputs),
        "outputs": tensor_meta(&m.outputs),
        "edgefleet": m.info(),
    })))
}

async fn model_ready(State(state): State<V2State>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    let lease = model_of(&state, &name).await?;
    Ok(Json(serde_json::json!({"name": lease.served.model, "ready": true})))
}

async fn infer(
    State(state): State<V2State>,
    Path(name): Path<String>,
    body: Result<Json<InferRequest>, JsonRejection>,
) -> Result<Json<Value>, V2Error> {
    let Json(req) = body.map_err(|e| V2Error(e.status(), e.body_text()))?;
    // Take the handle once: this request finishes on this release whatever is swapped in meanwhile.
    let lease = model_of(&state, &name).await?;
    let m = &lease.served;
    let mut tensors = BTreeMap::new();
    for t in &req.inputs {
        let spec = m
            .inputs
            .iter()
            .find(|s| s.name == t.name)
            .ok_or_else(|| bad(format!("model {name} has no input {:?}", t.name)))?;
        if tensors.insert(t.name.clone(), input(spec, t)?).is_some() {
            return Err(bad(format!("input {} is given twice", t.name)));
        }
    }
    if let Some(missing) = m.inputs.iter().find(|s| !tensors.contains_key(&s.name)) {
        return Err(bad(format!("input {} is missing", missing.name)));
    }
    let wanted: Option<Vec<String>> = req.outputs.as_ref().map(|o| o.iter().map(|r| r.name.clone()).collect());
    if let Some(w) = &wanted
        && let Some(unknown) = w.iter().find(|n| !m.outputs.iter().any(|s| &s.name == *n))
    {
        return Err(bad(format!("model {name} has no output {unknown:?}")));
    }
    let outputs = m.infer(tensors).await.map_err(|e| match e {
        InferError::NotLoaded(_) => V2Error(StatusCode::NOT_FOUND, e.to_string()),
        other => V2Error(StatusCode::INTERNAL_SERVER_ERROR, format!("inference failed: {other}")),
    })?;
    let outputs: Vec<OutputTensor> = outputs
        .iter()
        .filter(|(n, _)| wanted.as_ref().is_none_or(|w| w.contains(n)))
        .map(|(n, t)| output_json(n, t))
        .collect();
    let mut resp =
        serde_json::json!({"model_name": m.model, "model_version": m.release.to_string(), "outputs": outputs});
    if let Some(id) = req.id {
        resp["id"] = Value::String(id);
    }
    Ok(Json(resp))
}

async fn fallback() -> V2Error {
    V2Error(StatusCode::NOT_FOUND, "no such route".into())
}

/// The v2 router; bodies over `max_body` bytes are refused (413) before they are read.
pub fn router(state: V2State, max_body: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
