//! Helpers shared by the fuzz targets: turning libFuzzer's bytes into
//! register values, and failing loudly (libFuzzer records a panic as a
//! crash, with the input that caused it).

pub use libfuzzer_sys::arbitrary::{self, Unstructured};

/// Panics with the checker's message: the fuzzer reports it as a crash.
pub fn verdict(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("property failed: {e}");
    }
}

/// A u64 from the input, often one of the values at the edges that
/// matter for bounds checks (0, all ones, around RAM and 4 GiB).
pub fn edge_u64(u: &mut Unstructured, edges: &[u64]) -> u64 {
    let pick: u8 = u.arbitrary().unwrap_or(0);
    let raw: u64 = u.arbitrary().unwrap_or(0);
    match pick % 4 {
        0 if !edges.is_empty() => {
            let e = edges[raw as usize % edges.len()];
            // Near the edge: -8..+7.
            e.wrapping_add((pick >> 4) as u64).wrapping_sub(8)
        }
        _ => raw,
    }
}
