//! Local inference over the Open Inference Protocol (KServe v2) REST API, JSON tensors:
//! `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`, `/v2/models/{name}/ready`,
//! `/v2/models/{name}/infer`. Requests are checked against the model's signature from its manifest (names,
//! datatypes, shapes, element counts, value ranges) and refused with 400 before they reach ONNX Runtime.
//! Errors use the protocol's shape, `{"error": "message"}`.
//!
//! The binary tensor data extension is supported both ways, as tritonclient uses it by default: with an
//! `Inference-Header-Content-Length: N` header, the first N bytes of the body are the JSON request and the rest
//! is the raw little-endian data of each input that gives `parameters.binary_data_size`, in request order.
//! Outputs come back binary when the request asks (`parameters.binary_data_output`, or an output's
//! `parameters.binary_data`), the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgefleet_protocol::tensor::{ElementType, HostTensor, TensorSpec};
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
    /// Absent when the data comes in binary (`parameters.binary_data_size`).
    #[serde(default)]
    pub data: Option<Value>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Value>>,
}

/// The binary-extension header: the length of the JSON part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `parameters.<key>` of a request part, if it is there.
fn param<'a>(parameters: &'a Option<Value>, key: &str) -> Option<&'a Value> {
    parameters.as_ref().and_then(|p| p.get(key))
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

/// Checks one request tensor against its spec and turns it into a host tensor; binary data is taken from the
/// front of `binary`.
fn input(spec: &TensorSpec, t: &InputTensor, binary: &mut &[u8]) -> Result<HostTensor, V2Error> {
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
    if let Some(size) = param(&t.parameters, "binary_data_size") {
        let size = size.as_u64().ok_or_else(|| bad(format!("input {}: binary_data_size is not a size", t.name)))?;
        let want = count as u64 * spec.dtype.size() as u64;
        if size != want {
            return Err(bad(format!(
                "input {}: {size} binary bytes for shape {:?} ({want} expected)",
                t.name, t.shape
            )));
        }
        if t.data.is_some() {
            return Err(bad(format!("input {}: both binary and JSON data", t.name)));
        }
        if (binary.len() as u64) < size {
            return Err(bad(format!("input {}: the body ends {} bytes short", t.name, size - binary.len() as u64)));
        }
        let (data, rest) = binary.split_at(size as usize);
        *binary = rest;
        return HostTensor::new(&t.name, spec.dtype, shape, data.to_vec()).map_err(|e| bad(e.to_string()));
    }
    let data = t.data.as_ref().ok_or_else(|| bad(format!("input {}: no data", t.name)))?;
    let mut values = Vec::new();
    flatten(data, &mut values, 0)?;
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

fn output_json(name: &str, t: &HostTensor, binary: Option<&mut Vec<u8>>) -> OutputTensor {
    if let Some(out) = binary {
        out.extend_from_slice(&t.data);
        return OutputTensor {
            name: name.to_owned(),
            shape: t.shape.clone(),
            datatype: datatype(t.dtype),
            parameters: Some(serde_json::json!({"binary_data_size": t.data.len()})),
            data: None,
        };
    }
    let data = match t.dtype {
        ElementType::Bool => t.data.iter().map(|b| Value::Bool(*b != 0)).collect(),
        ElementType::Float32 | ElementType::Float64 | ElementType::Float16 => {
            t.to_f64().into_iter().map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)).collect()
        }
        _ => t.to_f64().into_iter().map(|f| Value::from(f as i64)).collect(),
    };
    OutputTensor {
        name: name.to_owned(),
        shape: t.shape.clone(),
        datatype: datatype(t.dtype),
        parameters: None,
        data: Some(data),
    }
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
        "platform": if m.llm().is_some() { "llama_cpp_gguf" } else { "onnxruntime_onnx" },
        "inputs": tensor_meta(&m.inputs),
        "outputs": tensor_meta(&m.outputs),
        "edgefleet": m.info(),
    })))
}

async fn model_ready(State(state): State<V2State>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    let lease = model_of(&state, &name).await?;
    Ok(Json(serde_json::json!({"name": lease.served.model, "ready": true})))
}

/// Splits a body into its JSON request and the binary data after it (binary extension), and parses the JSON.
fn parse_request(headers: &HeaderMap, body: &Bytes) -> Result<(InferRequest, Bytes), V2Error> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} is not a length")))?;
            if n > body.len() {
                return Err(bad(format!("{HEADER_LENGTH} is {n}, the body only {} bytes", body.len())));
            }
            n
        }
    };
    let req = serde_json::from_slice(&body[..json_len]).map_err(|e| bad(format!("malformed request: {e}")))?;
    Ok((req, body.slice(json_len..)))
}

async fn infer(
    State(state): State<V2State>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, V2Error> {
    let (req, binary) = parse_request(&headers, &body)?;
    // Take the handle once: this request finishes on this release whatever is swapped in meanwhile.
    let lease = model_of(&state, &name).await?;
    let m = &lease.served;
    let mut tensors = BTreeMap::new();
    let mut rest: &[u8] = &binary;
    for t in &req.inputs {
        let spec = m
            .inputs
            .iter()
            .find(|s| s.name == t.name)
            .ok_or_else(|| bad(format!("model {name} has no input {:?}", t.name)))?;
        if tensors.insert(t.name.clone(), input(spec, t, &mut rest)?).is_some() {
            return Err(bad(format!("input {} is given twice", t.name)));
        }
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes of binary data no input claims", rest.len())));
    }
    if let Some(missing) = m.inputs.iter().find(|s| !tensors.contains_key(&s.name)) {
        return Err(bad(format!("input {} is missing", missing.name)));
    }
    if let Some(w) = &req.outputs
        && let Some(unknown) = w.iter().find(|r| !m.outputs.iter().any(|s| s.name == r.name))
    {
        return Err(bad(format!("model {name} has no output {:?}", unknown.name)));
    }
    let outputs = m.infer(tensors).await.map_err(|e| match e {
        InferError::NotLoaded(_) => V2Error(StatusCode::NOT_FOUND, e.to_string()),
        InferError::NotTensors => bad(e.to_string()),
        other => V2Error(StatusCode::INTERNAL_SERVER_ERROR, format!("inference failed: {other}")),
    })?;
    // Binary for every output when the request says so, else as each requested output says.
    let all_binary = param(&req.parameters, "binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let (mut binary_out, mut any_binary) = (Vec::new(), false);
    let mut json_outputs = Vec::new();
    for (n, t) in &outputs {
        let wanted = match &req.outputs {
            None => Some(all_binary),
            Some(w) => w
                .iter()
                .find(|r| &r.name == n)
                .map(|r| param(&r.parameters, "binary_data").and_then(Value::as_bool).unwrap_or(all_binary)),
        };
        match wanted {
            Some(true) => {
                any_binary = true;
                json_outputs.push(output_json(n, t, Some(&mut binary_out)));
            }
            Some(false) => json_outputs.push(output_json(n, t, None)),
            None => {}
        }
    }
    let mut resp =
        serde_json::json!({"model_name": m.model, "model_version": m.release.to_string(), "outputs": json_outputs});
    if let Some(id) = req.id {
        resp["id"] = Value::String(id);
    }
    if !any_binary {
        return Ok(Json(resp).into_response());
    }
    let mut body = serde_json::to_vec(&resp).map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let json_len = body.len();
    body.extend_from_slice(&binary_out);
    Ok(([("content-type", "application/octet-stream".to_owned()), (HEADER_LENGTH, json_len.to_string())], body)
        .into_response())
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
