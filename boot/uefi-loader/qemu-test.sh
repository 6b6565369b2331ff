#!/usr/bin/env bash
# Boots hv-loader under OVMF (x86_64) and QEMU_EFI (aarch64) with the test
# kernel in testkernel/ and checks, from the serial output and the exit
# status, what the loader hands over and how it fails on bad input.
#
#   boot/uefi-loader/qemu-test.sh [x86_64|aarch64]...   (default: both)
#
# Needs qemu-system-x86_64 + ovmf, qemu-system-aarch64 + qemu-efi-aarch64.
# Prints "N passed, M failed" and exits non-zero if any scenario failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d /tmp/uefi-loader-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
pass=0
fail=0

build() { # arch -> sets loader, kernel, kernel_far (linked outside RAM)
    local arch=$1 uefi_target kernel_target flags
    if [ "$arch" = x86_64 ]; then
        uefi_target=x86_64-unknown-uefi kernel_target=x86_64-unknown-none
        flags="-C relocation-model=static"
        far=0x7f000000 # above the 512 MiB of RAM the x86 runs get
    else
        uefi_target=aarch64-unknown-uefi kernel_target=aarch64-unknown-none-softfloat
        # the kernel runs with the MMU off: every access must be aligned
        flags="-C target-feature=+strict-align"
        far=0x20000000 # below RAM (0x40000000) on the virt board
    fi
    (cd "$root" && cargo build --quiet --release -p uefi-loader --target $uefi_target) || exit 1
    loader=$target/$uefi_target/release/hv-loader.efi
    local kt=$target/uefi-testkernel
    (cd "$here/testkernel" && RUSTFLAGS="$flags" CARGO_TARGET_DIR=$kt \
        cargo build --quiet --release --target $kernel_target 2>/dev/null) || exit 1
    kernel=$work/$arch-kernel.elf
    cp "$kt/$kernel_target/release/uefi-testkernel" "$kernel"
    (cd "$here/testkernel" && RUSTFLAGS="$flags" CARGO_TARGET_DIR=$kt TESTKERNEL_BASE=$far \
        cargo build --quiet --release --target $kernel_target 2>/dev/null) || exit 1
    kernel_far=$work/$arch-kernel-far.elf
    cp "$kt/$kernel_target/release/uefi-testkernel" "$kernel_far"
    # build.rs reruns when TESTKERNEL_BASE changes: leave the default build last
    (cd "$here/testkernel" && RUSTFLAGS="$flags" CARGO_TARGET_DIR=$kt \
        cargo build --quiet --release --target $kernel_target 2>/dev/null) || exit 1
}

esp() { # name arch -> a fresh ESP dir with the loader, echoes its path
    local dir=$work/$1
    mkdir -p "$dir/EFI/BOOT"
    if [ "$2" = x86_64 ]; then
        cp "$loader" "$dir/EFI/BOOT/BOOTX64.EFI"
    else
        cp "$loader" "$dir/EFI/BOOT/BOOTAA64.EFI"
    fi
    echo "$dir"
}

# run arch esp-dir log [qemu -M options]: boots until QEMU exits or the
# firmware reports that the loader returned (then QEMU is stopped).
run() {
    local arch=$1 dir=$2 log=$3 machine=${4:-} pid
    if [ "$arch" = x86_64 ]; then
        qemu-system-x86_64 -machine q35 -cpu max -m 512M \
            -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
            -drive if=pflash,format=raw,unit=1,snapshot=on,file=/usr/share/OVMF/OVMF_VARS_4M.fd \
            -drive format=raw,file=fat:rw:"$dir" -display none -serial file:"$log" -no-reboot -nic none \
            -device isa-debug-exit,iobase=0xf4,iosize=0x04 2>>"$log.stderr" &
    else
        qemu-system-aarch64 -M "${machine:-virt,virtualization=on,gic-version=3}" -cpu max -m 1G \
            -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
            -drive if=virtio,format=raw,file=fat:rw:"$dir" -display none -serial file:"$log" \
            -no-reboot -nic none -boot menu=on,splash-time=0 \
            -semihosting-config enable=on,target=native 2>>"$log.stderr" &
    fi
    pid=$!
    for _ in $(seq 1 600); do # 60 s
        if ! kill -0 $pid 2>/dev/null; then
            wait $pid
            return $?
        fi
        if grep -aq "BdsDxe: failed to start" "$log" 2>/dev/null; then
            kill $pid
            wait $pid 2>/dev/null
            return 200 # the loader returned to the firmware
        fi
        sleep 0.1
    done
    kill $pid
    wait $pid 2>/dev/null
    return 124
}

