//! A worker's connections: a slab of [`Conn`] records and their generations.
//!
//! A connection is named by a [`Token`] (slot and generation) everywhere outside the
//! worker's own call stack: in reactor events, timer entries, inbox answers. A stale token
//! (its slot reused since) finds nothing.
//!
//! Closing is deferred: [`Conns::doom`] marks the record (nothing more is written to it,
//! nothing more is read from it) and the worker removes it once the handler that asked
//! has returned ([`Conns::take_doomed`]). So a handler's slot stays valid for the whole
//! handler, however many sends inside it fail or close the connection.

use slab::Slab;
use std::ops::{Index, IndexMut};

use crate::conn::{flag, Conn};
use crate::reactor::{ListenerId, Sock, Token};

/// The connection table.
#[derive(Debug, Default)]
pub struct Conns {
    slab: Slab<Conn>,
    generation: u32,
    doomed: Vec<usize>,
}

impl Conns {
    /// An empty table.
    pub fn new() -> Conns {
        Conns::default()
    }

    /// Takes a new connection; returns its token.
    pub fn insert(&mut self, sock: Sock, listener: ListenerId) -> Token {
        self.generation = Token::next_generation(self.generation);
        let slot = self.slab.insert(Conn::new(sock, self.generation, listener));
        Token::new(slot, self.generation)
    }

    /// Takes a record without a socket (a polling session); returns its token.
    pub fn insert_session(&mut self, sock: Sock, listener: ListenerId) -> Token {
        self.generation = Token::next_generation(self.generation);
        let slot = self
            .slab
            .insert(Conn::session(sock, self.generation, listener));
        Token::new(slot, self.generation)
    }

    /// Hot handover, in the successor before anything else is inserted: the records the
    /// old process had, each in its old slot with its old generation (so every token
    /// that names one, a Socket.IO sid included, still does). A slot given twice is an
    /// error.
    pub fn restore(&mut self, records: Vec<(usize, Conn)>) -> Result<(), String> {
        if !self.slab.is_empty() {
            return Err("connections were restored into a table in use".into());
        }
        let n = records.len();
        // Tokens made from now on follow the highest generation taken over.
        self.generation = records.iter().map(|(_, c)| c.generation).max().unwrap_or(0);
        self.slab = records.into_iter().collect();
        if self.slab.len() != n {
            self.slab = Slab::new();
            return Err("two records of one slot".into());
        }
        Ok(())
    }

    /// The connection a token names, if it is still that one.
    pub fn get(&self, token: Token) -> Option<&Conn> {
        self.slab
            .get(token.slot())
            .filter(|c| c.generation == token.generation())
    }

    /// True when the token names a connection that is open (not doomed).
    pub fn alive(&self, token: Token) -> bool {
        self.get(token).is_some_and(|c| !c.doomed())
    }

    /// The token of the connection in `slot`.
    pub fn token(&self, slot: usize) -> Token {
        Token::new(slot, self.slab[slot].generation)
    }

    /// True when a record is in `slot` (doomed or not).
    pub fn contains(&self, slot: usize) -> bool {
        self.slab.contains(slot)
    }

    /// Marks a connection for closing once the current handler returns (idempotent).
    pub fn doom(&mut self, slot: usize) {
        let c = &mut self.slab[slot];
        if !c.doomed() {
            c.set(flag::DOOMED);
            self.doomed.push(slot);
        }
    }

    /// The connections doomed since the last call.
    pub fn take_doomed(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.doomed)
    }

    /// True when closes wait to be applied.
    pub fn any_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }

    /// Takes a record out (the worker's close).
    pub fn remove(&mut self, slot: usize) -> Conn {
        self.slab.remove(slot)
    }

    /// Open connections (doomed ones included until removed).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True with no connection.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Room in the table.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Gives back the room of connections that are gone.
    pub fn shrink_to_fit(&mut self) {
        self.slab.shrink_to_fit();
    }

    /// Every connection with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.slab.iter()
    }

    /// Every slot.
    pub fn slots(&self) -> Vec<usize> {
        self.slab.iter().map(|(s, _)| s).collect()
    }
}

impl Index<usize> for Conns {
    type Output = Conn;

    fn index(&self, slot: usize) -> &Conn {
        &self.slab[slot]
    }
}

impl IndexMut<usize> for Conns {
    fn index_mut(&mut self, slot: usize) -> &mut Conn {
        &mut self.slab[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_records_keep_their_slots_and_generations() {
        let mut c = Conns::new();
        c.restore(vec![(5, Conn::new(10, 7, 0)), (2, Conn::new(11, 9, 0))])
            .unwrap();
        assert!(c.alive(Token::new(5, 7)) && c.alive(Token::new(2, 9)));
        let t = c.insert(12, 0);
        assert!(t.slot() != 5 && t.slot() != 2);
        assert_ne!(t.generation(), 9, "new tokens follow the newest generation");
        let mut d = Conns::new();
        assert!(d
            .restore(vec![(1, Conn::new(1, 1, 0)), (1, Conn::new(2, 2, 0))])
            .is_err());
    }

    #[test]
    fn doomed_records_stay_until_taken_and_stale_tokens_find_nothing() {
        let mut c = Conns::new();
        let a = c.insert(10, 0);
        let b = c.insert(11, 0);
        assert!(c.alive(a) && c.alive(b));
        c.doom(a.slot());
        c.doom(a.slot());
        assert!(!c.alive(a) && c.get(a).is_some(), "still there, not alive");
        assert_eq!(c.take_doomed(), vec![a.slot()]);
        c.remove(a.slot());
        let a2 = c.insert(12, 0);
        assert_eq!(a2.slot(), a.slot(), "the slot is reused");
        assert!(c.get(a).is_none(), "the old token finds nothing");
        assert_eq!(c.token(a2.slot()), a2);
    }
}
