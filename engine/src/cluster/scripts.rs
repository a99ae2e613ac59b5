//! The Lua scripts the nodes run in Redis, and the parsing of their answers.
//!
//! Each script is one atomic step in Redis. Keys of channel C: `P:{C}:seq` (counter),
//! `P:{C}:epoch` (the stream's epoch), `P:{C}:hist` (`"<seq> <content>"` entries),
//! `P:{C}:closed` (`"<epoch> <seq>"`: the stream that was closed, and where),
//! `P:{C}:idem:<key>` (`"<epoch> <seq>"` of the publish that used an idempotency key).

use crate::epoch::Epoch;
use crate::inbox::RemoteStream;

/// Publish: idempotency check, stream start or continuation, counter, history, feed.
///
/// KEYS: seq, hist, epoch, closed, idem. ARGV: channel, content, floor (the highest seq
/// the node knows taken in its stream), history size, key ttl, feed channel, the epoch
/// the node knows (or ''), a fresh epoch for a new stream, '1' to use the idempotency key,
/// its ttl. Returns `{"<epoch> <seq>", duplicate}`.
///
/// A stream whose epoch key is gone (a new channel, expired keys, a Redis that lost its
/// data) continues the stream the publishing node knows (epoch and floor), unless that
/// stream was closed; otherwise a new stream starts at seq 1 with the fresh epoch.
pub const PUBLISH: &str = r"
if ARGV[9] == '1' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {prev, 1} end
end
local epoch = redis.call('GET', KEYS[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[3])
local known = ARGV[7]
if not epoch then
  local closed = redis.call('GET', KEYS[4])
  local was_closed = closed and string.sub(closed, 1, #known + 1) == known .. ' '
  if known ~= '' and floor > 0 and not was_closed then
    epoch = known
    if cur < floor then cur = floor end
  else
    epoch = ARGV[8]
    cur = 0
    redis.call('DEL', KEYS[2])
  end
elseif epoch == known and cur < floor then
  cur = floor
end
cur = cur + 1
redis.call('SET', KEYS[3], epoch, 'EX', ARGV[5])
redis.call('SET', KEYS[1], cur, 'EX', ARGV[5])
redis.call('RPUSH', KEYS[2], cur .. ' ' .. ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], 'D ' .. epoch .. ' ' .. cur .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
local ans = epoch .. ' ' .. cur
if ARGV[9] == '1' then redis.call('SET', KEYS[5], ans, 'EX', ARGV[10]) end
return {ans, 0}
";

/// A subscription's position: KEYS seq, hist, epoch; ARGV since, the client's epoch (or
/// ''). Returns `{epoch, seq, reset, entries...}`: from `since`, or from 1 when the
/// position is not in the stream (another epoch, or beyond its end).
pub const HISTORY: &str = r"
local epoch = redis.call('GET', KEYS[3]) or ''
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if epoch == '' then cur = 0 end
local since = tonumber(ARGV[1])
if since < 1 then since = 1 end
local reset = 0
if (ARGV[2] ~= '' and ARGV[2] ~= epoch) or since > cur + 1 then
  reset = 1
  since = 1
end
local out = {epoch, tostring(cur), tostring(reset)}
if since > cur then return out end
local h = redis.call('LRANGE', KEYS[2], -(cur - since + 1), -1)
for _, e in ipairs(h) do out[#out + 1] = e end
return out
";

/// Where a channel's stream is: KEYS seq, epoch. Returns `{epoch, seq}`.
pub const STATE: &str = r"
local epoch = redis.call('GET', KEYS[2]) or ''
local cur = redis.call('GET', KEYS[1]) or '0'
if epoch == '' then cur = '0' end
return {epoch, cur}
";

/// After an outage: KEYS (seq, closed, epoch) per channel, ARGV (seq, epoch) per
/// channel then the key ttl. A stream Redis lost is restored as the node knew it; a
/// counter behind the node's is raised; a stream that moved on or was closed is left.
pub const RESEED: &str = r"
local ttl = ARGV[#ARGV]
for i = 0, #KEYS / 3 - 1 do
  local kseq, kclosed, kepoch = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local v = tonumber(ARGV[2 * i + 1])
  local e = ARGV[2 * i + 2]
  local closed = redis.call('GET', kclosed)
  if not (closed and string.sub(closed, 1, #e + 1) == e .. ' ') then
    local cur_e = redis.call('GET', kepoch)
    if not cur_e then
      redis.call('SET', kepoch, e, 'EX', ttl)
      redis.call('SET', kseq, v, 'EX', ttl)
    elseif cur_e == e then
      local cur = tonumber(redis.call('GET', kseq) or '0')
      if v > cur then redis.call('SET', kseq, v, 'EX', ttl) end
    end
  end
end
return 0
";

/// Close: KEYS seq, hist, closed, epoch; ARGV channel, floor, ttl, feed, the node's
/// epoch. Leaves a tombstone `"<epoch> <seq>"`, drops the stream, tells the feed.
pub const CLOSE: &str = r"
local epoch = redis.call('GET', KEYS[4]) or ARGV[5]
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
redis.call('SET', KEYS[3], epoch .. ' ' .. cur, 'EX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('PUBLISH', ARGV[4], 'C ' .. ARGV[1])
return cur
";

/// Subscribers of a channel on every live node.
pub const SUBSCRIBERS: &str = r"
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[3]), '+inf')
local total = 0
for _, n in ipairs(nodes) do
  local c = redis.call('HGET', ARGV[4] .. n, ARGV[1])
  if c then total = total + tonumber(c) end
end
return total
";

fn bad() -> String {
    "malformed answer from redis".to_string()
}

/// Parses `"<epoch> <seq>"`.
pub fn parse_epoch_seq(s: &str) -> Result<(Epoch, u64), String> {
    let (e, seq) = s.split_once(' ').ok_or_else(bad)?;
    let epoch = Epoch::parse(e).ok_or_else(bad)?;
    Ok((epoch, seq.parse().map_err(|_| bad())?))
}

/// Parses the publish script's answer: `(epoch, seq, duplicate)`.
pub fn parse_publish(v: (String, i64)) -> Result<(Epoch, u64, bool), String> {
    let (epoch, seq) = parse_epoch_seq(&v.0)?;
    Ok((epoch, seq, v.1 == 1))
}

fn text(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| bad())
}

fn epoch_of(b: &[u8]) -> Result<Epoch, String> {
    match text(b)? {
        "" => Ok(Epoch::NONE),
        e => Epoch::parse(e).ok_or_else(bad),
    }
}

/// Parses the history script's answer for a read from `since`.
pub fn parse_history(raw: &[Vec<u8>], since: u64) -> Result<RemoteStream, String> {
    let [epoch, seq, reset, rest @ ..] = raw else {
        return Err(bad());
    };
    let epoch = epoch_of(epoch)?;
    let seq: u64 = text(seq)?.parse().map_err(|_| bad())?;
    let reset = text(reset)? == "1";
    let since = if reset { 1 } else { since.max(1) };
    let mut messages = Vec::with_capacity(rest.len());
    for e in rest {
        let (s, packed) = text(e)?.split_once(' ').ok_or_else(bad)?;
        let s: u64 = s.parse().map_err(|_| bad())?;
        if s >= since {
            let (sender, content) = crate::msg::unpack(packed);
            messages.push((s, sender.into(), content.into()));
        }
    }
    let oldest = messages.first().map_or(seq + 1, |m| m.0);
    let gap = (since <= seq && since < oldest).then(|| (since, oldest - 1));
    Ok(RemoteStream {
        epoch,
        seq,
        reset,
        messages,
        gap,
    })
}

/// Parses the state script's answer.
pub fn parse_state(raw: &[Vec<u8>]) -> Result<RemoteStream, String> {
    let [epoch, seq] = raw else {
        return Err(bad());
    };
    Ok(RemoteStream {
        epoch: epoch_of(epoch)?,
        seq: text(seq)?.parse().map_err(|_| bad())?,
        reset: false,
        messages: Vec::new(),
        gap: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn e(s: &str) -> Epoch {
        Epoch::parse(s).unwrap()
    }

    #[test]
    fn parses_history() {
        let h = parse_history(
            &raw(&[
                "e1",
                "5",
                "0",
                "3 0:c",
                "4 3:bobwith space",
                "5 0:",
                "6 unpacked",
            ]),
            3,
        )
        .unwrap();
        assert_eq!((h.epoch, h.seq, h.reset), (e("e1"), 5, false));
        assert_eq!(
            h.messages,
            vec![
                (3, "".into(), "c".into()),
                (4, "bob".into(), "with space".into()),
                (5, "".into(), "".into()),
                (6, "".into(), "unpacked".into())
            ]
        );
        assert_eq!(h.gap, None);
        let h = parse_history(&raw(&["e1", "5", "0", "4 x", "5 y"]), 2).unwrap();
        assert_eq!(h.gap, Some((2, 3)));
        let h = parse_history(&raw(&["e1", "5", "0"]), 6).unwrap();
        assert_eq!((h.gap, h.messages.len()), (None, 0));
        let h = parse_history(&raw(&["e1", "5", "0"]), 1).unwrap();
        assert_eq!(h.gap, Some((1, 5)));
        // A reset replays from 1, whatever was asked.
        let h = parse_history(&raw(&["e2", "2", "1", "1 a", "2 b"]), 9).unwrap();
        assert!(h.reset);
        assert_eq!(h.messages.len(), 2);
        assert_eq!(h.gap, None);
        let h = parse_history(&raw(&["", "0", "1"]), 9).unwrap();
        assert!(h.reset && h.epoch.is_none() && h.messages.is_empty());
        assert!(parse_history(&raw(&[]), 1).is_err());
        assert!(parse_history(&raw(&["e1", "x", "0"]), 1).is_err());
        assert!(parse_history(&raw(&["e1", "2", "0", "nospace"]), 1).is_err());
        assert!(parse_history(&raw(&["BAD", "2", "0"]), 1).is_err());
    }

    #[test]
    fn parses_the_rest() {
        assert_eq!(
            parse_publish(("e1 7".into(), 1)).unwrap(),
            (e("e1"), 7, true)
        );
        assert!(parse_publish(("e1".into(), 0)).is_err());
        let s = parse_state(&raw(&["e1", "4"])).unwrap();
        assert_eq!((s.epoch, s.seq), (e("e1"), 4));
        assert!(parse_state(&raw(&["", "0"])).unwrap().epoch.is_none());
    }
}
