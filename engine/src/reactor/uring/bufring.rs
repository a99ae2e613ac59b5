//! The provided-buffer ring (IORING_REGISTER_PBUF_RING): [`URING_BUFFERS`] buffers of
//! [`URING_BUFFER_SIZE`] bytes per worker, from which the kernel picks one for each
//! receive. The worker copies the input out and the buffer goes straight back to the ring.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::limits::{URING_BUFFERS, URING_BUFFER_SIZE};

/// Buffer group id of the worker's provided-buffer ring.
pub const BGID: u16 = 7;

/// The provided-buffer ring (IORING_REGISTER_PBUF_RING).
pub(super) struct BufRing {
    ring: *mut BufRingEntry,
    layout: std::alloc::Layout,
    mem: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    pub(super) fn new(uring: &IoUring) -> io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(URING_BUFFERS) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::other("bad buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // Touch the buffers now, so that the idle footprint is counted at start.
        let mem = vec![0u8; usize::from(URING_BUFFERS) * URING_BUFFER_SIZE].into_boxed_slice();
        let mut br = BufRing {
            ring,
            layout,
            mem,
            tail: 0,
        };
        // SAFETY: `ring` is page-aligned, zeroed memory for URING_BUFFERS entries that lives
        // until after the ring is destroyed (BufRing is dropped after the IoUring, see the
        // field order of `Uring`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, URING_BUFFERS, BGID, 0)?;
        }
        for bid in 0..URING_BUFFERS {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    pub(super) fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (URING_BUFFERS - 1));
        // SAFETY: idx < URING_BUFFERS, inside the ring allocation; the kernel only reads
        // entries between its head and our published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.mem[usize::from(bid) * URING_BUFFER_SIZE..].as_ptr() as u64);
        entry.set_len(URING_BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    pub(super) fn publish(&self) {
        // SAFETY: the ring base is the first entry; its `resv` field is the shared tail,
        // a naturally aligned u16 that the kernel reads atomically.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    pub(super) fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * URING_BUFFER_SIZE;
        &self.mem[start..start + len.min(URING_BUFFER_SIZE)]
    }
}

// SAFETY: the ring memory is owned by this value alone and only touched by the thread
// that owns the worker (the kernel reads it concurrently by design, through atomics on
// the tail).
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone.
        unsafe { std::alloc::dealloc(self.ring.cast(), self.layout) };
    }
}
