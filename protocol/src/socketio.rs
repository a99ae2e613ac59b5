//! Socket.IO protocol version 5: packets, event data and binary attachments.
//!
//! A Socket.IO packet is the text of one Engine.IO message packet (see
//! [`crate::engineio`]), so `42["hello",1]` on the wire is the Engine.IO type `4` and the
//! Socket.IO packet `2["hello",1]`. Its form is
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]
//! ```
//!
//! | type          | digit | data                                                    |
//! |---------------|-------|---------------------------------------------------------|
//! | CONNECT       | `0`   | none, or an object (the client's auth, the server's sid) |
//! | DISCONNECT    | `1`   | none                                                    |
//! | EVENT         | `2`   | `["name", arg, ...]`                                    |
//! | ACK           | `3`   | `[arg, ...]`, possibly empty                            |
//! | CONNECT_ERROR | `4`   | `{"message": ...}` (a plain string from older servers)  |
//! | BINARY_EVENT  | `5`   | as EVENT, with placeholders for the attachments         |
//! | BINARY_ACK    | `6`   | as ACK, with placeholders for the attachments           |
//!
//! - The attachment count is written only for the binary types: decimal digits then `-`
//!   (`51-["baz",{"_placeholder":true,"num":0}]`); the attachments follow as that many
//!   binary Engine.IO messages, and each `{"_placeholder":true,"num":N}` in the data
//!   stands for attachment `N`.
//! - The namespace starts with `/` and runs to the next `,` or to the end of the text
//!   (`1/admin,`, or `40/admin` as some clients send it); it is left out for the main
//!   namespace `/`.
//! - The ack id is decimal digits (`212["foo"]`: EVENT, id 12); the answer is an ACK with
//!   the same id (`3/admin,13["bar"]`).
//! - The data is JSON; [`decode`] validates it and checks its shape for the type, and
//!   keeps its text as it came.
//!
//! Inside the server, binary data is carried inline as `{"$binary":"<base64>"}` objects:
//! [`inline_attachments`] turns placeholders into those, [`extract_binaries`] turns them
//! back into placeholders and attachments.
//!
//! JSON nesting is bounded by [`MAX_JSON_DEPTH`], the depth serde_json's parser accepts,
//! so every packet [`decode`] accepts can also be parsed into a tree.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::engineio::push_base64;
use crate::http::push_decimal;
use crate::message::{write_json_string, JsonStyle};

/// Event names a Socket.IO client keeps for itself: a server does not emit them.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Most binary attachments a packet may announce; more is [`SioError::BadAttachments`].
pub const MAX_ATTACHMENTS: u32 = 64;
/// The largest ack id (the largest integer a JavaScript number holds exactly).
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;
/// Longest namespace, `/` included.
pub const MAX_NAMESPACE_LEN: usize = 256;
/// Deepest nesting of arrays and objects in packet data (serde_json's default recursion
/// limit lets exactly this many levels through).
pub const MAX_JSON_DEPTH: usize = 127;
/// The main namespace.
pub const MAIN_NAMESPACE: &str = "/";

/// The key of an inline binary object `{"$binary":"<base64>"}`.
const BINARY_KEY: &str = "$binary";
/// The keys of a placeholder object `{"_placeholder":true,"num":N}`.
const PLACEHOLDER_KEY: &str = "_placeholder";
const PLACEHOLDER_NUM_KEY: &str = "num";

/// The type of a Socket.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    /// `0`: connect to a namespace (client), or the grant with the socket's sid (server).
    Connect = 0,
    /// `1`: leave a namespace.
    Disconnect = 1,
    /// `2`: an event, `["name", args...]`.
    Event = 2,
    /// `3`: the answer to an event with an ack id.
    Ack = 3,
    /// `4`: a refused connect (server to client).
    ConnectError = 4,
    /// `5`: an event with binary attachments.
    BinaryEvent = 5,
    /// `6`: an ack with binary attachments.
    BinaryAck = 6,
}

impl SioType {
    /// The type of a type digit (`b'0'..=b'6'`).
    pub fn from_byte(b: u8) -> Option<SioType> {
        Some(match b {
            b'0' => SioType::Connect,
            b'1' => SioType::Disconnect,
            b'2' => SioType::Event,
            b'3' => SioType::Ack,
            b'4' => SioType::ConnectError,
            b'5' => SioType::BinaryEvent,
            b'6' => SioType::BinaryAck,
            _ => return None,
        })
    }

    /// The type digit (`b'0'..=b'6'`).
    pub fn as_byte(self) -> u8 {
        b'0' + self as u8
    }

    /// True for the types that carry an attachment count ([`SioType::BinaryEvent`],
    /// [`SioType::BinaryAck`]).
    pub fn is_binary(self) -> bool {
        matches!(self, SioType::BinaryEvent | SioType::BinaryAck)
    }
}