# scenario name arch esp expected-status machine pattern...: every pattern
# must appear in the serial log (fixed strings).
scenario() {
    local name=$1 arch=$2 dir=$3 want=$4 machine=$5 log=$work/$1.log status p ok=1
    shift 5
    run "$arch" "$dir" "$log" "$machine"
    status=$?
    [ "$status" = "$want" ] || { echo "  status $status, expected $want"; ok=0; }
    for p in "$@"; do
        grep -aqF -- "$p" "$log" || { echo "  missing: $p"; ok=0; }
    done
    if [ $ok = 1 ]; then
        echo "ok   $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name (log follows)"
        tr -d '\r' <"$log" | grep -a "loader:\|TEST:" | sed 's/^/  | /'
        fail=$((fail + 1))
    fi
}

# Files every "full" ESP gets: command line, modules, a text and a binary module.
populate() {
    printf 'exit=debugexit loglevel=debug  \r\n\n' >"$1/cmdline.txt"
    printf '# test modules\r\nhello.txt\n\n  sub/pattern.bin  \n' >"$1/modules.txt"
    echo "hello from a module" >"$1/hello.txt"
    mkdir -p "$1/sub"
    python3 -c 'import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(10000)))' \
        >"$1/sub/pattern.bin"
}

test_arch() {
    local arch=$1 other d
    build "$arch"
    [ "$arch" = x86_64 ] && other=$work/aarch64-kernel.elf || other=$work/x86_64-kernel.elf

    d=$(esp "$arch-full" "$arch"); populate "$d"; cp "$kernel" "$d/hypervisor.elf"
    if [ "$arch" = x86_64 ]; then
        scenario "$arch-full" "$arch" "$d" 33 "" "TEST: PASS" \
            'TEST: cmdline "exit=debugexit loglevel=debug"' \
            'TEST: module hello.txt: 20 bytes: "hello from a module"' \
            "TEST: module sub/pattern.bin: 10000 bytes, pattern ok=true" \
            "loader: ACPI RSDP at" "loader: firmware page tables:" "TEST: page tables:"
    else
        # acpi=off: the firmware publishes the DTB instead of ACPI tables
        scenario "$arch-full-dtb" "$arch" "$d" 33 "virt,virtualization=on,gic-version=3,acpi=off" \
            "TEST: PASS" 'TEST: cmdline "exit=debugexit loglevel=debug"' \
            "TEST: module sub/pattern.bin: 10000 bytes, pattern ok=true" \
            "loader: running at EL2" "copied to" "EL2 SCTLR="
        scenario "$arch-full-acpi" "$arch" "$d" 33 "" "TEST: PASS" "loader: ACPI RSDP at" \
            "loader: no DTB in the configuration table"
        scenario "$arch-el1" "$arch" "$d" 33 "virt,gic-version=3" "TEST: PASS" \
            "loader: running at EL1" "EL1 SCTLR="
    fi

    d=$(esp "$arch-bare" "$arch"); cp "$kernel" "$d/hypervisor.elf"
    scenario "$arch-no-cmdline-no-modules" "$arch" "$d" 33 "" "TEST: PASS" 'TEST: cmdline ""' \
        "loader: no cmdline.txt" "loader: no modules.txt"

    d=$(esp "$arch-nokernel" "$arch")
    scenario "$arch-missing-kernel" "$arch" "$d" 200 "" \
        "loader: error: hypervisor.elf not found in the root of the ESP"

    d=$(esp "$arch-wrongarch" "$arch"); cp "$other" "$d/hypervisor.elf"
    scenario "$arch-wrong-machine" "$arch" "$d" 200 "" "loader: error: hypervisor.elf: e_machine="

    d=$(esp "$arch-far" "$arch"); cp "$kernel_far" "$d/hypervisor.elf"
    scenario "$arch-kernel-outside-ram" "$arch" "$d" 200 "" \
        "loader: error: cannot allocate the kernel's range" \
        "are not in the firmware's memory map at all (not RAM)"

    d=$(esp "$arch-nomodule" "$arch"); cp "$kernel" "$d/hypervisor.elf"
    printf 'missing.bin\n' >"$d/modules.txt"
    scenario "$arch-missing-module" "$arch" "$d" 200 "" \
        "loader: error: module missing.bin (listed in modules.txt) not found on the ESP"

    d=$(esp "$arch-badcmdline" "$arch"); cp "$kernel" "$d/hypervisor.elf"
    printf 'exit=debugexit \377\n' >"$d/cmdline.txt"
    scenario "$arch-bad-cmdline" "$arch" "$d" 200 "" "loader: error: cmdline.txt: not UTF-8"
}

archs=${*:-x86_64 aarch64}
# Wrong-machine scenarios need both test kernels.
for a in x86_64 aarch64; do build "$a"; done
for a in $archs; do test_arch "$a"; done
echo "uefi-loader: $pass passed, $fail failed"
[ "$fail" = 0 ]
