//! edgefleet's one contact with ONNX Runtime (through `ort` with `load-dynamic`): load the library named at run
//! time, open a model on the best execution provider this ONNX Runtime build offers (falling back, with the
//! reason kept, down to CPU), read its signature, and run it on host tensors. Used by the CLI (`release pack`,
//! `release golden`) and by the device daemon.
//!
//! Language models run through llama.cpp, in [`llm`].
//!
//! Invariant: no other crate of the workspace imports `ort` or `llama-cpp-2`.

pub mod llm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgefleet_protocol::tensor::{Cases, ElementType, HostTensor, TensorSpec};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not given: pass --ort-lib or set EDGEFLEET_ORT_LIB \
         (scripts/setup.sh fetches libonnxruntime.so.1.31.1 into .cache/lib)"
    )]
    NoLibrary,
    #[error("loading ONNX Runtime from {path}: {message}")]
    Library { path: PathBuf, message: String },
    #[error("loading model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("model {path}: {what} {name:?} has element type {found}, which edgefleet does not handle")]
    Dtype { path: PathBuf, what: &'static str, name: String, found: String },
    #[error("running {path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("running {path}: input {name:?} is missing from the samples")]
    MissingInput { path: PathBuf, name: String },
}

/// ONNX Runtime, loaded once per process from the library file at `path`.
#[derive(Debug)]
pub struct Runtime {
    env: ort::environment::Environment,
}

static SHARED: std::sync::OnceLock<Result<Runtime, String>> = std::sync::OnceLock::new();

impl Runtime {
    /// The process's one ONNX Runtime (ONNX Runtime allows one environment per process): loaded from `path` by
    /// the first caller; later callers get the same one whatever path they pass.
    pub fn shared(path: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        SHARED.get_or_init(|| Runtime::load(path).map_err(|e| e.to_string())).as_ref().map_err(|message| {
            RuntimeError::Library { path: path.map(Path::to_owned).unwrap_or_default(), message: message.clone() }
        })
    }

    pub fn load(path: Option<&Path>) -> Result<Self, RuntimeError> {
        let path = path.ok_or(RuntimeError::NoLibrary)?;
        keep_large_allocations_mapped();
        let lib = |e: &dyn std::fmt::Display| RuntimeError::Library { path: path.to_owned(), message: e.to_string() };
        if !path.is_file() {
            return Err(lib(&"no such file"));
        }
        let env = ort::init_from(path).map_err(|e| lib(&e))?.with_name("edgefleet-cli").build().map_err(|e| lib(&e))?;
        Ok(Self { env })
    }

    /// Opens a model on CPU with ONNX Runtime's default threading.
    pub fn open(&self, path: &Path) -> Result<Model, RuntimeError> {
        self.open_with(path, &Options::default())
    }

    /// Opens a model trying `options.providers` in order; the first that this ONNX Runtime build has and that
    /// registers is used, each one skipped is recorded in [`Model::fallbacks`] with why.
    pub fn open_with(&self, path: &Path, options: &Options) -> Result<Model, RuntimeError> {
        let err = |e: ort::Error| RuntimeError::Model { path: path.to_owned(), message: e.to_string() };
        let err_b = |e: ort::Error<ort::session::builder::SessionBuilder>| RuntimeError::Model {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(&self.env).map_err(err)?;
        if let Some(n) = options.intra_threads {
            builder = builder.with_intra_threads(n).map_err(err_b)?;
        }
        let mut fallbacks = Vec::new();
        let mut provider = CPU.to_owned();
        for name in &options.providers {
            if name == CPU {
                break;
            }
            match try_register(&mut builder, name) {
                Ok(()) => {
                    provider = name.clone();
                    break;
                }
                Err(why) => {
                    tracing::info!(provider = %name, reason = %why, "execution provider not used; trying the next");
                    fallbacks.push(format!("{name}: {why}"));
                }
            }
        }
        let session = builder.commit_from_file(path).map_err(err)?;
        let specs = |what: &'static str, outlets: &[ort::value::Outlet]| {
            outlets.iter().map(|o| spec(path, what, o.name(), o.dtype())).collect::<Result<Vec<_>, _>>()
        };
        let inputs = specs("input", session.inputs())?;
        let outputs = specs("output", session.outputs())?;
        Ok(Model { path: path.to_owned(), session, inputs, outputs, provider, fallbacks })
    }
}

