//! `pick()` must not allocate: measured with a counting global allocator.
//!
//! Only allocations made on the current thread are counted, so the test
//! harness and runtime threads cannot disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lb_client::{ClientOptions, Endpoint, PickList};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: `GlobalAlloc` is an unsafe trait; this only forwards to `System` and
// bumps a const-initialised thread-local (which never allocates). The crate under
// test stays `forbid(unsafe_code)`; this is test-only instrumentation.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread-local may be gone during thread teardown.
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_during(|| {
        std::hint::black_box(Vec::<u8>::with_capacity(16));
    });
    assert_eq!(n, 1);
}

#[test]
fn picklist_pick_does_not_allocate() {
    let list = PickList::from_parts(
        1,
        vec![
            Endpoint::new("a", "10.0.0.1:80"),
            Endpoint::new("b", "10.0.0.2:80"),
            Endpoint::drop_entry(),
        ],
        vec![0, 1, 0, 2],
    )
    .expect("valid list");
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            let _ = std::hint::black_box(list.pick());
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn subscription_pick_does_not_allocate() {
    // Current-thread runtime: the background task cannot run during the loop,
    // which never yields.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut options = ClientOptions::new("127.0.0.1:1");
        options.fallback = vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()];
        let sub = lb_client::subscribe("svc", options)
            .await
            .expect("subscribe");
        // Warm-up: arc-swap registers its thread-local debt list on first use.
        let _ = sub.pick();
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                let _ = std::hint::black_box(sub.pick());
            }
        });
        assert_eq!(n, 0);
        sub.close();
    });
}
