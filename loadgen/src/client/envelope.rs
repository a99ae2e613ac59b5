//! The message format: with [`Format::Pushedge`] each message is the JSON envelope
//! (`{"type":"data","channel":C,"seq":N,"content":S}`, or `gap`, `close`, `error`, ...)
//! and the content is `S`; with [`Format::Raw`] (nchan) the message itself is the content
//! and there is no seq.

use serde::Deserialize;
use std::borrow::Cow;

use super::{Event, Failure, Format};

/// The fields of the envelope loadgen looks at.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) ty: Cow<'a, str>,
    pub(super) seq: Option<u64>,
    #[serde(borrow)]
    pub(super) content: Option<Cow<'a, str>>,
    pub(super) from: Option<u64>,
    pub(super) to: Option<u64>,
    pub(super) code: Option<u16>,
}

/// One message, by format.
pub(super) fn deliver(
    format: Format,
    msg: &[u8],
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    match format {
        Format::Raw => {
            sink(Event::Data {
                seq: None,
                content: msg,
            });
            Ok(())
        }
        Format::Pushedge => match serde_json::from_slice::<Envelope<'_>>(msg) {
            Ok(env) => envelope(&env, sink),
            Err(_) => {
                sink(Event::Foreign);
                Ok(())
            }
        },
    }
}

/// One envelope: the event it is, or the failure it means (`close`, `error`).
pub(super) fn envelope(env: &Envelope<'_>, sink: &mut dyn FnMut(Event<'_>)) -> Result<(), Failure> {
    match env.ty.as_ref() {
        "data" => match &env.content {
            Some(c) => sink(Event::Data {
                seq: env.seq,
                content: c.as_bytes(),
            }),
            None => sink(Event::Foreign),
        },
        "gap" => sink(Event::Gap {
            from: env.from.unwrap_or(0),
            to: env.to.unwrap_or(0),
        }),
        "close" => return Err(Failure::ChannelClosed),
        "error" => return Err(Failure::ServerError(env.code.unwrap_or(0))),
        // noop, next_seq, pong: nothing to count.
        _ => {}
    }
    Ok(())
}
