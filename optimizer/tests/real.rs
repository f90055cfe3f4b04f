//! The schema against real models: magika (tf2onnx, with ONNX-ML) and silero-vad (PyTorch, with subgraphs)
//! decode and encode again byte for byte, so no field the optimizer's schema lacks is dropped; a truncated or
//! corrupt file is refused.

use edgefleet_e2e::cache;
use edgefleet_optimizer::{OptimizeError, decode, encode};

#[test]
fn real_models_round_trip_byte_for_byte() {
    for rel in ["models/magika/model.onnx", "models/silero_vad.onnx"] {
        let bytes = std::fs::read(cache(rel)).unwrap();
        let model = decode(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(encode(&model) == bytes, "{rel}: encoding what was decoded changed the bytes");
    }
}

#[test]
fn truncated_or_corrupt_models_are_refused() {
    let bytes = std::fs::read(cache("models/magika/model.onnx")).unwrap();
    for (what, broken) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("the IR version a made-up 119", {
            let mut b = bytes.clone();
            b[1] ^= 0x7f;
            b
        }),
        ("not protobuf", b"this is not a model at all".to_vec()),
    ] {
        match decode(&broken) {
            Err(
                OptimizeError::Decode(_)
                | OptimizeError::NoGraph
                | OptimizeError::NoOpset
                | OptimizeError::IrVersion(_),
            ) => {}
            Err(other) => panic!("{what}: refused for another reason: {other}"),
            Ok(_) => panic!("{what}: decoded as a model"),
        }
    }
}
