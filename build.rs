//! Build script: stamps the binary with the git commit it was built from (`ballast --version`).
//!
//! With the `cuda` feature it also builds the GPU backend's kernels (`kernels/`):
//! - bindgen turns `kernels/params.h` (one params struct per kernel) and the emulator's entry
//!   point into Rust (`$OUT_DIR/params.rs`), so no FFI is written by hand;
//! - the host compiler builds the same `.cu` sources against the CUDA emulation
//!   (`kernels/emu/`), which the tests run on any machine;
//! - nvcc compiles each `.cu` for sm_80 and sm_90 (plus compute_90 PTX for newer GPUs) into a
//!   fatbin embedded in the binary. `-Xptxas -v` reports every kernel's registers and spills:
//!   the build fails on any spill. The report is kept in `$OUT_DIR/ptxas-report.txt`.
//!
//! The CUDA tools are found through `CUDA_HOME`, else the repository's `.cuda-venv`
//! (`scripts/cuda-toolchain`), else `/usr/local/cuda`, else `nvcc` on `PATH`; libclang through
//! `LIBCLANG_PATH`, else the same venv.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BALLAST_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Kernel sources, one module each.
    const SOURCES: &[&str] = &["argmax", "attention", "eltwise", "embedding", "gemm", "matmul", "rms_norm", "rope_kv"];
    const ARCHS: &[&str] = &["arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"];

    pub fn build() {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
        let kernels = root.join("kernels");
        println!("cargo:rerun-if-changed=kernels");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
        bindings(&root, &kernels, &out);
        emulation(&kernels);
        device_code(&root, &kernels, &out);
    }

    /// `<root>/.cuda-venv/lib/python3.*/site-packages/<sub>`, if present.
    fn venv_path(root: &Path, sub: &str) -> Option<PathBuf> {
        let lib = root.join(".cuda-venv/lib");
        let mut dirs: Vec<_> = std::fs::read_dir(lib).ok()?.flatten().map(|e| e.path()).collect();
        dirs.sort();
        dirs.into_iter().map(|d| d.join("site-packages").join(sub)).find(|p| p.exists())
    }

    fn bindings(root: &Path, kernels: &Path, out: &Path) {
        if std::env::var_os("LIBCLANG_PATH").is_none()
            && let Some(dir) = venv_path(root, "clang/native")
        {
            // SAFETY: the build script is single-threaded here.
            unsafe { std::env::set_var("LIBCLANG_PATH", dir) };
        }
        let header = format!("#include \"{}\"\n#include \"{}\"\n", kernels.join("params.h").display(), kernels.join("emu/emu.h").display());
        let generated = bindgen::Builder::default()
            .header_contents("ballast_kernels.h", &header)
            .allowlist_file(".*/kernels/.*")
            .derive_default(true)
            .derive_debug(true)
            .prepend_enum_name(false)
            .layout_tests(true)
            .generate()
            .unwrap_or_else(|e| {
                panic!("bindgen could not read kernels/params.h ({e}). It needs libclang: run scripts/cuda-toolchain, or set LIBCLANG_PATH")
            });
        generated.write_to_file(out.join("params.rs")).expect("write params.rs");
    }

    fn emulation(kernels: &Path) {
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .flag_if_supported("-Wno-unknown-pragmas")
            .flag_if_supported("-Wno-unused-parameter")
            .file(kernels.join("emu/all.cpp"))
            .compile("ballast_kernels_emu");
    }

    fn cuda_home(root: &Path) -> Option<PathBuf> {
        if let Some(home) = std::env::var_os("CUDA_HOME") {
            return Some(PathBuf::from(home));
        }
        if let Some(home) = venv_path(root, "nvidia/cu13") {
            return Some(home);
        }
        let usr = PathBuf::from("/usr/local/cuda");
        if usr.join("bin/nvcc").exists() {
            return Some(usr);
        }
        let which = Command::new("sh").args(["-c", "command -v nvcc"]).output().ok()?;
        let nvcc = PathBuf::from(String::from_utf8(which.stdout).ok()?.trim());
        Some(nvcc.parent()?.parent()?.to_path_buf())
    }

    fn device_code(root: &Path, kernels: &Path, out: &Path) {
        let home = cuda_home(root)
            .unwrap_or_else(|| panic!("the cuda feature needs nvcc (CUDA 13.0): run scripts/cuda-toolchain, or set CUDA_HOME"));
        let nvcc = home.join("bin/nvcc");
        // Compile the sources in parallel; each writes its own fatbin.
        let results: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
            let jobs: Vec<_> = SOURCES
                .iter()
                .map(|name| {
                    let nvcc = &nvcc;
                    let home = &home;
                    s.spawn(move || {
                        let mut cmd = Command::new(nvcc);
                        cmd.env("PATH", format!("{}:{}", home.join("bin").display(), std::env::var("PATH").unwrap_or_default()))
                            .args(["-fatbin", "-std=c++17", "-O3", "-Xptxas", "-v"])
                            .arg("-I")
                            .arg(kernels);
                        for a in ARCHS {
                            cmd.arg(format!("-gencode={a}"));
                        }
                        cmd.arg(kernels.join(format!("{name}.cu"))).arg("-o").arg(out.join(format!("{name}.fatbin")));
                        let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                        (name.to_string(), output)
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let mut report = String::new();
        let mut spills = Vec::new();
        let mut embed =
            String::from("/// Each kernel source's fatbin (sm_80, sm_90, compute_90 PTX).\npub const FATBINS: &[(&str, &[u8])] = &[\n");
        for (name, output) in &results {
            let log = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                panic!("nvcc failed on kernels/{name}.cu:\n{log}{}", String::from_utf8_lossy(&output.stdout));
            }
            let mut entry = String::new();
            for line in log.lines() {
                if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                    entry = rest.replace("' for '", " ").replace('\'', "");
                }
                if line.contains("spill stores") {
                    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                    if n.len() >= 3 && (n[1] > 0 || n[2] > 0) {
                        spills.push(format!("{entry}: {}", line.trim()));
                    }
                }
                writeln!(report, "{name}.cu: {}", line.trim_start_matches("ptxas info    : ")).unwrap();
            }
            writeln!(embed, "    ({name:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.fatbin\"))),").unwrap();
        }
        embed.push_str("];\n");
        std::fs::write(out.join("ptxas-report.txt"), &report).unwrap();
        std::fs::write(out.join("fatbins.rs"), embed).unwrap();
        if !spills.is_empty() {
            panic!("kernels spill registers (ptxas -v):\n{}", spills.join("\n"));
        }
    }
}
