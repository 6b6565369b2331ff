//! Bochs for the Intel VMX scenarios (issue 16): Debian's `bochs` emulates
//! VMX with EPT, VPID and unrestricted guest (`corei7_haswell_4770`,
//! PLATFORM.md x86.6), which QEMU TCG does not.
//!
//! The hypervisor boots from its GRUB ISO (Multiboot1 through GRUB's
//! `multiboot`) with `exit=bochs`: success ends with the magic breakpoint,
//! which stops in Bochs' debugger whose script (`dbg.rc`: `c`, `quit`)
//! then quits with status 0; failure writes the shutdown port, status 1.
//! Headless: the SDL2 display with `SDL_VIDEODRIVER=dummy`; COM1 goes to
//! standard output, Bochs' own messages to standard error.

use crate::deps::{self, Need};
use crate::Result;
use std::path::Path;

/// The kernel's exit word under Bochs.
pub const EXIT_WORD: &str = "exit=bochs";

/// What a Bochs run needs (besides the GRUB ISO's tools).
pub fn needs() -> Vec<Need> {
    vec![
        deps::program_need("bochs", "bochs"),
        deps::path_need(
            "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_sdl2_gui.so.0",
            "bochs-sdl",
        ),
        deps::path_need("/usr/share/bochs/BIOS-bochs-latest", "bochsbios"),
        deps::path_need("/usr/share/vgabios/vgabios.bin", "vgabios"),
    ]
}

/// `bochsrc.txt` for a CPU `model` with `mem_mib` of RAM booting `iso`.
pub fn bochsrc(model: &str, mem_mib: u32, iso: &Path) -> String {
    format!(
        "display_library: sdl2\n\
         megs: {mem_mib}\n\
         cpu: model={model}, count=1, ips=50000000, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev=/dev/stdout\n\
         magic_break: enabled=1\n\
         speaker: enabled=0\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         log: /dev/stderr\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n",
        iso.display()
    )
}

/// The debugger script: run, and quit at the magic breakpoint.
pub const DBG_RC: &str = "c\nquit\n";

/// Writes `bochsrc.txt` and `dbg.rc` into `dir`; returns the program and
/// arguments that run Bochs on them.
pub fn prepare(dir: &Path, model: &str, mem_mib: u32, iso: &Path) -> Result<(String, Vec<String>)> {
    let rc = dir.join("bochsrc.txt");
    let dbg = dir.join("dbg.rc");
    std::fs::write(&rc, bochsrc(model, mem_mib, iso))
        .map_err(|e| format!("cannot write {}: {e}", rc.display()))?;
    std::fs::write(&dbg, DBG_RC).map_err(|e| format!("cannot write {}: {e}", dbg.display()))?;
    Ok((
        "env".into(),
        vec![
            "SDL_VIDEODRIVER=dummy".into(),
            "bochs".into(),
            "-q".into(),
            "-f".into(),
            rc.display().to_string(),
            "-rc".into(),
            dbg.display().to_string(),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_is_headless_with_serial_on_stdout() {
        let s = bochsrc("corei7_haswell_4770", 512, Path::new("/o/hypervisor.iso"));
        assert!(s.contains("cpu: model=corei7_haswell_4770, count=1"));
        assert!(
            s.contains("reset_on_triple_fault=0"),
            "a crash must not look like a reset"
        );
        assert!(s.contains("megs: 512\n"));
        assert!(s.contains("path=/o/hypervisor.iso, status=inserted"));
        assert!(s.contains("com1: enabled=1, mode=file, dev=/dev/stdout"));
        assert!(s.contains("magic_break: enabled=1"));
        assert!(s.starts_with("display_library: sdl2\n"));
    }

    #[test]
    fn prepare_writes_both_files() {
        let dir = std::env::temp_dir().join(format!("xtask-bochs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (program, args) = prepare(&dir, "m", 64, Path::new("/x.iso")).unwrap();
        assert_eq!(program, "env");
        assert_eq!(args[..3], ["SDL_VIDEODRIVER=dummy", "bochs", "-q"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("dbg.rc")).unwrap(),
            "c\nquit\n"
        );
        assert!(std::fs::read_to_string(dir.join("bochsrc.txt"))
            .unwrap()
            .contains("megs: 64"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
