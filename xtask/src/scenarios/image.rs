//! Guest image formats: what QEMU `-kernel` takes runs unchanged as a
//! guest (issue 13 item 3). The images are the guest crates' `[[bin]]`s,
//! some converted by xtask with `llvm-objcopy` ([`ImageForm`]):
//!
//! - `image-arm64-raw`: `image_raw` flattened (`-O binary`), a raw binary
//!   the loader puts at RAM + 0x80000 and enters with x0 = DTB and no
//!   stack; the guest zeroes its BSS, takes its own stack and reads its
//!   command line from the DTB's `/chosen/bootargs`.
//! - `image-arm64-pie`: `image_pie`, an ELF64 `ET_DYN` linked from 0x1000;
//!   loaded with virtual address 0 at RAM + 0x80000, its
//!   R_AARCH64_RELATIVE relocations applied (the guest checks pointers
//!   stored in its read-only data), entered at RAM + 0x81000.
//! - `image-x86-mb1-elf32`: the x86 `multiboot` guest converted to ELF32
//!   (`-O elf32-i386`), the form GRUB and QEMU `-kernel` take.
//! - `image-x86-mb1-aout`: `multiboot_aout` flattened, a Multiboot1 kernel
//!   with the a.out kludge and no ELF at all.
//!
//! The arm64 ones run on `-cpu max` and as `<name>-a72` on Cortex-A72, the
//! x86 ones on `EPYC,+svm,+npt` and as `<name>-max`. The ELF64 `ET_EXEC`
//! guests of the other scenarios and the Linux `Image` of
//! `arm64-external-linux` cover the remaining forms.

#[allow(unused_imports)]
use super::*;

pub fn scenarios() -> Vec<Scenario> {
    let list = [
        super::arm64::both(
            super::arm64::arm(
                "image-arm64-raw",
                vec![vm("image_raw", "raw")
                    .append("raw-arg=1 two words")
                    .form(ImageForm::Flat)],
                &[
                    "Arm64Raw kernel, entry 0x40080000",
                    "[raw] image raw: _start at 0x40080000 (RAM + 0x80000), EL1",
                    "[raw] image raw: dtb at 0x40fff000: magic ok",
                    "[raw] image raw: entered without a stack: own stack, BSS zeroed",
                    "[raw] image raw: bootargs \"raw-arg=1 two words\"",
                    "[raw] image raw: ok",
                    "vm raw: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "image-arm64-raw-a72",
        ),
        super::arm64::both(
            super::arm64::arm(
                "image-arm64-pie",
                vec![vm("image_pie", "pie").append("pie-arg=2")],
                &[
                    "Elf64Pie kernel, entry 0x40081000",
                    "[pie] image pie: _start at 0x40081000 (RAM + 0x81000), EL1",
                    "[pie] image pie: dtb at 0x40fff000: magic ok",
                    "[pie] image pie: stack from the loader at",
                    "[pie] image pie: bootargs \"pie-arg=2\"",
                    "[pie] image pie: x4 command line \"pie-arg=2\"",
                    "[pie] image pie: ok",
                    "vm pie: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "image-arm64-pie-a72",
        ),
        super::svm::both(
            super::svm::x86(
                "image-x86-mb1-elf32",
                vec![vm("multiboot", "mb32")
                    .append("mb-arg=42 elf32")
                    .form(ImageForm::Elf32)],
                &[
                    "Multiboot1 kernel, entry 0x10000c",
                    "[mb32] multiboot guest in long mode: magic 0x2badb002",
                    "[mb32] mmap: base 0x000100000",
                    "[mb32] cmdline: \"mb-arg=42 elf32\"",
                    "[mb32] PASS",
                    "vm mb32: stopped: debug-exit, code 33",
                    "HV-EXIT: success",
                ],
            ),
            "image-x86-mb1-elf32-max",
        ),
        super::svm::both(
            super::svm::x86(
                "image-x86-mb1-aout",
                vec![vm("multiboot_aout", "aout")
                    .append("mb-arg=42 a.out")
                    .form(ImageForm::Flat)],
                &[
                    "Multiboot1 kernel, entry 0x100020",
                    "[aout] multiboot guest in long mode: magic 0x2badb002",
                    "[aout] mmap: base 0x000100000",
                    "[aout] cmdline: \"mb-arg=42 a.out\"",
                    "[aout] PASS",
                    "vm aout: stopped: debug-exit, code 33",
                    "HV-EXIT: success",
                ],
            ),
            "image-x86-mb1-aout-max",
        ),
    ];
    list.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every image scenario runs one VM of a `[[bin]]` that its guest crate
    /// declares, checks the guest's own lines (`[name] ...`), the format the
    /// kernel reports and a clean stop.
    #[test]
    fn image_scenarios_check_their_guests() {
        let all = scenarios();
        let names: Vec<_> = all.iter().map(|s| s.name).collect();
        for n in [
            "image-arm64-raw",
            "image-arm64-raw-a72",
            "image-arm64-pie",
            "image-arm64-pie-a72",
            "image-x86-mb1-elf32",
            "image-x86-mb1-aout",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for s in &all {
            assert_eq!(s.vms.len(), 1, "{}", s.name);
            let vm = s.vms[0];
            let (dir, _) = crate::guests::guest_crate(s.arch);
            let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{}\"", vm.bin)),
                "{}: no [[bin]] {}",
                s.name,
                vm.bin
            );
            let own = format!("[{}] ", vm.name);
            assert!(
                s.expect.iter().filter(|e| e.starts_with(&own)).count() >= 4,
                "{}",
                s.name
            );
            for e in s.expect.iter().filter(|e| e.starts_with('[')) {
                assert!(e.starts_with(&own), "{}: {e}", s.name);
            }
            assert!(s.expect[0].contains(" kernel, entry 0x"), "{}", s.name);
            let stopped = format!("vm {}: stopped: ", vm.name);
            assert!(
                s.expect.iter().any(|e| e.starts_with(&stopped)),
                "{}",
                s.name
            );
            assert_eq!(s.expect.last(), Some(&"HV-EXIT: success"), "{}", s.name);
            assert!(s.forbid.contains(&"FAIL"), "{}", s.name);
        }
    }
}
