//! Generates the gRPC code for `proto/` into OUT_DIR with a vendored protoc,
//! plus a file descriptor set for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".hourglass.v1.Event.payload")
        // Hand-written, so a response or a stream's batch can carry events
        // encoded while the scan delivered them (see src/response.rs).
        .extern_path(
            ".hourglass.v1.ReadEventsResponse",
            "crate::response::ReadEventsResponse",
        )
        .extern_path(".hourglass.v1.EventBatch", "crate::response::EventBatch")
        // prost's codec, with encoding timed for the response reserve.
        .codec_path("crate::codec::TimedCodec")
        .file_descriptor_set_path(out.join("hourglass_descriptor.bin"))
        .compile_protos(&["proto/hourglass/v1/hourglass.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
