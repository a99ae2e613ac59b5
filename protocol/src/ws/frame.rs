//! WebSocket frames: the incremental decoder and the encoders (RFC 6455 section 5).
//!
//! # Decoding
//!
//! [`Decoder::decode`] takes whatever bytes arrived and returns how many it consumed and at
//! most one [`Event`]; call it again with the rest. It consumes every byte it is given
//! (a partial header or payload is kept inside the decoder), so the caller never has to
//! hold input back. A frame that arrives whole is unmasked in place and returned borrowed
//! from the input (no copy); a frame that arrives in pieces, and a fragmented message, is
//! collected in a buffer bounded by [`DecoderConfig::max_message`].
//!
//! The decoder holds nothing between whole frames: its state is one `Option<Box<_>>`, set
//! only while a header, a payload or a fragmented message is unfinished.
//!
//! Checks, each failing as soon as the offending byte is seen: RSV bits (none without an
//! extension; with permessage-deflate, [`Decoder::decode_ext`], RSV1 only on the first
//! frame of a data message), reserved opcodes, masking (clients must mask, servers must not), control
//! frames (at most 125 bytes, never fragmented), continuation without a message and a new
//! message inside a fragmented one, message size (1009), UTF-8 of text, validated
//! incrementally across frames and inside a frame as it arrives (1007), close payloads
//! (valid code, UTF-8 reason).
//!
//! A compressed message (RSV1 on its first frame) is returned as it came, compressed,
//! with [`Decoded::compressed`] set: its size is checked against `max_message` as it
//! arrives, its UTF-8 is not (the caller inflates it, bounded, and checks the text then:
//! see [`super::deflate`]).
//!
//! # Encoding
//!
//! [`encode_frame`] writes an unmasked server frame into a buffer, so one encoding of a
//! message can be shared by every subscriber; [`encode_masked_frame`] writes a masked
//! client frame.

use std::borrow::Cow;
use std::fmt;

use super::close::{
    parse_close_payload, truncate_reason, CloseCode, CloseFrame, ClosePayloadError,
};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455; the others are reserved and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text (UTF-8).
    Text = 0x1,
    /// 0x2: binary.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for a reserved one.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// True for close, ping and pong.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which side of the connection decodes: it decides whether frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decoding client frames: every frame must be masked.
    Server,
    /// Decoding server frames: no frame may be masked.
    Client,
}

/// With [`DecoderConfig::skip_oversized`], a message is skipped only up to this many
/// times `max_message`: one announced larger still fails the connection (1009), rather
/// than being read through for as long as its sender likes.
pub const MAX_SKIP_FACTOR: u64 = 16;

/// Decoder settings, passed on every call so the decoder itself stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Which side is decoding.
    pub role: Role,
    /// Largest message (all fragments together) accepted; more is 1009.
    pub max_message: usize,
    /// An unfragmented message over `max_message` (up to [`MAX_SKIP_FACTOR`] times it)
    /// is skipped (its payload read and dropped, [`Event::Skipped`]) instead of failing
    /// the connection; a fragmented one over it, or a larger one, still fails it (1009).
    pub skip_oversized: bool,
}

/// The type of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Text: the data is valid UTF-8.
    Text,
    /// Binary.
    Binary,
}

/// Something the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message (fragments reassembled). Text is valid UTF-8.
    Message {
        /// Text or binary.
        kind: DataKind,
        /// The payload, unmasked.
        data: Cow<'a, [u8]>,
    },
    /// A ping with its payload (answer with a pong carrying the same payload).
    Ping(Cow<'a, [u8]>),
    /// A pong.
    Pong(Cow<'a, [u8]>),
    /// A close frame: `None` when it carried no status code.
    Close(Option<CloseFrame<'a>>),
    /// An unfragmented data message over `max_message` was read and dropped (with
    /// [`DecoderConfig::skip_oversized`]): its kind and length.
    Skipped {
        /// Text or binary.
        kind: DataKind,
        /// Its length.
        len: u64,
    },
}

impl Event<'_> {
    /// A copy that owns its data.
    pub fn into_owned(self) -> Event<'static> {
        match self {
            Event::Message { kind, data } => Event::Message {
                kind,
                data: Cow::Owned(data.into_owned()),
            },
            Event::Ping(p) => Event::Ping(Cow::Owned(p.into_owned())),
            Event::Pong(p) => Event::Pong(Cow::Owned(p.into_owned())),
            Event::Close(c) => Event::Close(c.map(CloseFrame::into_owned)),
            Event::Skipped { kind, len } => Event::Skipped { kind, len },
        }
    }
}

/// A peer broke the protocol. The connection must be failed with [`WsError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A framing or protocol rule was broken (1002). The text says which.
    Protocol(&'static str),
    /// Text or a close reason that is not UTF-8 (1007).
    InvalidUtf8,
    /// A message larger than the limit (1009).
    TooBig,
}

impl WsError {
    /// The close code to fail the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WsError::Protocol(_) => CloseCode::PROTOCOL,
            WsError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            WsError::TooBig => CloseCode::TOO_BIG,
        }
    }

    /// The close reason to send.
    pub fn reason(&self) -> &'static str {
        match self {
            WsError::Protocol(why) => why,
            WsError::InvalidUtf8 => "invalid UTF-8 in text",
            WsError::TooBig => "message too big",
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.close_code().0, self.reason())
    }
}

