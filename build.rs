//! Build script. Today it only records what the build depends on; with the `cuda` feature
//! (the CUDA backend) it will compile `kernels/*.cu` with nvcc and generate the kernel
//! parameter bindings with bindgen.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=models/manifest.json");
}