/// One decoded packet. It borrows from the text it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// The type.
    pub kind: SioType,
    /// The namespace, `/` when absent.
    pub nsp: &'a str,
    /// The ack id.
    pub id: Option<u64>,
    /// How many binary attachments follow (binary types only, else 0).
    pub attachments: u32,
    /// The JSON text after the header, as it came (validated, shape checked).
    pub data: Option<&'a str>,
}

impl SioPacket<'_> {
    /// Appends the packet (see [`write()`]).
    pub fn write(&self, out: &mut Vec<u8>) {
        write(
            out,
            self.kind,
            self.nsp,
            self.id,
            self.attachments,
            self.data.map(str::as_bytes),
        );
    }
}

/// Why a packet or its data cannot be used. The receiver of such a packet closes the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioError {
    /// An empty packet.
    Empty,
    /// The first byte is not a type digit `0`-`6`.
    BadType,
    /// A binary type without `<digits>-`, or more than [`MAX_ATTACHMENTS`] attachments.
    BadAttachments,
    /// A namespace longer than [`MAX_NAMESPACE_LEN`] or holding a control character.
    BadNamespace,
    /// An ack id above [`MAX_ACK_ID`].
    BadId,
    /// The data is not JSON (or is nested deeper than [`MAX_JSON_DEPTH`]).
    BadJson,
    /// The data has the wrong shape for the packet type (an EVENT that is not an array
    /// starting with a string, data on a DISCONNECT, ...).
    BadPayload,
    /// An object with `"_placeholder": true` that is not exactly
    /// `{"_placeholder":true,"num":N}`, or (in [`extract_binaries`]) data that already
    /// holds a placeholder next to binaries to extract.
    BadPlaceholder,
    /// A placeholder's `num` names no attachment.
    MissingAttachment,
}

impl SioError {
    /// A short reason, for a log line or a close reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SioError::Empty => "empty Socket.IO packet",
            SioError::BadType => "unknown Socket.IO packet type",
            SioError::BadAttachments => "missing, malformed or too large attachment count",
            SioError::BadNamespace => "invalid Socket.IO namespace",
            SioError::BadId => "invalid ack id",
            SioError::BadJson => "packet data is not valid JSON",
            SioError::BadPayload => "packet data has the wrong shape for its type",
            SioError::BadPlaceholder => "malformed attachment placeholder",
            SioError::MissingAttachment => "placeholder refers to a missing attachment",
        }
    }
}

impl fmt::Display for SioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for SioError {}

/// Decodes one Socket.IO packet (the text of an Engine.IO message packet):
/// `<type>[<attachments>-][<nsp>,][<id>][<json>]`.
///
/// The attachment count is read only for the binary types, where it is required (0 to
/// [`MAX_ATTACHMENTS`]). The namespace starts with `/` and ends at `,` or at the end of
/// the text. The ack id is at most [`MAX_ACK_ID`]. The data must be JSON of the shape the
/// type calls for: CONNECT none or an object; DISCONNECT none; EVENT and BINARY_EVENT a
/// non-empty array whose first element is a string; ACK and BINARY_ACK an array;
/// CONNECT_ERROR an object or a string.
pub fn decode(s: &str) -> Result<SioPacket<'_>, SioError> {
    let bytes = s.as_bytes();
    let first = *bytes.first().ok_or(SioError::Empty)?;
    let kind = SioType::from_byte(first).ok_or(SioError::BadType)?;
    let mut i = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let (n, len) = leading_number(&bytes[i..], u64::from(MAX_ATTACHMENTS))
            .ok()
            .flatten()
            .ok_or(SioError::BadAttachments)?;
        if bytes.get(i + len) != Some(&b'-') {
            return Err(SioError::BadAttachments);
        }
        // n <= MAX_ATTACHMENTS, which is a u32.
        attachments = u32::try_from(n).map_err(|_| SioError::BadAttachments)?;
        i += len + 1;
    }

    let mut nsp = MAIN_NAMESPACE;
    if bytes.get(i) == Some(&b'/') {
        let rest = &s[i..];
        match rest.find(',') {
            Some(end) => {
                nsp = &rest[..end];
                i += end + 1;
            }
            None => {
                nsp = rest;
                i = s.len();
            }
        }
        if nsp.len() > MAX_NAMESPACE_LEN || nsp.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(SioError::BadNamespace);
        }
    }

    let mut id = None;
    if let Some((n, len)) = leading_number(&bytes[i..], MAX_ACK_ID).map_err(|()| SioError::BadId)? {
        id = Some(n);
        i += len;
    }

    // Every byte consumed so far is ASCII or ends at a ',' so `i` is a char boundary.
    let rest = &s[i..];
    let data = if rest.is_empty() {
        None
    } else {
        validate_json(rest)?;
        Some(rest)
    };
    check_shape(kind, data)?;

    Ok(SioPacket {
        kind,
        nsp,
        id,
        attachments,
        data,
    })
}