impl std::error::Error for WsError {}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// Input bytes consumed. Call again with the rest of the input.
    pub consumed: usize,
    /// The event completed by these bytes, if any.
    pub event: Option<Event<'a>>,
    /// The event is a message compressed with permessage-deflate (only from
    /// [`Decoder::decode_ext`] with the extension on): its data is the deflate payload,
    /// not yet inflated nor UTF-8 checked.
    pub compressed: bool,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    /// RSV1: a compressed message (permessage-deflate), on its first frame.
    rsv1: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: u64,
    header_len: usize,
}

/// The version byte of [`Decoder::export`].
const EXPORT_VERSION: u8 = 1;

/// Reads what [`Decoder::export`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Incremental frame decoder. See the module documentation.
#[derive(Debug, Default)]
pub struct Decoder {
    state: Option<Box<Partial>>,
}

/// Everything unfinished between two `decode` calls.
#[derive(Debug, Default)]
struct Partial {
    /// Bytes of an incomplete frame header.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    /// A frame whose header is parsed and whose payload is still arriving.
    frame: Option<FrameInProgress>,
    /// A data message in progress (a fragmented one, or one frame arriving in pieces).
    message: Option<Message>,
    /// Payload of a control frame arriving in pieces.
    control: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    header: Header,
    received: u64,
    /// Read and dropped (an oversized message being skipped).
    skip: bool,
}

#[derive(Debug)]
struct Message {
    kind: DataKind,
    data: Vec<u8>,
    utf8: Utf8Validator,
    /// Compressed (RSV1 on its first frame): UTF-8 is checked after inflating.
    compressed: bool,
}

impl Message {
    fn new(h: &Header) -> Message {
        Message {
            kind: data_kind(h.opcode),
            data: Vec::new(),
            utf8: Utf8Validator::new(),
            compressed: h.rsv1,
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        if self.kind == DataKind::Text && !self.compressed {
            self.utf8.feed(bytes).map_err(|_| WsError::InvalidUtf8)?;
        }
        self.data.extend_from_slice(bytes);
        Ok(())
    }
}

impl Partial {
    fn is_idle(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none()
    }
}

impl Decoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no frame or message is unfinished (nothing is buffered).
    pub fn is_idle(&self) -> bool {
        self.state.is_none()
    }

