//! Build script: the git revision the shim reports (`-v`, `-info`, its first log line), and Rust
//! types for the vendored protos/ (see protos/MANIFEST), generated with protobuf-codegen's
//! pure-Rust parser so building needs no protoc.

use std::path::Path;
use std::process::Command;

const PROTOS: &[&str] = &[
    "protos/containerd/pkg/runtimeoptions/v1/api.proto",
    "protos/containerd/runtime/linux/runctypes/runc.proto",
    "protos/containerd/runtime/v2/runc/options/oci.proto",
];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_revision() {
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RUSTSHIM_GIT_REV={rev}");
    // Rebuild when HEAD moves: on a branch switch (HEAD) or a commit (the branch's ref).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        println!("cargo:rerun-if-changed={r}");
    }
}

fn protos() {
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("protos");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/protos");
    protobuf_codegen::Codegen::new()
        .pure()
        // No reflection tables: the shim only parses these messages, and the binary stays small.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true).gen_mod_rs(false))
        .include("protos/containerd")
        .inputs(PROTOS)
        .out_dir(&out)
        .run()
        .expect("protobuf-codegen on protos/");
    // src/protos.rs include!s each file inside a `mod`, where inner attributes and inner doc
    // comments are not allowed.
    for entry in std::fs::read_dir(&out).expect("read OUT_DIR/protos") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).expect("write generated file");
    }
    println!("cargo:rerun-if-changed=protos");
}

fn main() {
    git_revision();
    protos();
    println!("cargo:rerun-if-changed=build.rs");
}