/// The number in the leading ASCII digits of `b` with how many digits there were;
/// `Ok(None)` without digits, `Err` when the number is above `max`.
fn leading_number(b: &[u8], max: u64) -> Result<Option<(u64, usize)>, ()> {
    let len = b.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return Ok(None);
    }
    let mut n: u64 = 0;
    for &d in &b[..len] {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .filter(|&n| n <= max)
            .ok_or(())?;
    }
    Ok(Some((n, len)))
}

/// Checks that `data` is one JSON value nested at most [`MAX_JSON_DEPTH`] deep.
fn validate_json(data: &str) -> Result<(), SioError> {
    // serde_json validates a raw value without recursion; the depth is counted here.
    serde_json::from_str::<&RawValue>(data).map_err(|_| SioError::BadJson)?;
    if json_depth(data) > MAX_JSON_DEPTH {
        return Err(SioError::BadJson);
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in valid JSON text.
fn json_depth(json: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The first byte of valid JSON text that is not whitespace, and its index.
fn first_significant(json: &str, from: usize) -> Option<(usize, u8)> {
    json.as_bytes()
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, b)| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|(i, &b)| (i, b))
}

/// True for valid JSON text that is an array whose first element is a string.
fn is_event_array(json: &str) -> bool {
    match first_significant(json, 0) {
        Some((i, b'[')) => matches!(first_significant(json, i + 1), Some((_, b'"'))),
        _ => false,
    }
}

/// Checks validated data against the shape its packet type calls for.
fn check_shape(kind: SioType, data: Option<&str>) -> Result<(), SioError> {
    let first = data.and_then(|d| first_significant(d, 0)).map(|(_, b)| b);
    let ok = match kind {
        SioType::Connect => matches!(first, None | Some(b'{')),
        SioType::Disconnect => data.is_none(),
        SioType::Event | SioType::BinaryEvent => data.is_some_and(is_event_array),
        SioType::Ack | SioType::BinaryAck => first == Some(b'['),
        SioType::ConnectError => matches!(first, Some(b'{' | b'"')),
    };
    if ok {
        Ok(())
    } else {
        Err(SioError::BadPayload)
    }
}

/// Appends a packet. The attachment count is written for the binary types only; the
/// namespace only when it is not `/` (nor empty), followed by `,` (it must start with `/`
/// and hold no `,`); `data` is JSON appended as it is.
pub fn write(
    out: &mut Vec<u8>,
    kind: SioType,
    nsp: &str,
    id: Option<u64>,
    attachments: u32,
    data: Option<&[u8]>,
) {
    out.push(kind.as_byte());
    if kind.is_binary() {
        push_decimal(out, u64::from(attachments));
        out.push(b'-');
    }
    if !nsp.is_empty() && nsp != MAIN_NAMESPACE {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        push_decimal(out, id);
    }
    if let Some(data) = data {
        out.extend_from_slice(data);
    }
}

/// The elements of JSON array text, each as its own text.
fn array_items(data: &str) -> Result<Vec<&RawValue>, SioError> {
    validate_json(data)?;
    if !matches!(first_significant(data, 0), Some((_, b'['))) {
        return Err(SioError::BadPayload);
    }
    serde_json::from_str::<Vec<&RawValue>>(data).map_err(|_| SioError::BadJson)
}

/// The event name and the JSON text of each argument of EVENT data (`["name", arg1,
/// ...]`). Data that is not an array starting with a string is [`SioError::BadPayload`].
pub fn split_event(data: &str) -> Result<(String, Vec<String>), SioError> {
    let items = array_items(data)?;
    let (name, args) = items.split_first().ok_or(SioError::BadPayload)?;
    if !name.get().starts_with('"') {
        return Err(SioError::BadPayload);
    }
    // A string the validator let through may still hold a lone surrogate escape.
    let name = serde_json::from_str::<String>(name.get()).map_err(|_| SioError::BadJson)?;
    Ok((name, args.iter().map(|a| a.get().to_owned()).collect()))
}

/// The arguments of ACK data (`[arg1, ...]`), each as its JSON text.
pub fn split_args(data: &str) -> Result<Vec<String>, SioError> {
    Ok(array_items(data)?
        .into_iter()
        .map(|a| a.get().to_owned())
        .collect())
}

/// Appends EVENT data `["name",arg1,...]`: the name JSON-escaped, each argument JSON text
/// appended as it is.
pub fn write_event_data(out: &mut Vec<u8>, name: &str, args: &[&str]) {
    out.push(b'[');
    write_json_string(out, name, JsonStyle::Plain);
    for arg in args {
        out.push(b',');
        out.extend_from_slice(arg.as_bytes());
    }
    out.push(b']');
}

/// Puts binary attachments inline: every placeholder `{"_placeholder":true,"num":N}` in
/// the JSON text `data` becomes `{"$binary":"<standard base64 with padding>"}` of
/// `attachments[N]`. An object with `"_placeholder": true` that is not exactly such a
/// placeholder is [`SioError::BadPlaceholder`], an `N` out of range
/// [`SioError::MissingAttachment`]. The output is compact JSON, object members in their
/// order.
pub fn inline_attachments(data: &str, attachments: &[&[u8]]) -> Result<String, SioError> {
    let mut tree = parse_tree(data)?;
    inline_walk(&mut tree, attachments)?;
    Ok(tree_to_string(&tree))
}

/// The reverse of [`inline_attachments`]: every object that is exactly
/// `{"$binary":"<valid standard base64>"}` becomes a placeholder, numbered in document
/// order. Returns the data with placeholders (compact JSON) and the attachments; with
/// none found, the data re-serialized compactly and no attachments. More than
/// [`MAX_ATTACHMENTS`] is [`SioError::BadAttachments`]; data that already holds a
/// `"_placeholder": true` object next to binaries to extract is
/// [`SioError::BadPlaceholder`] (a receiver could not tell it from the new placeholders).
pub fn extract_binaries(data: &str) -> Result<(String, Vec<Vec<u8>>), SioError> {
    let mut tree = parse_tree(data)?;
    let mut found = Extracted::default();
    extract_walk(&mut tree, &mut found)?;
    if !found.attachments.is_empty() && found.saw_placeholder {
        return Err(SioError::BadPlaceholder);
    }
    Ok((tree_to_string(&tree), found.attachments))
}

/// A JSON value whose objects keep their members in order (duplicates included).
#[derive(Debug)]
enum Json<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Parses JSON text into a tree; serde_json's recursion limit bounds the depth.
fn parse_tree(data: &str) -> Result<Json<'_>, SioError> {
    serde_json::from_str::<Json<'_>>(data).map_err(|_| SioError::BadJson)
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json<'de>>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            members.push((key.0, map.next_value::<Json<'de>>()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor)? {
            Json::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("object key is not a string")),
        }
    }
}