    /// The unfinished state as bytes (empty when idle), for a hot handover to the next
    /// process; [`Decoder::import`] reads it back. The format is private to this version.
    pub fn export(&self) -> Vec<u8> {
        let Some(p) = &self.state else {
            return Vec::new();
        };
        let mut out = vec![EXPORT_VERSION, p.header_len];
        out.extend_from_slice(&p.header);
        match &p.frame {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                let h = &f.header;
                out.extend_from_slice(&[h.fin as u8, h.rsv1 as u8, h.opcode as u8]);
                out.push(h.mask.is_some() as u8);
                out.extend_from_slice(&h.mask.unwrap_or([0; 4]));
                out.extend_from_slice(&h.len.to_le_bytes());
                out.extend_from_slice(&(h.header_len as u64).to_le_bytes());
                out.extend_from_slice(&f.received.to_le_bytes());
                out.push(f.skip as u8);
            }
        }
        match &p.message {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                out.push(match m.kind {
                    DataKind::Text => 1,
                    DataKind::Binary => 2,
                });
                out.push(m.compressed as u8);
                let pending = m.utf8.pending();
                out.push(pending.len() as u8);
                out.extend_from_slice(pending);
                out.extend_from_slice(&(m.data.len() as u64).to_le_bytes());
                out.extend_from_slice(&m.data);
            }
        }
        out.extend_from_slice(&(p.control.len() as u64).to_le_bytes());
        out.extend_from_slice(&p.control);
        out
    }

    /// A decoder from [`Decoder::export`]; `None` for bytes it did not write.
    pub fn import(bytes: &[u8]) -> Option<Decoder> {
        if bytes.is_empty() {
            return Some(Decoder::new());
        }
        let mut r = Reader(bytes);
        if r.u8()? != EXPORT_VERSION {
            return None;
        }
        let header_len = r.u8()?;
        if usize::from(header_len) > MAX_HEADER_LEN {
            return None;
        }
        let mut p = Partial {
            header_len,
            ..Partial::default()
        };
        p.header.copy_from_slice(r.take(MAX_HEADER_LEN)?);
        if r.u8()? == 1 {
            let (fin, rsv1) = (r.u8()? != 0, r.u8()? != 0);
            let opcode = OpCode::from_u8(r.u8()?)?;
            let has_mask = r.u8()? != 0;
            let mask: [u8; 4] = r.take(4)?.try_into().ok()?;
            let len = r.u64()?;
            let header_len = usize::try_from(r.u64()?).ok()?;
            let received = r.u64()?;
            let skip = r.u8()? != 0;
            p.frame = Some(FrameInProgress {
                header: Header {
                    fin,
                    rsv1,
                    opcode,
                    mask: has_mask.then_some(mask),
                    len,
                    header_len,
                },
                received,
                skip,
            });
        }
        if r.u8()? == 1 {
            let kind = match r.u8()? {
                1 => DataKind::Text,
                2 => DataKind::Binary,
                _ => return None,
            };
            let compressed = r.u8()? != 0;
            let n = usize::from(r.u8()?);
            let utf8 = Utf8Validator::with_pending(r.take(n)?)?;
            let n = usize::try_from(r.u64()?).ok()?;
            let data = r.take(n)?.to_vec();
            p.message = Some(Message {
                kind,
                data,
                utf8,
                compressed,
            });
        }
        let n = usize::try_from(r.u64()?).ok()?;
        p.control = r.take(n)?.to_vec();
        if !r.0.is_empty() {
            return None;
        }
        Some(Decoder {
            state: Some(Box::new(p)),
        })
    }

    /// Bytes held for unfinished frames and messages.
    pub fn buffered(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            s.header_len as usize + s.control.len() + s.message.as_ref().map_or(0, |m| m.data.len())
        })
    }

    /// Decodes from `input`, unmasking it in place. See the module documentation. After an
    /// error the decoder must not be used again: fail the connection. No extension:
    /// every RSV bit is an error.
    pub fn decode<'a>(
        &mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
    ) -> Result<Decoded<'a>, WsError> {
        self.decode_ext(input, cfg, false)
    }

    /// [`Decoder::decode`], with permessage-deflate negotiated when `deflate`: RSV1 on the
    /// first frame of a data message marks it compressed ([`Decoded::compressed`]); RSV1
    /// on a continuation or a control frame, and RSV2 / RSV3, are still errors (1002).
    /// With `deflate` false it is [`Decoder::decode`].
    pub fn decode_ext<'a>(
        &mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
        deflate: bool,
    ) -> Result<Decoded<'a>, WsError> {
        if input.is_empty() {
            return Ok(Decoded {
                consumed: 0,
                event: None,
                compressed: false,
            });
        }
        let mut pos = 0;
        let frame_in_progress = self.state.as_ref().is_some_and(|s| s.frame.is_some());
        if !frame_in_progress {
            let header = match self.read_header(input, cfg, deflate)? {
                (None, consumed) => {
                    return Ok(Decoded {
                        consumed,
                        event: None,
                        compressed: false,
                    })
                }
                (Some(h), consumed) => {
                    pos = consumed;
                    h
                }
            };
            let skip = self.check_sequence(&header, cfg)?;
            if skip {
                // Nothing of it is kept: read it through and say so once it is all in.
                let take = (header.len.min((input.len() - pos) as u64)) as usize;
                if (take as u64) == header.len {
                    self.release_if_idle();
                    return Ok(Decoded {
                        consumed: pos + take,
                        event: Some(Event::Skipped {
                            kind: data_kind(header.opcode),
                            len: header.len,
                        }),
                        compressed: false,
                    });
                }
                let state = self.state.get_or_insert_with(Box::default);
                state.frame = Some(FrameInProgress {
                    header,
                    received: take as u64,
                    skip: true,
                });
                return Ok(Decoded {
                    consumed: pos + take,
                    event: None,
                    compressed: false,
                });
            }
            if (input.len() - pos) as u64 >= header.len {
                // The whole payload is here: unmask in place and answer without copying.
                let end = pos + header.len as usize;
                let payload = &mut input[pos..end];
                if let Some(mask) = header.mask {
                    apply_mask(payload, mask, 0);
                }
                let (event, compressed) = self.whole_frame(&header, payload)?;
                self.release_if_idle();
                return Ok(Decoded {
                    consumed: end,
                    event,
                    compressed,
                });
            }
            let state = self.state.get_or_insert_with(Box::default);
            if !header.opcode.is_control() && state.message.is_none() {
                state.message = Some(Message::new(&header));
            }
            state.frame = Some(FrameInProgress {
                header,
                received: 0,
                skip: false,
            });
        }
        let (consumed_payload, event, compressed) = self.feed_payload(&mut input[pos..])?;
        pos += consumed_payload;
        self.release_if_idle();
        Ok(Decoded {
            consumed: pos,
            event,
            compressed,
        })
    }

    /// Reads a frame header from saved bytes plus `input`. Returns the header (if complete)
    /// and how many bytes of `input` were consumed.
    fn read_header(
        &mut self,
        input: &[u8],
        cfg: &DecoderConfig,
        deflate: bool,
    ) -> Result<(Option<Header>, usize), WsError> {
        let saved = self.state.as_ref().map_or(0, |s| s.header_len as usize);
        if saved == 0 {
            return match parse_header(input, cfg, deflate)? {
                Some(h) => Ok((Some(h), h.header_len)),
                None => {
                    // A header is at most 14 bytes, so an incomplete one fits.
                    let state = self.state.get_or_insert_with(Box::default);
                    state.header[..input.len()].copy_from_slice(input);
                    state.header_len = input.len() as u8;
                    Ok((None, input.len()))
                }
            };
        }
        let state = self
            .state
            .as_mut()
            .expect("saved header bytes live in the state");
        let take = (MAX_HEADER_LEN - saved).min(input.len());
        state.header[saved..saved + take].copy_from_slice(&input[..take]);
        match parse_header(&state.header[..saved + take], cfg, deflate)? {
            Some(h) => {
                state.header_len = 0;
                Ok((Some(h), h.header_len - saved))
            }
            None => {
                state.header_len = (saved + take) as u8;
                Ok((None, take))
            }
        }
    }

    /// Checks a header against the message in progress and the size limit; true when
    /// the frame is an oversized message to skip.
    fn check_sequence(&self, h: &Header, cfg: &DecoderConfig) -> Result<bool, WsError> {
        let message = self.state.as_ref().and_then(|s| s.message.as_ref());
        match h.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => Ok(false),
            OpCode::Continuation => match message {
                None => Err(WsError::Protocol("continuation frame without a message")),
                Some(m) if (m.data.len() as u64).saturating_add(h.len) > cfg.max_message as u64 => {
                    Err(WsError::TooBig)
                }
                Some(_) => Ok(false),
            },
            OpCode::Text | OpCode::Binary => {
                if message.is_some() {
                    Err(WsError::Protocol("new message inside a fragmented message"))
                } else if h.len > cfg.max_message as u64 {
                    let skippable = (cfg.max_message as u64).saturating_mul(MAX_SKIP_FACTOR);
                    if h.fin && cfg.skip_oversized && h.len <= skippable {
                        Ok(true)
                    } else {
                        Err(WsError::TooBig)
                    }
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Handles a frame whose whole (unmasked) payload is in `payload`: the event, and
    /// whether it is a compressed message.
    fn whole_frame<'a>(
        &mut self,
        h: &Header,
        payload: &'a [u8],
    ) -> Result<(Option<Event<'a>>, bool), WsError> {
        let event = match h.opcode {
            OpCode::Ping => Some(Event::Ping(Cow::Borrowed(payload))),
            OpCode::Pong => Some(Event::Pong(Cow::Borrowed(payload))),
            OpCode::Close => Some(Event::Close(close_event(payload)?)),
            OpCode::Text | OpCode::Binary if h.fin => {
                let kind = data_kind(h.opcode);
                if kind == DataKind::Text && !h.rsv1 && std::str::from_utf8(payload).is_err() {
                    return Err(WsError::InvalidUtf8);
                }
                let data = Cow::Borrowed(payload);
                return Ok((Some(Event::Message { kind, data }), h.rsv1));
            }
            OpCode::Text | OpCode::Binary => {
                let mut message = Message::new(h);
                message.append(payload)?;
                self.state.get_or_insert_with(Box::default).message = Some(message);
                None
            }
            OpCode::Continuation => {
                let state = self
                    .state
                    .as_mut()
                    .expect("check_sequence ensured a message is in progress");
                let message = state
                    .message
                    .as_mut()
                    .expect("check_sequence ensured a message is in progress");
                message.append(payload)?;
                if h.fin {
                    let (event, compressed) = finish_message(state)?;
                    return Ok((Some(event), compressed));
                }
                None
            }
        };
        Ok((event, false))
    }

    /// Feeds payload bytes to the frame in progress. Returns bytes consumed, the event
    /// completed, if any, and whether it is a compressed message.
    fn feed_payload(
        &mut self,
        input: &mut [u8],
    ) -> Result<(usize, Option<Event<'static>>, bool), WsError> {
        let state = self
            .state
            .as_mut()
            .expect("a frame in progress lives in the state");
        let frame = state
            .frame
            .as_mut()
            .expect("feed_payload is called with a frame in progress");
        let left = frame.header.len - frame.received;
        let take = left.min(input.len() as u64) as usize;
        if frame.skip {
            frame.received += take as u64;
            if frame.received < frame.header.len {
                return Ok((take, None, false));
            }
            let header = frame.header;
            state.frame = None;
            let event = Event::Skipped {
                kind: data_kind(header.opcode),
                len: header.len,
            };
            return Ok((take, Some(event), false));
        }
        let chunk = &mut input[..take];
        if let Some(mask) = frame.header.mask {
            apply_mask(chunk, mask, (frame.received % 4) as usize);
        }
        frame.received += take as u64;
        let header = frame.header;
        let done = frame.received == header.len;
        if header.opcode.is_control() {
            state.control.extend_from_slice(chunk);
        } else {
            state
                .message
                .as_mut()
                .expect("a data frame in progress has a message")
                .append(chunk)?;
        }
        if !done {
            return Ok((take, None, false));
        }
        state.frame = None;
        if !header.opcode.is_control() && header.fin {
            let (event, compressed) = finish_message(state)?;
            return Ok((take, Some(event), compressed));
        }
        let event = match header.opcode {
            OpCode::Ping => Some(Event::Ping(Cow::Owned(std::mem::take(&mut state.control)))),
            OpCode::Pong => Some(Event::Pong(Cow::Owned(std::mem::take(&mut state.control)))),
            OpCode::Close => {
                let payload = std::mem::take(&mut state.control);
                Some(Event::Close(
                    close_event(&payload)?.map(CloseFrame::into_owned),
                ))
            }
            _ => None,
        };
        Ok((take, event, false))
    }

    fn release_if_idle(&mut self) {
        if self.state.as_ref().is_some_and(|s| s.is_idle()) {
            self.state = None;
        }
    }
}

/// Ends the message in progress: checks that text ends on a character boundary (a
/// compressed one is checked by the caller, once inflated). Also says whether it is
/// compressed.
fn finish_message(state: &mut Partial) -> Result<(Event<'static>, bool), WsError> {
    let message = state
        .message
        .take()
        .expect("finish_message is called with a message in progress");
    if !message.compressed {
        message.utf8.finish().map_err(|_| WsError::InvalidUtf8)?;
    }
    let event = Event::Message {
        kind: message.kind,
        data: Cow::Owned(message.data),
    };
    Ok((event, message.compressed))
}

fn close_event(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, WsError> {
    match parse_close_payload(payload) {
        Ok(None) => Ok(None),
        Ok(Some((code, reason))) => Ok(Some(CloseFrame {
            code,
            reason: Cow::Borrowed(reason),
        })),
        Err(ClosePayloadError::Truncated) => Err(WsError::Protocol("close payload of one byte")),
        Err(ClosePayloadError::InvalidCode(_)) => Err(WsError::Protocol("invalid close code")),
        Err(ClosePayloadError::ReasonNotUtf8) => Err(WsError::InvalidUtf8),
    }
}

fn data_kind(op: OpCode) -> DataKind {
    if op == OpCode::Text {
        DataKind::Text
    } else {
        DataKind::Binary
    }
}

/// Parses a frame header from the start of `buf`: `None` when more bytes are needed.
/// Fails as soon as the bytes present break a rule. `deflate`: permessage-deflate was
/// negotiated (RSV1 allowed on the first frame of a data message).
fn parse_header(buf: &[u8], cfg: &DecoderConfig, deflate: bool) -> Result<Option<Header>, WsError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
    if rsv1 && opcode.is_control() {
        return Err(WsError::Protocol("compressed control frame"));
    }
    if rsv1 && opcode == OpCode::Continuation {
        return Err(WsError::Protocol("RSV1 on a continuation frame"));
    }
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    match (cfg.role, masked) {
        (Role::Server, false) => return Err(WsError::Protocol("client frame not masked")),
        (Role::Client, true) => return Err(WsError::Protocol("server frame masked")),
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && len7 as usize > MAX_CONTROL_PAYLOAD {
        return Err(WsError::Protocol("control frame payload over 125 bytes"));
    }
    let (len, mut at) = match len7 {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut eight = [0u8; 8];
            eight.copy_from_slice(b);
            let len = u64::from_be_bytes(eight);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("payload length with the high bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(b) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// Total frame size for a payload of `payload_len` bytes, masked or not.
pub fn frame_len(payload_len: usize, masked: bool) -> usize {
    let base = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 } + payload_len
}

/// Appends a frame header. `mask` is `Some` for client frames.
pub fn write_frame_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    let b0 = if fin { 0x80 } else { 0 } | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(b0);
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends an unmasked (server) frame.
pub fn encode_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8]) {
    out.reserve(frame_len(payload.len(), false));
    write_frame_header(out, fin, opcode, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Appends a masked (client) frame with the given key.
pub fn encode_masked_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
) {
    out.reserve(frame_len(payload.len(), true));
    write_frame_header(out, fin, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// Appends a close frame with a code and a reason (cut to 123 bytes on a character
/// boundary). `mask` is `Some` for a client.
pub fn encode_close(out: &mut Vec<u8>, code: CloseCode, reason: &str, mask: Option<[u8; 4]>) {
    let reason = truncate_reason(reason);
    let mut payload = [0u8; 2 + super::close::MAX_CLOSE_REASON];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    let payload = &payload[..2 + reason.len()];
    match mask {
        Some(m) => encode_masked_frame(out, true, OpCode::Close, payload, m),
        None => encode_frame(out, true, OpCode::Close, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: DecoderConfig = DecoderConfig {
        role: Role::Server,
        max_message: 1 << 20,
        skip_oversized: false,
    };
    const CLIENT: DecoderConfig = DecoderConfig {
        role: Role::Client,
        max_message: 1 << 20,
        skip_oversized: false,
    };

    /// Decodes all of `input` (in pieces of `step` bytes) and collects owned events.
    fn decode_all(
        input: &[u8],
        step: usize,
        cfg: &DecoderConfig,
    ) -> Result<Vec<Event<'static>>, WsError> {
        let mut d = Decoder::new();
        let mut events = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut piece = piece.to_vec();
            let mut pos = 0;
            while pos < piece.len() {
                let r = d.decode(&mut piece[pos..], cfg)?;
                assert!(r.consumed > 0, "decode must make progress");
                pos += r.consumed;
                if let Some(e) = r.event {
                    events.push(e.into_owned());
                }
            }
        }
        Ok(events)
    }

    fn text(s: &str) -> Event<'static> {
        Event::Message {
            kind: DataKind::Text,
            data: Cow::Owned(s.as_bytes().to_vec()),
        }
    }

    #[test]
    fn an_exported_decoder_finishes_the_frame_it_began() {
        // A masked, fragmented text: first fragment whole, second one cut in its payload,
        // with a multi-byte character split across the cut.
        let mut input = Vec::new();
        let mask = [1u8, 2, 3, 4];
        let masked = |payload: &[u8]| -> Vec<u8> {
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect()
        };
        let a = "h\u{e9}l".as_bytes();
        input.extend_from_slice(&[0x01, 0x80 | a.len() as u8]);
        input.extend_from_slice(&mask);
        input.extend_from_slice(&masked(a));
        let b = "l\u{f6}!".as_bytes();
        input.extend_from_slice(&[0x80, 0x80 | b.len() as u8]);
        input.extend_from_slice(&mask);
        input.extend_from_slice(&masked(b));
        for cut in 1..input.len() {
            let mut d = Decoder::new();
            let mut events = Vec::new();
            let mut first = input[..cut].to_vec();
            let mut pos = 0;
            while pos < first.len() {
                let r = d.decode(&mut first[pos..], &SERVER).unwrap();
                pos += r.consumed;
                if let Some(e) = r.event {
                    events.push(e.into_owned());
                }
            }
            let state = d.export();
            let mut d = Decoder::import(&state).expect("import");
            assert_eq!(d.export(), state);
            let mut rest = input[cut..].to_vec();
            let mut pos = 0;
            while pos < rest.len() {
                let r = d.decode(&mut rest[pos..], &SERVER).unwrap();
                pos += r.consumed;
                if let Some(e) = r.event {
                    events.push(e.into_owned());
                }
            }
            assert_eq!(events, vec![text("h\u{e9}ll\u{f6}!")], "cut at {cut}");
            assert!(d.is_idle());
        }
        assert!(Decoder::import(&[9, 9]).is_none());
        assert!(Decoder::import(&[]).unwrap().is_idle());
    }

    // RFC 6455 section 5.7 examples.
    const UNMASKED_HELLO: &[u8] = &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_HELLO: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    const FRAGMENTED_HEL_LO: &[u8] = &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    const UNMASKED_PING: &[u8] = &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_PONG: &[u8] = &[
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_examples() {
        for step in [1, 2, 3, 100] {
            assert_eq!(
                decode_all(UNMASKED_HELLO, step, &CLIENT).unwrap(),
                vec![text("Hello")]
            );
            assert_eq!(
                decode_all(MASKED_HELLO, step, &SERVER).unwrap(),
                vec![text("Hello")]
            );
            assert_eq!(
                decode_all(FRAGMENTED_HEL_LO, step, &CLIENT).unwrap(),
                vec![text("Hello")]
            );
            assert_eq!(
                decode_all(UNMASKED_PING, step, &CLIENT).unwrap(),
                vec![Event::Ping(Cow::Owned(b"Hello".to_vec()))]
            );
            assert_eq!(
                decode_all(MASKED_PONG, step, &SERVER).unwrap(),
                vec![Event::Pong(Cow::Owned(b"Hello".to_vec()))]
            );
        }
        // 256 bytes and 65536 bytes of binary data in a single unmasked frame.
        let mut f256 = vec![0x82, 0x7E, 0x01, 0x00];
        f256.extend(std::iter::repeat_n(0xAB, 256));
        let ev = decode_all(&f256, 1000, &CLIENT).unwrap();
        assert!(
            matches!(&ev[..], [Event::Message { kind: DataKind::Binary, data }] if data.len() == 256)
        );
        let mut f64k = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        f64k.extend(std::iter::repeat_n(0xCD, 65536));
        let ev = decode_all(&f64k, 7000, &CLIENT).unwrap();
        assert!(matches!(&ev[..], [Event::Message { data, .. }] if data.len() == 65536));
    }

    #[test]
    fn encoders_produce_rfc_examples() {
        let mut out = Vec::new();
        encode_frame(&mut out, true, OpCode::Text, b"Hello");
        assert_eq!(out, UNMASKED_HELLO);
        out.clear();
        encode_masked_frame(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(out, MASKED_HELLO);
        out.clear();
        encode_frame(&mut out, false, OpCode::Text, b"Hel");
        encode_frame(&mut out, true, OpCode::Continuation, b"lo");
        assert_eq!(out, FRAGMENTED_HEL_LO);
        for len in [0, 125, 126, 65535, 65536] {
            out.clear();
            encode_frame(&mut out, true, OpCode::Binary, &vec![1; len]);
            assert_eq!(out.len(), frame_len(len, false));
        }
    }

    #[test]
    fn every_strict_prefix_consumes_without_event() {
        for frame in [MASKED_HELLO, MASKED_PONG] {
            for n in 1..frame.len() {
                let mut d = Decoder::new();
                let mut prefix = frame[..n].to_vec();
                let r = d.decode(&mut prefix, &SERVER).unwrap();
                assert_eq!(r.consumed, n);
                assert!(r.event.is_none(), "prefix {n}");
                assert!(!d.is_idle());
            }
        }
    }

    #[test]
    fn whole_frames_are_borrowed_and_the_decoder_stays_empty() {
        let mut d = Decoder::new();
        let mut buf = MASKED_HELLO.to_vec();
        buf.extend_from_slice(MASKED_PONG);
        let r = d.decode(&mut buf, &SERVER).unwrap();
        assert_eq!(r.consumed, MASKED_HELLO.len());
        assert!(matches!(
            r.event,
            Some(Event::Message {
                data: Cow::Borrowed(b"Hello"),
                ..
            })
        ));
        assert!(d.is_idle());
        assert_eq!(d.buffered(), 0);
    }

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let opcode = OpCode::from_u8(op);
        match opcode {
            Some(op) => encode_masked_frame(&mut out, fin, op, payload, [1, 2, 3, 4]),
            None => {
                // Reserved opcode: build by hand.
                out.push(if fin { 0x80 } else { 0 } | op);
                out.push(0x80 | payload.len() as u8);
                out.extend_from_slice(&[1, 2, 3, 4]);
                let start = out.len();
                out.extend_from_slice(payload);
                apply_mask(&mut out[start..], [1, 2, 3, 4], 0);
            }
        }
        out
    }

    fn error_of(input: &[u8], cfg: &DecoderConfig) -> WsError {
        for step in [1, 3, input.len()] {
            let e = decode_all(input, step, cfg).unwrap_err();
            assert_eq!(
                e,
                decode_all(input, input.len(), cfg).unwrap_err(),
                "same error at any split"
            );
        }
        decode_all(input, input.len(), cfg).unwrap_err()
    }

    #[test]
    fn protocol_violations() {
        let unmasked = UNMASKED_HELLO;
        assert_eq!(
            error_of(unmasked, &SERVER).close_code(),
            CloseCode::PROTOCOL
        );
        assert_eq!(
            error_of(MASKED_HELLO, &CLIENT).close_code(),
            CloseCode::PROTOCOL
        );
        let mut rsv = MASKED_HELLO.to_vec();
        rsv[0] |= 0x40;
        assert_eq!(
            error_of(&rsv, &SERVER),
            WsError::Protocol("reserved bits set without an extension")
        );
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                error_of(&masked(true, op, b""), &SERVER),
                WsError::Protocol("reserved opcode")
            );
        }
        assert_eq!(
            error_of(&masked(false, 9, b"x"), &SERVER),
            WsError::Protocol("fragmented control frame")
        );
        let mut big_ping = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
        big_ping.extend(std::iter::repeat_n(0, 126));
        assert_eq!(
            error_of(&big_ping, &SERVER),
            WsError::Protocol("control frame payload over 125 bytes")
        );
        assert_eq!(
            error_of(&masked(true, 0, b"x"), &SERVER),
            WsError::Protocol("continuation frame without a message")
        );
        let mut two_starts = masked(false, 1, b"a");
        two_starts.extend(masked(true, 1, b"b"));
        assert_eq!(
            error_of(&two_starts, &SERVER),
            WsError::Protocol("new message inside a fragmented message")
        );
        let high_bit = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            error_of(&high_bit, &SERVER),
            WsError::Protocol("payload length with the high bit set")
        );
    }

    #[test]
    fn control_frames_between_fragments() {
        let mut input = masked(false, 1, b"Hel");
        input.extend(masked(true, 9, b"p"));
        input.extend(masked(true, 0, b"lo"));
        for step in [1, 2, 5, input.len()] {
            let ev = decode_all(&input, step, &SERVER).unwrap();
            assert_eq!(
                ev,
                vec![Event::Ping(Cow::Owned(b"p".to_vec())), text("Hello")]
            );
        }
    }

    #[test]
    fn message_size_limit() {
        let cfg = DecoderConfig {
            role: Role::Server,
            max_message: 10,
            skip_oversized: false,
        };
        assert!(decode_all(&masked(true, 2, &[0; 10]), 4, &cfg).is_ok());
        assert_eq!(error_of(&masked(true, 2, &[0; 11]), &cfg), WsError::TooBig);
        let mut frags = masked(false, 2, &[0; 6]);
        frags.extend(masked(true, 0, &[0; 5]));
        assert_eq!(error_of(&frags, &cfg), WsError::TooBig);
        assert_eq!(WsError::TooBig.close_code(), CloseCode::TOO_BIG);
    }

    #[test]
    fn an_oversized_single_frame_is_skipped_when_asked() {
        let cfg = DecoderConfig {
            role: Role::Server,
            max_message: 10,
            skip_oversized: true,
        };
        let mut input = masked(true, 1, &[b'a'; 150]);
        input.extend(masked(true, 1, b"next"));
        for step in [1, 7, 100, input.len()] {
            let mut d = Decoder::new();
            let events = {
                let mut events = Vec::new();
                for piece in input.chunks(step) {
                    let mut piece = piece.to_vec();
                    let mut pos = 0;
                    while pos < piece.len() {
                        let r = d.decode(&mut piece[pos..], &cfg).unwrap();
                        pos += r.consumed;
                        events.extend(r.event.map(Event::into_owned));
                    }
                }
                events
            };
            assert_eq!(
                events,
                vec![
                    Event::Skipped {
                        kind: DataKind::Text,
                        len: 150
                    },
                    text("next")
                ],
                "step {step}"
            );
            assert!(d.is_idle() && d.buffered() == 0);
        }
        // Fragmented: still 1009.
        let mut frags = masked(false, 2, &[0; 6]);
        frags.extend(masked(true, 0, &[0; 5]));
        assert_eq!(error_of(&frags, &cfg), WsError::TooBig);
        let frag = masked(false, 2, &[0; 11]);
        assert_eq!(error_of(&frag, &cfg), WsError::TooBig);
        // Past the factor: not read through.
        let huge = masked(true, 1, &[b'a'; 161]);
        assert_eq!(error_of(&huge, &cfg), WsError::TooBig);
    }

    #[test]
    fn utf8_fails_fast_inside_a_frame() {
        // A text frame whose payload is invalid from its 3rd byte: the error must come as
        // soon as that byte arrives, before the rest of the frame.
        let payload = b"ok\xff and a long tail of text that has not arrived yet";
        let frame = masked(true, 1, payload);
        let header_len = frame.len() - payload.len();
        let mut d = Decoder::new();
        let mut first = frame[..header_len + 3].to_vec();
        let mut pos = 0;
        let mut result = Ok(());
        while pos < first.len() {
            match d.decode(&mut first[pos..], &SERVER) {
                Ok(r) => pos += r.consumed,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        assert_eq!(result, Err(WsError::InvalidUtf8));
    }

    #[test]
    fn utf8_across_fragments() {
        let euro = "€".as_bytes();
        let mut input = masked(false, 1, &euro[..1]);
        input.extend(masked(false, 0, &euro[1..2]));
        input.extend(masked(true, 0, &euro[2..]));
        assert_eq!(decode_all(&input, 1, &SERVER).unwrap(), vec![text("€")]);
        let mut truncated = masked(false, 1, &euro[..1]);
        truncated.extend(masked(true, 0, &euro[1..2]));
        assert_eq!(error_of(&truncated, &SERVER), WsError::InvalidUtf8);
        assert_eq!(
            error_of(&masked(true, 1, b"\xc0\xaf"), &SERVER),
            WsError::InvalidUtf8
        );
        // Binary messages are not checked.
        assert!(decode_all(&masked(true, 2, b"\xff"), 1, &SERVER).is_ok());
    }

    #[test]
    fn close_frames() {
        let ok = masked(true, 8, b"\x03\xe8bye");
        assert_eq!(
            decode_all(&ok, 2, &SERVER).unwrap(),
            vec![Event::Close(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: Cow::Owned("bye".into())
            }))]
        );
        assert_eq!(
            decode_all(&masked(true, 8, b""), 1, &SERVER).unwrap(),
            vec![Event::Close(None)]
        );
        assert_eq!(
            error_of(&masked(true, 8, b"\x03"), &SERVER).close_code(),
            CloseCode::PROTOCOL
        );
        assert_eq!(
            error_of(&masked(true, 8, b"\x03\xed"), &SERVER).close_code(),
            CloseCode::PROTOCOL
        );
        assert_eq!(
            error_of(&masked(true, 8, b"\x03\xe8\xff"), &SERVER),
            WsError::InvalidUtf8
        );
    }

    #[test]
    fn close_encoder_truncates_reason() {
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::POLICY, &"x".repeat(300), None);
        assert_eq!(out.len(), 2 + 125);
        let ev = decode_all(&out, out.len(), &CLIENT).unwrap();
        assert!(matches!(&ev[..], [Event::Close(Some(c))] if c.code == CloseCode::POLICY));
        out.clear();
        encode_close(&mut out, CloseCode::GOING_AWAY, "bye", Some([9, 8, 7, 6]));
        let ev = decode_all(&out, 1, &SERVER).unwrap();
        assert!(
            matches!(&ev[..], [Event::Close(Some(c))] if c.code == CloseCode::GOING_AWAY && c.reason == "bye")
        );
    }

    /// Decodes all of `input` with permessage-deflate on; events with their compressed
    /// flag.
    fn decode_deflate(
        input: &[u8],
        step: usize,
        cfg: &DecoderConfig,
    ) -> Result<Vec<(Event<'static>, bool)>, WsError> {
        let mut d = Decoder::new();
        let mut events = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut piece = piece.to_vec();
            let mut pos = 0;
            while pos < piece.len() {
                let r = d.decode_ext(&mut piece[pos..], cfg, true)?;
                pos += r.consumed;
                if let Some(e) = r.event {
                    events.push((e.into_owned(), r.compressed));
                }
            }
        }
        assert!(d.is_idle());
        Ok(events)
    }

    fn with_rsv(mut frame: Vec<u8>, bits: u8) -> Vec<u8> {
        frame[0] |= bits;
        frame
    }

    #[test]
    fn rsv1_marks_a_compressed_message_when_deflate_is_on() {
        // RFC 7692 7.2.3.1: "Hello" compressed, in one frame and in two.
        let z = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let one = with_rsv(masked(true, 1, &z), 0x40);
        let mut two = with_rsv(masked(false, 1, &z[..3]), 0x40);
        two.extend(masked(true, 0, &z[3..]));
        for input in [&one, &two] {
            for step in [1, 2, 5, input.len()] {
                let ev = decode_deflate(input, step, &SERVER).unwrap();
                assert_eq!(
                    ev,
                    vec![(
                        Event::Message {
                            kind: DataKind::Text,
                            data: Cow::Owned(z.to_vec())
                        },
                        true
                    )],
                    "step {step}: compressed bytes are not UTF-8-checked"
                );
            }
        }
        // Uncompressed messages still are, and are not marked.
        let ev = decode_deflate(MASKED_HELLO, 3, &SERVER).unwrap();
        assert_eq!(ev, vec![(text("Hello"), false)]);
        assert_eq!(
            decode_deflate(&masked(true, 1, b"\xff"), 1, &SERVER),
            Err(WsError::InvalidUtf8)
        );
        // A control frame between the fragments of a compressed message.
        let mut mixed = with_rsv(masked(false, 2, &z[..3]), 0x40);
        mixed.extend(masked(true, 9, b"p"));
        mixed.extend(masked(true, 0, &z[3..]));
        let ev = decode_deflate(&mixed, 4, &SERVER).unwrap();
        assert_eq!(ev[0], (Event::Ping(Cow::Owned(b"p".to_vec())), false));
        assert!(ev[1].1);
        // Without the extension RSV1 stays an error, byte for byte as before.
        assert_eq!(
            error_of(&one, &SERVER),
            WsError::Protocol("reserved bits set without an extension")
        );
    }

    #[test]
    fn rsv1_where_it_cannot_be_is_a_protocol_error() {
        let deflate_error = |input: &[u8]| {
            for step in [1, 3, input.len()] {
                let e = decode_deflate(input, step, &SERVER).unwrap_err();
                assert_eq!(e, decode_deflate(input, input.len(), &SERVER).unwrap_err());
            }
            decode_deflate(input, input.len(), &SERVER).unwrap_err()
        };
        for op in [8, 9, 10] {
            let payload: &[u8] = if op == 8 { b"\x03\xe8" } else { b"x" };
            assert_eq!(
                deflate_error(&with_rsv(masked(true, op, payload), 0x40)),
                WsError::Protocol("compressed control frame")
            );
        }
        let mut cont = masked(false, 1, b"a");
        cont.extend(with_rsv(masked(true, 0, b"b"), 0x40));
        assert_eq!(
            deflate_error(&cont),
            WsError::Protocol("RSV1 on a continuation frame")
        );
        for bits in [0x20, 0x10, 0x60] {
            assert_eq!(
                deflate_error(&with_rsv(masked(true, 1, b"a"), bits)),
                WsError::Protocol("reserved bits set without an extension")
            );
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut input = masked(true, 1, b"one");
        input.extend(masked(true, 2, b"two"));
        input.extend(masked(true, 9, b""));
        let ev = decode_all(&input, input.len(), &SERVER).unwrap();
        assert_eq!(ev.len(), 3);
    }
}
