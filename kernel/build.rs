//! Picks the linker script for the target architecture.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    if os == "none" {
        let script = format!("{dir}/linker-{arch}.ld");
        println!("cargo:rerun-if-changed={script}");
        println!("cargo:rustc-link-arg-bins=-T{script}");
    }
}
