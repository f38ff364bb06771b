//! Compiles the eBPF program with clang through libbpf-cargo. The object file lands in
//! OUT_DIR and is embedded by `src/program.rs`; no skeleton is generated, because each port
//! loads its own instance of the object and keeps it (a skeleton borrows its storage).

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/rxfilter.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("rxfilter.bpf.o");
    // Debian's clang, targeting bpf, does not look in the multiarch include directory
    // where <asm/types.h> lives (toolchain-notes.md).
    let multiarch = format!(
        "-I/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        .obj(&obj)
        .clang_args([multiarch.as_str(), "-Wall", "-Werror"])
        .build()
    {
        panic!(
            "building {SRC} failed: {e:#}\n\
             the eBPF filter needs clang, libelf-dev, zlib1g-dev and pkg-config \
             (scripts/lib.sh installs them)"
        );
    }
    println!("cargo:rerun-if-changed={SRC}");
}
