//! The epoll backend's output queue: what the kernel did not take, in order.

use bytes::Bytes;
use std::collections::VecDeque;

/// Unsent output: shared buffers plus the offset already written of the first.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Buffers in order.
    pub bufs: VecDeque<Bytes>,
    /// Bytes of `bufs[0]` already written.
    pub offset: usize,
    /// Bytes left to write in all buffers.
    pub bytes: usize,
}

impl WriteQueue {
    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends a buffer.
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.bytes += b.len();
        self.bufs.push_back(b);
    }

    /// Appends a buffer of which the first `written` bytes are already written (the
    /// queue must be empty). Keeping the buffer whole lets a slow-consumer cut keep the
    /// stream well-formed.
    pub fn push_partial(&mut self, b: Bytes, written: usize) {
        debug_assert!(
            self.bufs.is_empty(),
            "only the first buffer can be partly written"
        );
        debug_assert!(written < b.len());
        self.bytes += b.len() - written;
        self.offset = written;
        self.bufs.push_back(b);
    }

    /// Marks `n` bytes as written.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.bufs.front().expect("advance within the queued bytes");
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.bufs.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    /// Drops every buffer after the first, keeping a partially written one whole so the
    /// stream stays well-formed.
    pub fn truncate_to_partial(&mut self) {
        if self.offset == 0 {
            self.bufs.clear();
        } else {
            self.bufs.truncate(1);
        }
        self.bytes = self.bufs.front().map_or(0, |b| b.len() - self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_queue_accounting() {
        let mut q = WriteQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b""));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.bytes, 10);
        q.advance(3);
        assert_eq!((q.bytes, q.offset, q.bufs.len()), (7, 3, 2));
        q.advance(4);
        assert_eq!((q.bytes, q.offset, q.bufs.len()), (3, 2, 1));
        q.push(Bytes::from_static(b"!!"));
        q.truncate_to_partial();
        assert_eq!((q.bytes, q.bufs.len()), (3, 1));
        q.advance(3);
        assert!(q.is_empty());
        q.push(Bytes::from_static(b"x"));
        q.truncate_to_partial();
        assert!(q.is_empty());
        q.push_partial(Bytes::from_static(b"abcdef"), 2);
        q.push(Bytes::from_static(b"gh"));
        assert_eq!((q.bytes, q.offset), (6, 2));
        q.truncate_to_partial();
        assert_eq!(
            (q.bytes, q.bufs.len()),
            (4, 1),
            "the partly written buffer stays whole"
        );
    }
}