pub const CPU: &str = "CPUExecutionProvider";

/// How to open a model.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Execution providers to try, best first (ONNX Runtime names, e.g. `QNNExecutionProvider`). CPU is
    /// always the last resort, listed or not.
    pub providers: Vec<String>,
    /// Threads within one operator; `None` for ONNX Runtime's default.
    pub intra_threads: Option<usize>,
}

/// Tells glibc's malloc to serve every allocation of 128 KiB or more with its own mapping, returned to the
/// system when freed. glibc otherwise raises that threshold each time a large mapped block is freed, after which
/// model-sized buffers (weights, activations) come from the heap and fragment it: a process that loads and drops
/// sessions all day, as the daemon does on every swap, kept growing (BENCHMARKS.md). Other C libraries: nothing.
#[allow(unsafe_code)]
pub(crate) fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it is safe to call at any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Runs `f` (loading sessions, say) on a thread of its own at a lower CPU priority (nice 10), so that on a
/// small device it yields to the requests being served meanwhile. Best effort: where the priority cannot be
/// set, `f` runs all the same.
#[allow(unsafe_code)]
pub fn with_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                #[cfg(target_os = "linux")]
                // SAFETY: setpriority on this thread's own id (a plain syscall; on Linux the "process" priority
                // of a thread id is that thread's). The thread ends with `f`, so nothing else runs at this nice.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, 10);
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The execution providers compiled into the loaded ONNX Runtime library.
#[allow(unsafe_code)]
pub fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: GetAvailableProviders fills `list` with `n` NUL-terminated strings owned by ONNX Runtime, which
    // are copied here and then handed back with ReleaseAvailableProviders; a non-null status is an error and
    // leaves nothing to release.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Vec::new();
        }
        if list.is_null() {
            return Vec::new();
        }
        let names = (0..n.max(0) as usize)
            .map(|i| std::ffi::CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned())
            .collect();
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        names
    }
}

/// Registers one named provider, or says why not. This ONNX Runtime build's providers are asked first; ones it
/// lacks are skipped with that reason. Registering a present accelerator needs ort's provider feature for it,
/// which the PyPI CPU build edgefleet is tested with never offers; that case is reported, not guessed.
fn try_register(_builder: &mut ort::session::builder::SessionBuilder, name: &str) -> Result<(), String> {
    if available_providers().iter().any(|p| p == name) {
        Err("present in this ONNX Runtime build, but this edgefleet build does not register it yet".into())
    } else {
        Err("not compiled into this ONNX Runtime build".into())
    }
}

fn spec(path: &Path, what: &'static str, name: &str, ty: &ValueType) -> Result<TensorSpec, RuntimeError> {
    let bad = |found: String| RuntimeError::Dtype { path: path.to_owned(), what, name: name.to_owned(), found };
    let (Some(t), Some(shape)) = (ty.tensor_type(), ty.tensor_shape()) else {
        return Err(bad(format!("{ty:?}")));
    };
    Ok(TensorSpec {
        name: name.to_owned(),
        dtype: element_type(t).ok_or_else(|| bad(format!("{t:?}")))?,
        shape: shape.to_vec(),
    })
}

fn element_type(t: TensorElementType) -> Option<ElementType> {
    Some(match t {
        TensorElementType::Float32 => ElementType::Float32,
        TensorElementType::Float16 => ElementType::Float16,
        TensorElementType::Float64 => ElementType::Float64,
        TensorElementType::Int8 => ElementType::Int8,
        TensorElementType::Uint8 => ElementType::Uint8,
        TensorElementType::Int16 => ElementType::Int16,
        TensorElementType::Int32 => ElementType::Int32,
        TensorElementType::Int64 => ElementType::Int64,
        TensorElementType::Bool => ElementType::Bool,
        _ => return None,
    })
}

/// An open model with its signature.
#[derive(Debug)]
pub struct Model {
    pub path: PathBuf,
    session: Session,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The execution provider the session runs on.
    pub provider: String,
    /// Providers tried before it, each with the reason it was not used.
    pub fallbacks: Vec<String>,
}

fn le<const N: usize, T>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
}