/// Writes a tree as compact JSON (strings escaped as [`write_json_string`] does, numbers
/// as serde_json writes them).
fn write_tree(out: &mut Vec<u8>, v: &Json<'_>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Json::Str(s) => write_json_string(out, s, JsonStyle::Plain),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_tree(out, item);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(out, key, JsonStyle::Plain);
                out.push(b':');
                write_tree(out, value);
            }
            out.push(b'}');
        }
    }
}

fn tree_to_string(v: &Json<'_>) -> String {
    let mut out = Vec::new();
    write_tree(&mut out, v);
    // Only valid UTF-8 is ever written: copies of strs and ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// True for an object with `"_placeholder": true` among its members.
fn has_placeholder_key(members: &[(Cow<'_, str>, Json<'_>)]) -> bool {
    members
        .iter()
        .any(|(k, v)| k == PLACEHOLDER_KEY && matches!(v, Json::Bool(true)))
}

/// The `num` of an object that is exactly a placeholder.
fn placeholder_num(members: &[(Cow<'_, str>, Json<'_>)]) -> Option<usize> {
    let [a, b] = members else {
        return None;
    };
    let num = match (a, b) {
        ((k, Json::Bool(true)), (n, num)) | ((n, num), (k, Json::Bool(true)))
            if k == PLACEHOLDER_KEY && n == PLACEHOLDER_NUM_KEY =>
        {
            num
        }
        _ => return None,
    };
    match num {
        Json::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    }
}

fn inline_walk(v: &mut Json<'_>, attachments: &[&[u8]]) -> Result<(), SioError> {
    match v {
        Json::Array(items) => {
            for item in items {
                inline_walk(item, attachments)?;
            }
        }
        Json::Object(members) if has_placeholder_key(members) => {
            let num = placeholder_num(members).ok_or(SioError::BadPlaceholder)?;
            let bytes = attachments.get(num).ok_or(SioError::MissingAttachment)?;
            let mut b64 = Vec::new();
            push_base64(&mut b64, bytes);
            let b64 = String::from_utf8(b64).unwrap_or_default();
            *v = Json::Object(vec![(
                Cow::Borrowed(BINARY_KEY),
                Json::Str(Cow::Owned(b64)),
            )]);
        }
        Json::Object(members) => {
            for (_, value) in members {
                inline_walk(value, attachments)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[derive(Default)]
struct Extracted {
    attachments: Vec<Vec<u8>>,
    saw_placeholder: bool,
}

/// The bytes of an object that is exactly `{"$binary":"<valid base64>"}`.
fn binary_object(members: &[(Cow<'_, str>, Json<'_>)]) -> Option<Vec<u8>> {
    match members {
        [(key, Json::Str(b64))] if key == BINARY_KEY => STANDARD.decode(b64.as_bytes()).ok(),
        _ => None,
    }
}

fn extract_walk(v: &mut Json<'_>, found: &mut Extracted) -> Result<(), SioError> {
    match v {
        Json::Array(items) => {
            for item in items {
                extract_walk(item, found)?;
            }
        }
        Json::Object(members) => {
            if let Some(bytes) = binary_object(members) {
                let num = found.attachments.len();
                if num >= MAX_ATTACHMENTS as usize {
                    return Err(SioError::BadAttachments);
                }
                found.attachments.push(bytes);
                *v = Json::Object(vec![
                    (Cow::Borrowed(PLACEHOLDER_KEY), Json::Bool(true)),
                    (
                        Cow::Borrowed(PLACEHOLDER_NUM_KEY),
                        Json::Number((num as u64).into()),
                    ),
                ]);
                return Ok(());
            }
            if has_placeholder_key(members) {
                found.saw_placeholder = true;
            }
            for (_, value) in members {
                extract_walk(value, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet<'a>(
        kind: SioType,
        nsp: &'a str,
        id: Option<u64>,
        attachments: u32,
        data: Option<&'a str>,
    ) -> SioPacket<'a> {
        SioPacket {
            kind,
            nsp,
            id,
            attachments,
            data,
        }
    }

    fn encode(p: &SioPacket<'_>) -> String {
        let mut out = Vec::new();
        p.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Decodes `text`, expects `want`, and checks that writing it gives `canonical`.
    fn check(text: &str, want: SioPacket<'_>, canonical: &str) {
        let got = decode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(got, want, "{text:?}");
        assert_eq!(encode(&got), canonical, "{text:?}");
    }

    #[test]
    fn type_digits() {
        let all = [
            SioType::Connect,
            SioType::Disconnect,
            SioType::Event,
            SioType::Ack,
            SioType::ConnectError,
            SioType::BinaryEvent,
            SioType::BinaryAck,
        ];
        for (i, t) in all.iter().enumerate() {
            assert_eq!(t.as_byte(), b'0' + i as u8);
            assert_eq!(SioType::from_byte(b'0' + i as u8), Some(*t));
            assert_eq!(t.is_binary(), i >= 5);
        }
        assert_eq!(SioType::from_byte(b'7'), None);
    }

    #[test]
    fn protocol_examples() {
        use SioType::*;
        check("0", packet(Connect, "/", None, 0, None), "0");
        check(
            "0/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}",
            packet(
                Connect,
                "/admin",
                None,
                0,
                Some("{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}"),
            ),
            "0/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}",
        );
        check(
            "4{\"message\":\"Not authorized\"}",
            packet(
                ConnectError,
                "/",
                None,
                0,
                Some("{\"message\":\"Not authorized\"}"),
            ),
            "4{\"message\":\"Not authorized\"}",
        );
        check(
            "4/random,{\"message\":\"Invalid namespace\"}",
            packet(
                ConnectError,
                "/random",
                None,
                0,
                Some("{\"message\":\"Invalid namespace\"}"),
            ),
            "4/random,{\"message\":\"Invalid namespace\"}",
        );
        check(
            "4\"Not authorized\"",
            packet(ConnectError, "/", None, 0, Some("\"Not authorized\"")),
            "4\"Not authorized\"",
        );
        check(
            "2[\"hello\",1]",
            packet(Event, "/", None, 0, Some("[\"hello\",1]")),
            "2[\"hello\",1]",
        );
        check(
            "2[\"foo\"]",
            packet(Event, "/", None, 0, Some("[\"foo\"]")),
            "2[\"foo\"]",
        );
        check(
            "2/admin,[\"bar\"]",
            packet(Event, "/admin", None, 0, Some("[\"bar\"]")),
            "2/admin,[\"bar\"]",
        );
        check(
            "2/admin,456[\"project:delete\",123]",
            packet(
                Event,
                "/admin",
                Some(456),
                0,
                Some("[\"project:delete\",123]"),
            ),
            "2/admin,456[\"project:delete\",123]",
        );
        check(
            "212[\"foo\"]",
            packet(Event, "/", Some(12), 0, Some("[\"foo\"]")),
            "212[\"foo\"]",
        );
        check(
            "3/admin,456[]",
            packet(Ack, "/admin", Some(456), 0, Some("[]")),
            "3/admin,456[]",
        );
        check(
            "3/admin,13[\"bar\"]",
            packet(Ack, "/admin", Some(13), 0, Some("[\"bar\"]")),
            "3/admin,13[\"bar\"]",
        );
        check(
            "51-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
            packet(
                BinaryEvent,
                "/",
                None,
                1,
                Some("[\"hello\",{\"_placeholder\":true,\"num\":0}]"),
            ),
            "51-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
        );
        check(
            "52-/admin,[\"baz\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            packet(
                BinaryEvent,
                "/admin",
                None,
                2,
                Some("[\"baz\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"),
            ),
            "52-/admin,[\"baz\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
        );
        check(
            "61-15[\"bar\",{\"_placeholder\":true,\"num\":0}]",
            packet(
                BinaryAck,
                "/",
                Some(15),
                1,
                Some("[\"bar\",{\"_placeholder\":true,\"num\":0}]"),
            ),
            "61-15[\"bar\",{\"_placeholder\":true,\"num\":0}]",
        );
        check(
            "61-/admin,1[{\"_placeholder\":true,\"num\":0}]",
            packet(
                BinaryAck,
                "/admin",
                Some(1),
                1,
                Some("[{\"_placeholder\":true,\"num\":0}]"),
            ),
            "61-/admin,1[{\"_placeholder\":true,\"num\":0}]",
        );
        check("1", packet(Disconnect, "/", None, 0, None), "1");
        check(
            "1/admin,",
            packet(Disconnect, "/admin", None, 0, None),
            "1/admin,",
        );
    }

    #[test]
    fn inside_engineio_messages() {
        use crate::engineio::{decode_payload, decode_text, Packet, PacketType};
        let (t, text) = decode_text("451-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(t, PacketType::Message);
        let p = decode(text).unwrap();
        assert_eq!((p.kind, p.attachments), (SioType::BinaryEvent, 1));
        let (t, text) = decode_text("40/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}").unwrap();
        assert_eq!(t, PacketType::Message);
        assert_eq!(decode(text).unwrap().nsp, "/admin");

        let body = "42[\"hello\"]\x1e42[\"world\"]\x1e40/admin,";
        let kinds: Vec<_> = decode_payload(body.as_bytes(), 8)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Packet::Text(PacketType::Message, text) => {
                    let p = decode(text).unwrap();
                    (p.kind, p.nsp)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (SioType::Event, "/"),
                (SioType::Event, "/"),
                (SioType::Connect, "/admin")
            ]
        );
    }

    #[test]
    fn lenient_forms() {
        use SioType::*;
        // The namespace may end at the end of the text, and "/" may be written.
        check(
            "0/custom",
            packet(Connect, "/custom", None, 0, None),
            "0/custom,",
        );
        check(
            "1/admin",
            packet(Disconnect, "/admin", None, 0, None),
            "1/admin,",
        );
        check(
            "2/,[\"a\"]",
            packet(Event, "/", None, 0, Some("[\"a\"]")),
            "2[\"a\"]",
        );
        // Leading zeros, whitespace around the JSON, zero attachments.
        check(
            "2007[\"a\"]",
            packet(Event, "/", Some(7), 0, Some("[\"a\"]")),
            "27[\"a\"]",
        );
        check(
            "2 [ \"a\" , 1 ] ",
            packet(Event, "/", None, 0, Some(" [ \"a\" , 1 ] ")),
            "2 [ \"a\" , 1 ] ",
        );
        check(
            "50-[\"a\"]",
            packet(BinaryEvent, "/", None, 0, Some("[\"a\"]")),
            "50-[\"a\"]",
        );
        // An ack id is read on any type; a namespace may hold anything but ',' and controls.
        check("05", packet(Connect, "/", Some(5), 0, None), "05");
        check(
            "2/a b/ü?x=1,[\"a\"]",
            packet(Event, "/a b/ü?x=1", None, 0, Some("[\"a\"]")),
            "2/a b/ü?x=1,[\"a\"]",
        );
        let max_id = format!("3{MAX_ACK_ID}[]");
        check(
            &max_id,
            packet(Ack, "/", Some(MAX_ACK_ID), 0, Some("[]")),
            &max_id,
        );
        let max_att = format!("6{MAX_ATTACHMENTS}-[]");
        check(
            &max_att,
            packet(BinaryAck, "/", None, MAX_ATTACHMENTS, Some("[]")),
            &max_att,
        );
    }

    #[test]
    fn errors() {
        use SioError::*;
        let cases: &[(&str, SioError)] = &[
            ("", Empty),
            ("7", BadType),
            ("x", BadType),
            ("abc", BadType),
            ("€", BadType),
            ("5[\"a\"]", BadAttachments),
            ("5-[\"a\"]", BadAttachments),
            ("51[\"a\"]", BadAttachments),
            ("51", BadAttachments),
            ("565-[\"a\"]", BadAttachments),
            ("599999999999999999999999-[\"a\"]", BadAttachments),
            ("5x-[\"a\"]", BadAttachments),
            ("2/a\nb,[\"a\"]", BadNamespace),
            ("2/a\u{7f},[\"a\"]", BadNamespace),
            ("29007199254740992[\"a\"]", BadId),
            ("2999999999999999999999999[\"a\"]", BadId),
            (
                "2abc[\"message-with-ack\",1,\"2\",{\"3\":[false]}]",
                BadJson,
            ),
            ("2[\"a\"", BadJson),
            ("2[\"a\"]x", BadJson),
            ("2 ", BadJson),
            ("0{\"a\":}", BadJson),
            ("2{}", BadPayload),
            ("2", BadPayload),
            ("2[]", BadPayload),
            ("2[1,\"a\"]", BadPayload),
            ("2\"a\"", BadPayload),
            ("5-1[]", BadAttachments),
            ("51-[]", BadPayload),
            ("3", BadPayload),
            ("3{}", BadPayload),
            ("61-{}", BadPayload),
            ("0[]", BadPayload),
            ("0\"x\"", BadPayload),
            ("1{}", BadPayload),
            ("1/admin,[]", BadPayload),
            ("4", BadPayload),
            ("4[]", BadPayload),
            ("41", BadPayload),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text), Err(*want), "{text:?}");
        }
        let long_nsp = format!("2/{},[\"a\"]", "n".repeat(MAX_NAMESPACE_LEN));
        assert_eq!(decode(&long_nsp), Err(BadNamespace));
        let ok_nsp = format!("2/{},[\"a\"]", "n".repeat(MAX_NAMESPACE_LEN - 1));
        assert!(decode(&ok_nsp).is_ok());
    }

    #[test]
    fn depth_matches_serde_json() {
        let nested = |n: usize| format!("2[\"a\",{}{}]", "[".repeat(n - 1), "]".repeat(n - 1));
        // The event array itself is one level.
        let ok = nested(MAX_JSON_DEPTH);
        let deep = nested(MAX_JSON_DEPTH + 1);
        assert!(decode(&ok).is_ok());
        assert_eq!(decode(&deep), Err(SioError::BadJson));
        assert!(serde_json::from_str::<serde_json::Value>(&ok[1..]).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep[1..]).is_err());
        assert!(inline_attachments(&ok[1..], &[]).is_ok());
        assert_eq!(inline_attachments(&deep[1..], &[]), Err(SioError::BadJson));
        // Brackets inside strings do not count.
        let quoted = format!("2[\"{}\\\"{}\"]", "[".repeat(200), "{".repeat(200));
        assert!(decode(&quoted).is_ok());
        // Very deep input fails without exhausting the stack.
        let huge = format!("2{}", "[".repeat(1 << 20));
        assert_eq!(decode(&huge), Err(SioError::BadJson));
        assert_eq!(extract_binaries(&huge[1..]), Err(SioError::BadJson));
    }

    #[test]
    fn write_forms() {
        let mut out = Vec::new();
        write(&mut out, SioType::Event, "", Some(3), 9, Some(b"[\"x\"]"));
        assert_eq!(out, b"23[\"x\"]");
        out.clear();
        write(
            &mut out,
            SioType::BinaryEvent,
            "/n",
            None,
            2,
            Some(b"[\"x\"]"),
        );
        assert_eq!(out, b"52-/n,[\"x\"]");
        out.clear();
        write(&mut out, SioType::Connect, "/admin", None, 0, None);
        assert_eq!(out, b"0/admin,");
    }

    #[test]
    fn events() {
        assert_eq!(
            split_event("[\"hello\",1]"),
            Ok(("hello".into(), vec!["1".into()]))
        );
        assert_eq!(
            split_event(" [ \"project:delete\" , 123 , {\"a\": [1, 2]} , \"x\" ] "),
            Ok((
                "project:delete".into(),
                vec!["123".into(), "{\"a\": [1, 2]}".into(), "\"x\"".into()]
            ))
        );
        assert_eq!(
            split_event("[\"a\\\"b\\u00e9\"]"),
            Ok(("a\"bé".into(), vec![]))
        );
        assert_eq!(split_event("[]"), Err(SioError::BadPayload));
        assert_eq!(split_event("[1]"), Err(SioError::BadPayload));
        assert_eq!(split_event("{}"), Err(SioError::BadPayload));
        assert_eq!(split_event("[\"a\""), Err(SioError::BadJson));
        assert_eq!(split_event("[\"\\ud800\"]"), Err(SioError::BadJson));

        assert_eq!(split_args("[]"), Ok(vec![]));
        assert_eq!(
            split_args("[\"bar\", null,{\"k\":true}]"),
            Ok(vec!["\"bar\"".into(), "null".into(), "{\"k\":true}".into()])
        );
        assert_eq!(split_args("\"x\""), Err(SioError::BadPayload));
        assert_eq!(split_args("[,]"), Err(SioError::BadJson));

        let mut out = Vec::new();
        write_event_data(&mut out, "hey \"you\"", &["\"Jude\"", "{\"n\":1}"]);
        assert_eq!(out, b"[\"hey \\\"you\\\"\",\"Jude\",{\"n\":1}]");
        out.clear();
        write_event_data(&mut out, "ping", &[]);
        assert_eq!(out, b"[\"ping\"]");
        let (name, args) = split_event(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!((name.as_str(), args.len()), ("ping", 0));
    }

    #[test]
    fn attachments_inline_and_back() {
        let data = "[\"baz\",{\"_placeholder\":true,\"num\":0},{\"num\":1,\"_placeholder\":true}]";
        let inlined = inline_attachments(data, &[&[1, 2], &[3, 4]]).unwrap();
        assert_eq!(
            inlined,
            "[\"baz\",{\"$binary\":\"AQI=\"},{\"$binary\":\"AwQ=\"}]"
        );
        let (back, atts) = extract_binaries(&inlined).unwrap();
        assert_eq!(
            back,
            "[\"baz\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"
        );
        assert_eq!(atts, vec![vec![1, 2], vec![3, 4]]);

        // Nested, reused and out-of-order numbers; member order is kept.
        let data = "{ \"z\": [{\"_placeholder\":true,\"num\":1}], \"a\": {\"b\": {\"_placeholder\":true,\"num\":1}} }";
        assert_eq!(
            inline_attachments(data, &[b"", b"\xff"]).unwrap(),
            "{\"z\":[{\"$binary\":\"/w==\"}],\"a\":{\"b\":{\"$binary\":\"/w==\"}}}"
        );
        // No placeholders: compacted, strings re-escaped, numbers as serde_json writes them.
        assert_eq!(
            inline_attachments(
                "[ \"\\u0041\\/\" , 1.50 , -0 , 1e3, {\"_placeholder\":false} ]",
                &[]
            )
            .unwrap(),
            "[\"A/\",1.5,-0.0,1000.0,{\"_placeholder\":false}]"
        );

        // Numbers are read exactly, so writing them again changes nothing more.
        let floats = inline_attachments("[4.488888888888888e+55,0.1,5e-324,1E400]", &[]);
        assert_eq!(floats, Err(SioError::BadJson));
        let floats = inline_attachments(
            "[4.488888888888888e+55,0.1,5e-324,-1.7976931348623157e308]",
            &[],
        )
        .unwrap();
        assert_eq!(
            floats,
            "[4.488888888888888e+55,0.1,5e-324,-1.7976931348623157e+308]"
        );
        assert_eq!(inline_attachments(&floats, &[]).unwrap(), floats);

        assert_eq!(
            inline_attachments("[{\"_placeholder\":true,\"num\":2}]", &[b"a", b"b"]),
            Err(SioError::MissingAttachment)
        );
        for bad in [
            "[{\"_placeholder\":true}]",
            "[{\"_placeholder\":true,\"num\":-1}]",
            "[{\"_placeholder\":true,\"num\":0.0}]",
            "[{\"_placeholder\":true,\"num\":\"0\"}]",
            "[{\"_placeholder\":true,\"num\":0,\"x\":1}]",
            "[{\"_placeholder\":true,\"nums\":0}]",
        ] {
            assert_eq!(
                inline_attachments(bad, &[b"a"]),
                Err(SioError::BadPlaceholder),
                "{bad}"
            );
        }
        assert_eq!(inline_attachments("[", &[]), Err(SioError::BadJson));

        // Only exact {"$binary": <valid base64>} objects are extracted.
        let data = "[{\"$binary\":\"AQ\"},{\"$binary\":1},{\"$binary\":\"AQ==\",\"x\":1},{\"$binary\":\"\"}]";
        let (out, atts) = extract_binaries(data).unwrap();
        assert_eq!(
            out,
            "[{\"$binary\":\"AQ\"},{\"$binary\":1},{\"$binary\":\"AQ==\",\"x\":1},{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(atts, vec![Vec::<u8>::new()]);
        assert_eq!(
            extract_binaries(" { \"b\" : 1 , \"a\" : [ ] } "),
            Ok(("{\"b\":1,\"a\":[]}".into(), vec![]))
        );
        assert_eq!(
            extract_binaries("[{\"_placeholder\":true,\"num\":0}]"),
            Ok(("[{\"_placeholder\":true,\"num\":0}]".into(), vec![]))
        );
        assert_eq!(
            extract_binaries("[{\"_placeholder\":true,\"num\":0},{\"$binary\":\"AQ==\"}]"),
            Err(SioError::BadPlaceholder)
        );
        let many = format!(
            "[{}]",
            vec!["{\"$binary\":\"AQ==\"}"; MAX_ATTACHMENTS as usize + 1].join(",")
        );
        assert_eq!(extract_binaries(&many), Err(SioError::BadAttachments));
        let enough = format!(
            "[{}]",
            vec!["{\"$binary\":\"AQ==\"}"; MAX_ATTACHMENTS as usize].join(",")
        );
        assert_eq!(
            extract_binaries(&enough).map(|(_, a)| a.len()),
            Ok(MAX_ATTACHMENTS as usize)
        );
        assert_eq!(extract_binaries("nul"), Err(SioError::BadJson));
    }

    #[test]
    fn error_texts() {
        use SioError::*;
        for e in [
            Empty,
            BadType,
            BadAttachments,
            BadNamespace,
            BadId,
            BadJson,
            BadPayload,
            BadPlaceholder,
            MissingAttachment,
        ] {
            assert!(!e.reason().is_empty());
            assert_eq!(e.to_string(), e.reason());
        }
    }
}
