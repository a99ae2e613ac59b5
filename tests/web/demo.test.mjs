// The demo chat (engine/static/demo.html at /demo with demo = true) in headless Chromium, two pages in one room.
//
//   cd tests/web && PUSHEDGE_BIN=../../target/debug/pushedge node --test --test-concurrency=1 demo.test.mjs
//
// The server runs as `make demo` runs it: demo = true, client_publish = ["chat.*"], presence = ["chat.*"].
// The pages load http://SUBSCRIBER/demo, which loads /pushedge.js from the same origin. When the server's
// /demo or /pushedge.js is not this checkout's file (a stale build), the test serves the checkout's files for
// those two URLs through page.route (same origin, same server otherwise) and says so on stderr.

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { REPO, CHROMIUM_ARGS, useHarness, startServer, launchChromium, publish, request, waitFor } from "../socketio/harness.mjs";

useHarness();

const T = { timeout: 30_000 };
const WAIT = 10_000;
const NO_LNA = "--disable-features=LocalNetworkAccessChecks";
const FILES = {
  "/demo": [path.join(REPO, "engine", "static", "demo.html"), "text/html; charset=utf-8"],
  "/pushedge.js": [path.join(REPO, "engine", "static", "pushedge.js"), "text/javascript; charset=utf-8"],
};

async function demoServer() {
  const srv = await startServer({
    set: { socketio: null, demo: true, client_publish: ["chat.*"], presence: ["chat.*"], presence_public: true },
  });
  const stale = [];
  for (const [p, [file]] of Object.entries(FILES)) {
    const r = await request({ port: srv.port, path: p });
    if (r.status !== 200 || r.text !== fs.readFileSync(file, "utf8")) stale.push(p);
    if (r.status !== 200) process.stderr.write(`# ${srv.url}${p}: HTTP ${r.status}\n`);
  }
  if (stale.length) process.stderr.write(`# serving the checkout's ${stale.join(", ")} through page.route (the server's differ)\n`);
  // A document fulfilled by page.route has no IP address space: Chromium's Local Network Access checks would
  // then block its WebSocket to 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS). Only then.
  if (stale.includes("/demo") && !CHROMIUM_ARGS.includes(NO_LNA)) CHROMIUM_ARGS.push(NO_LNA);
  return { srv, stale };
}

async function openDemo(browser, { srv, stale }, { width = 960, height = 640 } = {}) {
  const ctx = await browser.newContext({ viewport: { width, height } });
  const pg = await ctx.newPage();
  pg.errors = [];
  pg.on("pageerror", (e) => pg.errors.push(e.message));
  for (const p of stale) {
    const [file, type] = FILES[p];
    await pg.route(`${srv.url}${p}`, (r) => r.fulfill({ status: 200, contentType: type, body: fs.readFileSync(file, "utf8") }));
  }
  await pg.goto(`${srv.url}/demo`);
  await pg.waitForFunction(() => window.demo && window.Pushedge, null, { timeout: WAIT });
  return pg;
}

async function joinAs(pg, nick, room) {
  await pg.fill("#nick", nick);
  await pg.fill("#room", room);
  await pg.click("#join-btn");
  await pg.waitForFunction(() => /connected over/.test(document.getElementById("status").textContent), null, { timeout: WAIT });
}

async function say(pg, text) {
  await pg.fill("#text", text);
  await pg.click("#send");
  // the input is cleared once the publish is acknowledged; a refusal shows as a "not sent" line
  await waitLines(pg, async () => (await pg.inputValue("#text")) === "", `"${text}" acknowledged`);
}

/** The chat lines of a page: [nick, text] for messages, ["*", text] for system lines. */
const lines = (pg) =>
  pg.evaluate(() =>
    [...document.querySelectorAll("#log > div")].map((d) =>
      d.classList.contains("msg") ? [d.dataset.nick, d.querySelector(".text").textContent] : ["*", d.textContent],
    ),
  );

