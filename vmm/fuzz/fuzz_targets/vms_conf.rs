//! The vms.conf / boot-module line parser (vmm::config) through
//! vmm::checks::check_conf_line: accepted specs are valid and round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_fuzz::verdict;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        verdict(vmm::checks::check_conf_line(line));
    }
    verdict(vmm::checks::check_conf_line(&text));
});