fn to_value(t: &HostTensor) -> Result<Option<DynValue>, ort::Error> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Some(match t.dtype {
        ElementType::Float32 => Tensor::from_array((shape, le(&t.data, f32::from_le_bytes)))?.into_dyn(),
        ElementType::Float64 => Tensor::from_array((shape, le(&t.data, f64::from_le_bytes)))?.into_dyn(),
        ElementType::Int8 => Tensor::from_array((shape, le(&t.data, i8::from_le_bytes)))?.into_dyn(),
        ElementType::Uint8 => Tensor::from_array((shape, t.data.clone()))?.into_dyn(),
        ElementType::Int16 => Tensor::from_array((shape, le(&t.data, i16::from_le_bytes)))?.into_dyn(),
        ElementType::Int32 => Tensor::from_array((shape, le(&t.data, i32::from_le_bytes)))?.into_dyn(),
        ElementType::Int64 => Tensor::from_array((shape, le(&t.data, i64::from_le_bytes)))?.into_dyn(),
        ElementType::Bool => {
            Tensor::from_array((shape, t.data.iter().map(|b| *b != 0).collect::<Vec<_>>()))?.into_dyn()
        }
        ElementType::Float16 => return Ok(None),
    }))
}

fn to_host(v: &DynValue) -> Result<Option<HostTensor>, ort::Error> {
    fn grab<T: ort::value::PrimitiveTensorElementType + Copy, const N: usize>(
        v: &DynValue,
        dtype: ElementType,
        bytes: fn(T) -> [u8; N],
    ) -> Result<HostTensor, ort::Error> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok(HostTensor {
            dtype,
            shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
            data: data.iter().flat_map(|x| bytes(*x)).collect(),
        })
    }
    let Some(t) = v.dtype().tensor_type() else { return Ok(None) };
    Ok(Some(match element_type(t) {
        Some(ElementType::Float32) => grab(v, ElementType::Float32, f32::to_le_bytes)?,
        Some(ElementType::Float64) => grab(v, ElementType::Float64, f64::to_le_bytes)?,
        Some(ElementType::Int8) => grab(v, ElementType::Int8, i8::to_le_bytes)?,
        Some(ElementType::Uint8) => grab(v, ElementType::Uint8, u8::to_le_bytes)?,
        Some(ElementType::Int16) => grab(v, ElementType::Int16, i16::to_le_bytes)?,
        Some(ElementType::Int32) => grab(v, ElementType::Int32, i32::to_le_bytes)?,
        Some(ElementType::Int64) => grab(v, ElementType::Int64, i64::to_le_bytes)?,
        Some(ElementType::Bool) => grab(v, ElementType::Bool, |b: bool| [u8::from(b)])?,
        Some(ElementType::Float16) | None => return Ok(None),
    }))
}

impl Model {
    /// Runs the model on every case (`case -> input name -> tensor`): what golden vectors are made from and
    /// checked against.
    pub fn run_cases(&mut self, inputs: &Cases) -> Result<Cases, RuntimeError> {
        let mut out = Cases::new();
        for (case, tensors) in inputs {
            out.insert(case.clone(), self.run(tensors)?);
        }
        Ok(out)
    }

    /// Runs the model once on `inputs` (by input name) and answers every output by name.
    pub fn run(&mut self, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, RuntimeError> {
        let path = self.path.clone();
        let run_err = |message: String| RuntimeError::Run { path: path.clone(), message };
        let mut values = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let t = inputs
                .get(&spec.name)
                .ok_or_else(|| RuntimeError::MissingInput { path: path.clone(), name: spec.name.clone() })?;
            let v = to_value(t)
                .map_err(|e| run_err(format!("input {}: {e}", spec.name)))?
                .ok_or_else(|| run_err(format!("input {}: float16 inputs are not supported yet", spec.name)))?;
            values.push((spec.name.clone(), v));
        }
        let outputs = self.session.run(values).map_err(|e| run_err(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (name, value) in outputs.iter() {
            let t = to_host(&value)
                .map_err(|e| run_err(format!("output {name}: {e}")))?
                .ok_or_else(|| run_err(format!("output {name}: element type not supported")))?;
            out.insert(name.to_owned(), t);
        }
        Ok(out)
    }
}
