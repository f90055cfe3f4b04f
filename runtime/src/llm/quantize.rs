//! Requantizing a GGUF to another llama.cpp type through llama.cpp's own `llama_model_quantize` (what its
//! `llama-quantize` tool calls), for the release optimizer.

use std::ffi::CString;
use std::path::Path;

use super::{LlmError, backend};

/// The llama.cpp file types the optimizer can write, by the names releases use for their precision.
const TYPES: [(&str, llama_cpp_sys_2::llama_ftype); 13] = [
    ("f16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16),
    ("bf16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_BF16),
    ("q8_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("q6_k", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("q5_k_m", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("q5_k_s", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("q5_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("q5_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("q4_k_m", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("q4_k_s", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("q4_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("q4_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("iq4_nl", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_IQ4_NL),
];

/// The type names [`quantize`] accepts.
pub fn quantize_types() -> impl Iterator<Item = &'static str> {
    TYPES.iter().map(|(n, _)| *n)
}

/// Writes `input` requantized to `to` (a name of [`quantize_types`]) at `output`, on `threads` threads (0: one
/// per core). Tensors already quantized are requantized (llama.cpp's `allow_requantize`): from a quantized source
/// the result can be no better than the source, which the optimizer's report measures.
pub fn quantize(input: &Path, output: &Path, to: &str, threads: u16) -> Result<(), LlmError> {
    let ftype = TYPES.iter().find(|(n, _)| *n == to).map(|(_, t)| *t).ok_or_else(|| {
        LlmError::Quantize(format!(
            "{to:?} is not a llama.cpp type the optimizer writes (known: {})",
            quantize_types().collect::<Vec<_>>().join(", ")
        ))
    })?;
    backend()?;
    let path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| LlmError::Quantize(format!("{}: a path with a NUL byte", p.display())))
    };
    let (inp, out) = (path(input)?, path(output)?);
    #[allow(unsafe_code)]
    // SAFETY: both strings are NUL-terminated and outlive the call; the parameters are llama.cpp's defaults with
    // plain fields changed, and llama.cpp reads them only during the call.
    let code = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.nthread = i32::from(threads);
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
    };
    if code != 0 {
        let _ = std::fs::remove_file(output);
        return Err(LlmError::Quantize(format!(
            "llama.cpp could not quantize {} to {to} (code {code}; its log says why)",
            input.display()
        )));
    }
    Ok(())
}
