// Tokens (auth = "token"): a CONNECT needs a token that grants every room it joins (the
// namespace's broadcast room included), from auth.token or the URL's token=; later
// joins and client publishes are checked against the same token.

import test from "node:test";
import assert from "node:assert/strict";
import {
  useHarness,
  T,
  SETTLE,
  startServer,
  client,
  record,
  connected,
  connectError,
  emitAck,
  publish,
  adminGet,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

const SECRET = "socketio-test-secret";

async function sign(srv, channels, { pub = "", sub = "" } = {}) {
  let q = `/sign?channel=${encodeURIComponent(channels)}`;
  if (pub) q += `&pub=${encodeURIComponent(pub)}`;
  if (sub) q += `&sub=${encodeURIComponent(sub)}`;
  const r = await adminGet(srv, q);
  assert.equal(r.status, 200, r.text);
  return r.json().token;
}

for (const transport of ["websocket", "polling"]) {
  test(`tokens (${transport}): missing 401, not granting a room 403, granted rooms delivered`, T, async () => {
    const srv = await startServer({
      set: { auth: "token", token_secret: SECRET, client_publish: ["chat1.*"] },
    });
    const url = `${srv.url}/chat1`;

    const none = client(url, { transports: [transport] });
    const e1 = await connectError(none);
    assert.equal(e1.data?.code, 401, show(e1));

    // The token grants the room but not the namespace's broadcast room.
    const narrow = await sign(srv, "chat1.lobby");
    const partial = client(url, { transports: [transport], auth: { token: narrow, channels: ["lobby"] } });
    const e2 = await connectError(partial);
    assert.equal(e2.data?.code, 403, show(e2));
    assert.match(e2.message, /chat1\.all/);

    const token = await sign(srv, "chat1.all,chat1.lobby", { pub: "chat1.all", sub: "ann" });
    const s = client(url, { transports: [transport], auth: { token, channels: ["lobby"] } });
    const rec = record(s);
    await connected(s);
    // The same token from the URL's query works too.
    const q = client(url, { transports: [transport], query: { token } });
    const recQ = record(q);
    await connected(q);

    await publish(srv, "chat1.lobby", "to the lobby");
    await rec.wait(1);
    assert.deepEqual(rec.events(), [["message", "to the lobby"]], show(rec.events()));

    // Joining a room the token does not grant is refused; the socket stays connected.
    const [refused] = await emitAck(s, "subscribe", "secret");
    assert.equal(refused.ok, false, show(refused));
    assert.equal(refused.code, 403, show(refused));
    assert.equal(s.connected, true);

    // Publishing: the pub claim grants chat1.all; a room it does not name is refused.
    const [ok] = await emitAck(s, "message", "hello all");
    assert.equal(ok.ok, true, show(ok));
    const [no] = await emitAck(s, "publish", { room: "lobby", event: "chat", data: "x" });
    assert.equal(no.ok, false, show(no));
    assert.equal(no.code, 403, show(no));
    await Promise.all([rec.wait(2), recQ.wait(1)]);
    await sleep(SETTLE);
    assert.deepEqual(rec.events(), [["message", "to the lobby"], ["message", "hello all"]], show(rec.events()));
    assert.deepEqual(recQ.events(), [["message", "hello all"]], show(recQ.events()));

    // One client publish, sequenced once.
    const hist = await adminGet(srv, "/info?channel=chat1.all");
    assert.equal(hist.status, 200, hist.text);
    assert.equal(hist.json().seq, 1, hist.text);
  });
}