async function waitLines(pg, cond, what) {
  let last;
  try {
    await waitFor(async () => cond((last = await lines(pg))), WAIT, what);
  } catch (e) {
    e.message += `\nlines: ${JSON.stringify(last)}`;
    throw e;
  }
  return last;
}
const has = (ls, nick, text) => ls.some(([n, t]) => n === nick && t === text);

// Two pages (ann, bob) join the same room: ann sees bob's join (a presence join line and a count of 2), each
// sees the other's message with its nickname (client publishes of {nick, text} to chat.<room>); a third page
// joining later gets the room's recent history (since=1: both messages, in order); after a reload, ann's page
// shows what it had seen and catches up from the last seq it saw (a message sent meanwhile by bob arrives
// once). Screenshot of ann's page to docs/demo.png.
test("6. demo chat: two nicknames in one room, join, messages, history, reload", T, async () => {
  const ds = await demoServer();
  const room = "lobby"; // a server of its own
  const browser = await launchChromium({ ports: [ds.srv.port] });
  const ann = await openDemo(browser, ds);
  await joinAs(ann, "ann", room);
  await waitFor(async () => (await ann.textContent("#count")) === "1", WAIT, "ann alone in the room");
  const bob = await openDemo(browser, ds);
  await joinAs(bob, "bob", room);
  await waitLines(ann, (ls) => ls.some(([n, t]) => n === "*" && /a visitor joined/.test(t)), "ann sees bob join");
  await waitFor(async () => (await ann.textContent("#count")) === "2", WAIT, "ann counts 2 here");

  await say(ann, "hello bob");
  await say(bob, "hi ann!");
  for (const pg of [ann, bob]) {
    const ls = await waitLines(pg, (ls) => has(ls, "ann", "hello bob") && has(ls, "bob", "hi ann!"), "both messages on each page");
    const msgs = ls.filter(([n]) => n !== "*");
    assert.deepEqual(msgs, [["ann", "hello bob"], ["bob", "hi ann!"]], "each message once, in order");
  }
  // The messages are JSON {nick, text} on chat.<room>, seq 1 and 2 (the backend's view).
  const info = await request({ host: ds.srv.adminHost, port: ds.srv.adminPort, path: `/info?channel=chat.${room}` });
  assert.equal(info.json().seq, 2, info.text);

  // A late joiner sees the recent history.
  const cy = await openDemo(browser, ds);
  await joinAs(cy, "cy", room);
  const lc = await waitLines(cy, (ls) => ls.filter(([n]) => n !== "*").length === 2, "cy sees the history");
  assert.deepEqual(lc.filter(([n]) => n !== "*"), [["ann", "hello bob"], ["bob", "hi ann!"]]);
  await cy.close();

  await ann.evaluate(() => window.scrollTo(0, 0));
  await ann.screenshot({ path: path.join(REPO, "docs", "demo.png"), fullPage: true });
  assert.ok(fs.statSync(path.join(REPO, "docs", "demo.png")).size > 1000);

  // ann reloads; bob speaks meanwhile; ann's page shows the old lines and the new one, once each.
  await ann.reload();
  await ann.waitForFunction(() => window.demo, null, { timeout: WAIT });
  await say(bob, "did you miss me?");
  await publish(ds.srv, `chat.${room}`, { nick: "backend", text: "a server-side message" });
  assert.equal(await ann.inputValue("#nick"), "ann", "the nickname is remembered");
  await joinAs(ann, "ann", room);
  const la = await waitLines(ann, (ls) => has(ls, "backend", "a server-side message"), "ann catches up");
  assert.deepEqual(
    la.filter(([n]) => n !== "*"),
    [["ann", "hello bob"], ["bob", "hi ann!"], ["bob", "did you miss me?"], ["backend", "a server-side message"]],
  );
  assert.deepEqual(ann.errors, []);
  assert.deepEqual(bob.errors, []);
});
