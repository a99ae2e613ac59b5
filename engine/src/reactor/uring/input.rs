//! Input through the ring: receives complete into provided buffers; each connection's
//! completed buffers wait here, in order, until the worker takes them with
//! [`crate::reactor::Backend::recv`] (then the buffer goes back to the ring). The end of
//! the input (EOF, an error) waits behind the data.

use io_uring::cqueue;
use std::collections::VecDeque;
use std::io;

use super::userdata::{K_RECV, K_RECVM};
use super::Uring;
use crate::limits::URING_BUFFER_SIZE;
use crate::reactor::{Event, Sock, Token};

/// A connection's input not taken yet.
#[derive(Default)]
pub(super) struct Input {
    /// Completed buffers: id and length.
    bufs: VecDeque<(u16, u32)>,
    /// How the input ended: 0 at EOF, else an errno.
    end: Option<i32>,
}

impl Uring {
    /// Keeps input (or its end) for `token`; the first of a batch makes it readable.
    fn keep_input(
        &mut self,
        token: Token,
        piece: Result<(u16, u32), i32>,
        events: &mut Vec<Event>,
    ) {
        let input = self.inputs.entry(token).or_default();
        let was_empty = input.bufs.is_empty() && input.end.is_none();
        match piece {
            Ok(b) => input.bufs.push_back(b),
            Err(end) => input.end = Some(end),
        }
        if was_empty {
            events.push(Event::Readable(token));
        }
    }

    /// [`crate::reactor::Backend::recv`].
    pub(super) fn take_input(&mut self, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        let would_block = || Err(io::ErrorKind::WouldBlock.into());
        // Empty but for the first reads after a hot handover: one branch otherwise.
        if let Some((early, taken)) = (!self.early.is_empty())
            .then(|| self.early.get_mut(&token))
            .flatten()
        {
            if !self.budget.allow(token) {
                return would_block();
            }
            let n = (early.len() - *taken).min(buf.len());
            buf[..n].copy_from_slice(&early[*taken..*taken + n]);
            *taken += n;
            if *taken == early.len() {
                self.early.remove(&token);
            }
            self.budget.used(token, n);
            return Ok(n);
        }
        let Some(input) = self.inputs.get_mut(&token) else {
            return would_block();
        };
        if input.bufs.is_empty() {
            return match input.end.take() {
                None => would_block(),
                Some(0) => Ok(0),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
        }
        if !self.budget.allow(token) {
            return would_block();
        }
        let (bid, len) = input.bufs.pop_front().expect("checked above");
        if input.bufs.is_empty() && input.end.is_none() {
            self.inputs.remove(&token);
        }
        let src = self.bufs.slice(bid, len as usize);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        self.bufs.push(bid);
        self.bufs.publish();
        self.budget.used(token, n);
        Ok(n)
    }

    /// Hot handover: the input received and not taken yet, in order, appended to `out`
    /// (how it ended is not: the successor's socket reports that again).
    pub(super) fn untaken(&self, token: Token, out: &mut Vec<u8>) {
        if let Some((early, taken)) = self.early.get(&token) {
            out.extend_from_slice(&early[*taken..]);
        }
        if let Some(input) = self.inputs.get(&token) {
            for &(bid, len) in &input.bufs {
                out.extend_from_slice(self.bufs.slice(bid, len as usize));
            }
        }
    }

    /// Gives the buffers of a closed connection back to the ring.
    pub(super) fn drop_input(&mut self, token: Token) {
        self.early.remove(&token);
        if let Some(input) = self.inputs.remove(&token) {
            for (bid, _) in input.bufs {
                self.bufs.push(bid);
            }
            self.bufs.publish();
        }
    }

    /// A receive completed.
    pub(super) fn on_input(
        &mut self,
        kind: u8,
        sock: Sock,
        generation: u32,
        (res, flags): (i32, u32),
        events: &mut Vec<Event>,
    ) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(token) = self.live_token(sock, generation) else {
            if let Some(bid) = bid {
                self.bufs.push(bid);
                self.bufs.publish();
            }
            return;
        };
        if res > 0 {
            let bid = bid.expect("a RECV with buffer select that read data names its buffer");
            self.keep_input(token, Ok((bid, res as u32)), events);
            match kind {
                K_RECV if cqueue::sock_nonempty(flags) || res as usize == URING_BUFFER_SIZE => {
                    self.submit_recv(sock, token);
                }
                K_RECV => {
                    self.recv_armed.remove(&token);
                }
                _ if !more => self.arm_input(sock, token),
                _ => {}
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufs.push(bid);
            self.bufs.publish();
        }
        self.recv_armed.remove(&token);
        crate::debug!("uring: input end on sock {sock} token {token:?}: res {res} kind {kind}");
        match -res {
            libc::ENOBUFS => self.retry.push((sock, token)),
            libc::ECANCELED => {}
            errno => self.keep_input(token, Err(errno), events),
        }
        debug_assert!(kind == K_RECV || kind == K_RECVM);
    }
}
