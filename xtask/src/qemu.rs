//! QEMU command lines (facts behind each option: /work/shared/PLATFORM.md
//! x86.1-x86.4 and arm64.1-arm64.6).

use crate::{Accel, Arch, Paths};
use std::path::PathBuf;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Used with `snapshot=on`: nothing is written back, so every run starts
/// from the same variables (a VARS file reused across machine types boots
/// the EFI shell instead of our loader).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AARCH64_EFI: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";

/// What the machine boots from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Media {
    /// Loaded by QEMU itself with `-kernel` (x86 Multiboot1 ELF, arm64 Image)
    /// and given the command line with `-append`; `initrd` (the VM bundle)
    /// with `-initrd`: a Multiboot module on x86 (its command line is its
    /// path), the initrd named in the DTB's `/chosen` on arm64.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
    },
    /// A GRUB ISO; the command line is in its grub.cfg.
    Cdrom(PathBuf),
    /// An ESP directory served as a FAT disk to UEFI firmware; the command
    /// line is in its cmdline.txt.
    Esp(PathBuf),
}

impl Media {
    pub fn describe(&self) -> String {
        match self {
            Media::Kernel {
                kernel,
                initrd: None,
            } => format!("kernel: {}", Paths::show(kernel)),
            Media::Kernel {
                kernel,
                initrd: Some(i),
            } => format!(
                "kernel: {}\ninitrd: {}",
                Paths::show(kernel),
                Paths::show(i)
            ),
            Media::Cdrom(p) => format!("iso: {}", Paths::show(p)),
            Media::Esp(p) => format!("esp: {}", Paths::show(p)),
        }
    }
}

/// One emulated machine.
#[derive(Clone, Debug)]
pub struct Machine {
    pub arch: Arch,
    pub accel: Accel,
    pub smp: u32,
    pub mem_mib: u32,
    pub media: Media,
    /// The `-cpu` model under TCG (`None`: `max`); KVM always uses `host`.
    pub cpu: Option<String>,
    /// Passed with `-append` for [`Media::Kernel`]; baked into the media otherwise.
    pub cmdline: String,
}

impl Machine {
    /// The program and its arguments. Serial goes to stdio, nothing else
    /// does (`-display none`, no `-nographic`, so no firmware banners from
    /// the VGA console are mixed in under BIOS).
    pub fn command_line(&self) -> (String, Vec<String>) {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &[&str]| a.extend(s.iter().map(|s| s.to_string()));
        let program = match self.arch {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        };
        let cpu = self.cpu.as_deref().unwrap_or("max");
        let uefi = matches!(self.media, Media::Esp(_));
        match self.arch {
            // q35 for UEFI: the 4M OVMF pair is built for it.
            Arch::X86_64 if uefi => push(&["-machine", "q35"]),
            Arch::X86_64 => {}
            // EL2 on entry, and GICv3 (the default would be GICv2). Under
            // UEFI, acpi=off makes the firmware pass QEMU's DTB on (with ACPI
            // tables present it installs no DTB, and the kernel reads the DTB).
            Arch::Aarch64 if uefi => {
                push(&["-machine", "virt,virtualization=on,gic-version=3,acpi=off"])
            }
            Arch::Aarch64 => push(&["-machine", "virt,virtualization=on,gic-version=3"]),
        }
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", cpu]),
        }
        let mem = format!("{}M", self.mem_mib);
        let smp = self.smp.to_string();
        push(&["-m", &mem, "-smp", &smp]);
        match (&self.media, self.arch) {
            (Media::Kernel { kernel, initrd }, _) => {
                let k = kernel.display().to_string();
                push(&["-kernel", &k, "-append", &self.cmdline]);
                if let Some(i) = initrd {
                    let i = i.display().to_string();
                    push(&["-initrd", &i]);
                }
            }
            (Media::Cdrom(iso), _) => {
                let iso = iso.display().to_string();
                push(&["-cdrom", &iso]);
            }
            (Media::Esp(esp), Arch::X86_64) => {
                let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}");
                let vars = format!("if=pflash,format=raw,unit=1,snapshot=on,file={OVMF_VARS}");
                let disk = format!("format=raw,file=fat:rw:{}", esp.display());
                push(&["-drive", &code, "-drive", &vars, "-drive", &disk]);
            }
            (Media::Esp(esp), Arch::Aarch64) => {
                let disk = format!("if=virtio,format=raw,file=fat:rw:{}", esp.display());
                // splash-time=0 drops the firmware's 5 s boot-menu wait.
                push(&[
                    "-bios",
                    AARCH64_EFI,
                    "-drive",
                    &disk,
                    "-boot",
                    "menu=on,splash-time=0",
                ]);
            }
        }
        match self.arch {
            // isa-debug-exit: the kernel writes 0x10 / 0x11 to port 0xf4 and
            // QEMU exits with (v << 1) | 1 = 33 / 35.
            Arch::X86_64 => push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]),
            // Semihosting SYS_EXIT carries the status (33 / 35) at EL2.
            Arch::Aarch64 => push(&["-semihosting-config", "enable=on,target=native"]),
        }
        // No NIC: the hypervisor does not use QEMU's, and without one the
        // firmware does not spend minutes on PXE when the loader fails.
        push(&["-nic", "none"]);
        push(&[
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]);
        (program.to_string(), a)
    }
}

