//! The kernel heap: a `linked_list_allocator` over frames taken from the
//! frame allocator at boot.

use boot::frame::FrameAllocator;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size taken at boot. Large allocations (guest RAM, page tables) come
/// from the frame allocator directly, not from here.
pub const HEAP_SIZE: u64 = 8 << 20;

pub fn init(frames: &mut FrameAllocator) {
    let Some(base) = frames.alloc_contiguous(HEAP_SIZE, 4096) else {
        panic!("cannot allocate a {} MiB kernel heap", HEAP_SIZE >> 20);
    };
    // SAFETY: `base..base+HEAP_SIZE` was just taken from the frame allocator,
    // so nothing else uses it, and all RAM is identity-mapped by
    // `platform::init_memory`, so the physical address is a valid pointer.
    unsafe { HEAP.lock().init(base as *mut u8, HEAP_SIZE as usize) };
    log::info!("heap: {} MiB at {:#x}", HEAP_SIZE >> 20, base);
}
