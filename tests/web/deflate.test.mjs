// permessage-deflate in headless Chromium (which offers it on every WebSocket): the extension is negotiated
// with no context takeover both ways, a published message large enough to be compressed arrives intact, and a
// compressed op from the browser is answered.
//
//   cd tests/web && PUSHEDGE_BIN=../../target/debug/pushedge node --test deflate.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { useHarness, startServer, startStatic, launchChromium, publish, waitFor } from "../socketio/harness.mjs";

useHarness();

const T = { timeout: 30_000 };
const WAIT = 10_000;

test("Chromium negotiates permessage-deflate and gets compressed messages intact", T, async () => {
  const srv = await startServer({ set: { socketio: null } });
  const st = await startStatic({ "/": `<!doctype html><meta charset="utf-8"><title>deflate</title><body></body>` });
  const browser = await launchChromium({ ports: [srv.port, st.port] });
  const pg = await (await browser.newContext()).newPage();
  await pg.goto(`${st.url}/`);
  const channel = `deflate${process.pid}`;
  const ext = await pg.evaluate(
    ([port, channel]) =>
      new Promise((resolve, reject) => {
        const ws = (window.ws = new WebSocket(`ws://127.0.0.1:${port}/ws?channel=${channel}`));
        window.got = [];
        ws.onmessage = (e) => window.got.push(JSON.parse(e.data));
        ws.onopen = () => resolve(ws.extensions);
        ws.onerror = () => reject(new Error("WebSocket error"));
      }),
    [srv.port, channel],
  );
  assert.equal(ext, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  await waitFor(async () => (await (await fetch(`http://${srv.adminHost}:${srv.adminPort}/info?channel=${channel}`)).json()).subscribers === 1, WAIT, "the subscription");
  const content = "a message long enough to be compressed; ".repeat(100);
  await publish(srv, channel, content);
  await pg.evaluate(() => window.ws.send(JSON.stringify({ op: "ping", id: 1 })));
  await waitFor(async () => (await pg.evaluate(() => window.got.length)) >= 2, WAIT, "the message and the pong");
  const got = await pg.evaluate(() => window.got);
  const data = got.find((m) => m.type === "data");
  assert.equal(data && data.content, content);
  assert.ok(got.some((m) => m.type === "pong" && m.id === 1), JSON.stringify(got));
});
