// TLS in the browser: headless Chromium loading https:// from pushedge and opening wss:// to it, trusting a test
// certificate made here (openssl), and refusing it when it is not trusted.
//
//   cd tests/web && PUSHEDGE_BIN=../../target/debug/pushedge node --test --test-concurrency=1 tls.test.mjs
//
// Chromium is told to trust the test certificate with --ignore-certificate-errors-spki-list (the SHA-256 of its
// public key): the certificate is still verified for its name and dates, only its issuer is taken on trust.

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { useHarness, startServer, launchChromium, publish, request, waitFor, onCleanup } from "../socketio/harness.mjs";

useHarness();

const T = { timeout: 60_000 };

/** A CA and a leaf for localhost signed by it (openssl CLI); the leaf's SPKI hash for Chromium. */
function makeCerts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushedge-tls-"));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = (n) => path.join(dir, n);
  const ossl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });
  ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f("ca.key"),
    "-out", f("ca.pem"), "-days", "2", "-subj", "/CN=pushedge test CA");
  ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f("leaf.key"),
    "-out", f("leaf.csr"), "-subj", "/CN=localhost");
  fs.writeFileSync(f("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  ossl("x509", "-req", "-in", f("leaf.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial",
    "-out", f("leaf.pem"), "-days", "2", "-extfile", f("ext"));
  fs.writeFileSync(f("chain.pem"), fs.readFileSync(f("leaf.pem"), "utf8") + fs.readFileSync(f("ca.pem"), "utf8"));
  const pub = ossl("x509", "-in", f("leaf.pem"), "-pubkey", "-noout");
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "der"], { input: pub });
  const spki = execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: der }).toString("base64");
  return { chain: f("chain.pem"), key: f("leaf.key"), spki };
}

const launch = (args, port) => launchChromium({ ports: [port], args });

test("1. Chromium loads https:// and keeps a wss:// subscription, with permessage-deflate; untrusted, it refuses", T, async () => {
  const certs = makeCerts();
  const srv = await startServer({ set: { socketio: null, tls_cert: certs.chain, tls_key: certs.key } });
  const origin = `https://localhost:${srv.port}`;

  const browser = await launch([`--ignore-certificate-errors-spki-list=${certs.spki}`], srv.port);
  const page = await browser.newPage();
  const resp = await page.goto(`${origin}/pushedge.js`);
  assert.equal(resp.status(), 200, "the page over https");
  const got = page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const out = [];
        ws.onopen = () => out.push({ open: ws.extensions });
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          if (m.type === "subscribed") out.push({ subscribed: true });
          if (m.type === "data") out.push({ content: m.content });
          if (out.filter((x) => "content" in x).length === 2) resolve(out);
        };
        ws.onerror = () => reject(new Error("wss error"));
        setTimeout(() => reject(new Error(`timeout: ${JSON.stringify(out)}`)), 10_000);
      }),
    `wss://localhost:${srv.port}/ws?channel=tlsweb`,
  );
  await waitFor(async () => {
    const r = await request({ port: srv.adminPort, path: "/info?channel=tlsweb" });
    return r.status === 200 && JSON.parse(r.text).subscribers >= 1;
  }, 10_000, "the page's wss subscription");
  await publish(srv, "tlsweb", "first over wss");
  await publish(srv, "tlsweb", "x".repeat(50_000));
  const out = await got;
  assert.match(out[0].open, /permessage-deflate/, `negotiated extensions: ${JSON.stringify(out[0])}`);
  const contents = out.filter((x) => "content" in x).map((x) => x.content);
  assert.deepEqual(contents, ["first over wss", "x".repeat(50_000)]);

  // Without the trust, the same page is refused.
  const untrusted = await launch([], srv.port);
  const p2 = await untrusted.newPage();
  await assert.rejects(p2.goto(`${origin}/pushedge.js`), /ERR_CERT_AUTHORITY_INVALID/);
});
