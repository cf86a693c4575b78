//! Generates the gRPC baseline's code from `proto/relay.proto` with the protoc binary that
//! `protoc-bin-vendored` ships (nothing to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; PROTOC is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/relay.proto");
    tonic_prost_build::configure().compile_protos(&["proto/relay.proto"], &["proto"])?;
    Ok(())
}
