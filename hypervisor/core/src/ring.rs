//! A fixed-capacity byte ring (FIFO) with no allocation, for the host console's output and
//! input buffers: the kernel needs them before its heap exists, and as statics.
//!
//! Written by hand: the no_std ring buffers on crates.io either allocate or are lock-free SPSC
//! queues whose guarantees the console (one lock around both ends) does not need.

/// A FIFO of up to `N` bytes.
#[derive(Debug, Clone)]
pub struct ByteRing<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Default for ByteRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ByteRing<N> {
    pub const fn new() -> Self {
        ByteRing { buf: [0; N], head: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == N
    }

    pub fn free(&self) -> usize {
        N - self.len
    }

    /// Appends `b`; `false` (and nothing changes) when full.
    pub fn push(&mut self, b: u8) -> bool {
        if self.is_full() {
            return false;
        }
        self.buf[(self.head + self.len) % N] = b;
        self.len += 1;
        true
    }

    /// Appends as much of `bytes` as fits; returns how many.
    pub fn push_slice(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.free());
        for &b in &bytes[..n] {
            self.push(b);
        }
        n
    }

    pub fn pop(&mut self) -> Option<u8> {
        if self.is_empty() {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(b)
    }

    /// The oldest bytes that are contiguous in memory (all of them unless the ring wraps).
    pub fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(N);
        &self.buf[self.head..end]
    }

    /// Drops the `n` oldest bytes (at most all of them).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % N;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_in_first_out_up_to_capacity() {
        let mut r = ByteRing::<4>::new();
        assert!(r.is_empty() && r.front().is_empty());
        assert_eq!(r.push_slice(b"abcdef"), 4, "only what fits is taken");
        assert!(r.is_full() && !r.push(b'x'));
        assert_eq!(r.pop(), Some(b'a'));
        assert!(r.push(b'e'));
        // Bounded: a ring that never empties fails here instead of hanging.
        let out: Vec<u8> = core::iter::from_fn(|| r.pop()).take(5).collect();
        assert_eq!(out, b"bcde");
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn front_and_consume_walk_a_wrapped_ring_in_order() {
        let mut r = ByteRing::<8>::new();
        r.push_slice(b"123456");
        r.consume(4);
        r.push_slice(b"7890ab");
        assert_eq!(r.len(), 8);
        // Wrapped: the front is what lies before the end of the buffer.
        assert_eq!(r.front(), b"5678");
        r.consume(4);
        assert_eq!(r.front(), b"90ab");
        r.consume(100);
        assert!(r.is_empty());
        assert_eq!(r.free(), 8);
    }

    #[test]
    fn a_long_stream_through_a_small_ring_loses_and_reorders_nothing() {
        let mut r = ByteRing::<7>::new();
        let input: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (mut fed, mut out) = (0, Vec::new());
        let mut step = 0usize;
        while out.len() < input.len() {
            fed += r.push_slice(&input[fed..(fed + step % 5 + 1).min(input.len())]);
            let n = r.front().len().min(step % 3 + 1);
            out.extend_from_slice(&r.front()[..n]);
            r.consume(n);
            step += 1;
            assert!(step < 100_000, "no progress");
        }
        assert_eq!(out, input);
    }
}
