//! Links every guest at 0x4008_0000 in guest RAM (which starts at 1 GiB on
//! arm64, as on QEMU virt) with `link.ld`, only for the bare-metal target;
//! except `image_pie`, a position-independent executable (ET_DYN) linked
//! from 0x1000 with `pie.ld`. A bin's name is its file name in `src/bin/`.
//!
//! The guests are compiled with the target's static relocation model (so is
//! the prebuilt `core`): code addresses data PC-relatively (ADRP), and the
//! absolute pointers in read-only data become R_AARCH64_RELATIVE dynamic
//! relocations, which `-z notext` allows there (the loader writes them
//! before the MMU is on, so no segment is read-only then).

/// The position-independent guest.
const PIE_BIN: &str = "image_pie";

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=pie.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/bin");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let mut bins: Vec<String> = std::fs::read_dir(format!("{dir}/src/bin"))
        .expect("src/bin")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    bins.sort();
    for bin in bins {
        if bin == PIE_BIN {
            for arg in [
                format!("-T{dir}/pie.ld"),
                "-pie".into(),
                "--no-dynamic-linker".into(),
                "-znotext".into(),
            ] {
                println!("cargo:rustc-link-arg-bin={bin}={arg}");
            }
        } else {
            println!("cargo:rustc-link-arg-bin={bin}=-T{dir}/link.ld");
        }
    }
}
