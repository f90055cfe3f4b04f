//! Compiles `proto/onnx.proto` with protox (a protobuf compiler in Rust, so no `protoc`) and prost.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new().compile_fds(files).expect("prost generates the ONNX types");
}