/// The command as a shell would need it typed (for logs and `run`).
pub fn shell_words(program: &str, args: &[String]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "=._,:/+-@%".contains(c))
        {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(arch: Arch, media: Media) -> Machine {
        Machine {
            arch,
            accel: Accel::Tcg,
            smp: 2,
            mem_mib: 512,
            media,
            cpu: None,
            cmdline: arch.exit_word().to_string(),
        }
    }

    fn kernel(path: &str) -> Media {
        Media::Kernel {
            kernel: path.into(),
            initrd: None,
        }
    }

    fn line(m: &Machine) -> String {
        let (p, a) = m.command_line();
        shell_words(&p, &a)
    }

    #[test]
    fn x86_multiboot1() {
        let m = machine(Arch::X86_64, kernel("/o/hypervisor.elf"));
        assert_eq!(
            line(&m),
            "qemu-system-x86_64 -accel tcg -cpu max -m 512M -smp 2 -kernel /o/hypervisor.elf \
             -append exit=debugexit -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
             -nic none -display none -serial stdio -monitor none -no-reboot"
        );
    }

    #[test]
    fn x86_multiboot2_iso() {
        let m = machine(Arch::X86_64, Media::Cdrom("/o/hypervisor.iso".into()));
        let l = line(&m);
        assert!(l.contains(" -cdrom /o/hypervisor.iso "), "{l}");
        assert!(!l.contains("-append"), "{l}");
        assert!(!l.contains("q35"), "{l}");
    }

    #[test]
    fn x86_uefi() {
        let m = machine(Arch::X86_64, Media::Esp("/o/esp".into()));
        let l = line(&m);
        assert!(l.starts_with("qemu-system-x86_64 -machine q35 "), "{l}");
        assert!(l.contains(
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,snapshot=on,file=/usr/share/OVMF/OVMF_VARS_4M.fd \
             -drive format=raw,file=fat:rw:/o/esp "
        ));
        assert!(l.contains("isa-debug-exit"), "{l}");
        assert!(!l.contains("-append"), "{l}");
    }

    #[test]
    fn arm64_image() {
        let mut m = machine(Arch::Aarch64, kernel("/o/Image"));
        m.cmdline = "exit=semihosting selftest=crash".into();
        m.smp = 4;
        m.mem_mib = 1024;
        assert_eq!(
            line(&m),
            "qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3 -accel tcg \
             -cpu max -m 1024M -smp 4 -kernel /o/Image -append 'exit=semihosting selftest=crash' \
             -semihosting-config enable=on,target=native -nic none -display none \
             -serial stdio -monitor none -no-reboot"
        );
    }

    #[test]
    fn arm64_uefi() {
        let m = machine(Arch::Aarch64, Media::Esp("/o/esp".into()));
        let l = line(&m);
        assert!(
            l.starts_with(
                "qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3,acpi=off "
            ),
            "{l}"
        );
        assert!(l.contains(
            "-bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd -drive if=virtio,format=raw,\
             file=fat:rw:/o/esp -boot menu=on,splash-time=0"
        ));
        assert!(
            l.contains("-semihosting-config enable=on,target=native"),
            "{l}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let mut m = machine(Arch::X86_64, kernel("/k"));
        m.accel = Accel::Kvm;
        let l = line(&m);
        assert!(l.contains("-accel kvm -cpu host "), "{l}");
        assert!(!l.contains("tcg"), "{l}");
    }

    #[test]
    fn cpu_model_and_initrd() {
        let mut m = machine(
            Arch::X86_64,
            Media::Kernel {
                kernel: "/o/hypervisor.elf".into(),
                initrd: Some("/o/vms.cpio".into()),
            },
        );
        m.cpu = Some("EPYC,+svm,+npt".into());
        let l = line(&m);
        assert!(
            l.contains(" -accel tcg -cpu EPYC,+svm,+npt -m 512M "),
            "{l}"
        );
        assert!(
            l.contains(" -kernel /o/hypervisor.elf -append exit=debugexit -initrd /o/vms.cpio "),
            "{l}"
        );
        let mut m = machine(
            Arch::Aarch64,
            Media::Kernel {
                kernel: "/o/Image".into(),
                initrd: Some("/o/vms.cpio".into()),
            },
        );
        m.cpu = Some("cortex-a72".into());
        let l = line(&m);
        assert!(l.contains(" -cpu cortex-a72 "), "{l}");
        assert!(l.contains(" -initrd /o/vms.cpio "), "{l}");
        // KVM ignores the model: the host CPU is the only choice.
        m.accel = Accel::Kvm;
        assert!(line(&m).contains("-accel kvm -cpu host "));
    }

    #[test]
    fn shell_quoting() {
        let a = vec!["a b".to_string(), "it's".to_string(), String::new()];
        assert_eq!(shell_words("p", &a), "p 'a b' 'it'\\''s' ''");
    }
}
