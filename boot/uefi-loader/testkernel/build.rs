//! Links the test kernel at TESTKERNEL_BASE (default: where the real
//! kernel goes, 2 MiB on x86_64 and RAM + 2 MiB on the QEMU virt board).
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out = std::env::var("OUT_DIR").unwrap();
    let default = if arch == "aarch64" {
        "0x40200000"
    } else {
        "0x200000"
    };
    let base = std::env::var("TESTKERNEL_BASE").unwrap_or_else(|_| default.into());
    let script = std::fs::read_to_string(format!("{dir}/link.ld")).unwrap();
    std::fs::write(format!("{out}/link.ld"), script.replace("@BASE@", &base)).unwrap();
    println!("cargo:rustc-link-arg-bins=-T{out}/link.ld");
    println!("cargo:rerun-if-changed={dir}/link.ld");
    println!("cargo:rerun-if-env-changed=TESTKERNEL_BASE");
}
