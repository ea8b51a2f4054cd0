//! Compiles `proto-schemas/` into Rust with protox (no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas");
    let files = [
        "hookrelay/v1/ingest_to_router.proto",
        "hookrelay/v1/router_to_deliverer.proto",
        "hookrelay/v1/query_to_deliverer.proto",
        "hookrelay/v1/system_to_ingest.proto",
        "hookrelay/v1/deliverer_to_query.proto",
        "hookrelay/v1/ingest_to_query.proto",
    ];
    let descriptors = protox::compile(files, [&root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
