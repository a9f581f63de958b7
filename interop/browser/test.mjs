// Interop: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) against the
// real mcp-stream binary. The page is the server's own demo page at `/`, so the WebSockets the
// page opens with the browser's own `WebSocket` are same-origin.
//
//   node interop/browser/test.mjs [RESULTS.json]
//
// Prints one line per check, writes {"passed":N,"failed":M} to RESULTS.json when given, saves a
// screenshot to target/interop-browser.png, and exits non-zero on any failure.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

import { BIN, CONFIG_ENV, ROOT, WAIT_MS, check, deepEqual, withTimeout } from "../common.mjs";

const SCREENSHOT = join(ROOT, "target", "interop-browser.png");
// Quotes, backslashes, a control character, non-ASCII of every UTF-8 length, nesting.
const TRICKY = {
  text: 'she said "hi" \\ back\\slash \u0001 tab\t nl\n',
  unicode: "héllo — 日本語 🎉",
  nested: [1, 2.5, null, true, { k: '"v"' }],
};

/** Starts `mcp-stream serve --listen 127.0.0.1:0`; resolves with the process and its address. */
async function startServer() {
  const env = { ...process.env };
  for (const name of CONFIG_ENV) delete env[name];
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"], {
    env,
    stdio: ["ignore", "pipe", "ignore"],
  });
  const lines = createInterface({ input: child.stdout });
  const first = await withTimeout(
    new Promise((res, rej) => {
      lines.once("line", res);
      child.once("error", rej);
      child.once("exit", (code) => rej(new Error(`mcp-stream exited with ${code}`)));
    }),
    "the server's first line",
  );
  const prefix = "listening on http://";
  if (!first.startsWith(prefix)) throw new Error(`unexpected first line ${JSON.stringify(first)}`);
  return { child, addr: first.slice(prefix.length).trim() };
}

async function publish(addr, body) {
  const r = await withTimeout(
    fetch(`http://${addr}/stream/publish`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }),
    "POST /stream/publish",
  );
  if (r.status !== 202) throw new Error(`publish: status ${r.status}: ${await r.text()}`);
  return (await r.json()).ids;
}

// ---- in the page: a tiny client library on `window`

/** Installs window.mcp: open sockets by name, queue their messages, await the next one. */
function installPageHelpers() {
  const sockets = {};
  const queues = {};
  const waiters = {};
  const log = document.createElement("pre");
  log.id = "interop-log";
  log.style.cssText = "border:1px solid #888;padding:8px;white-space:pre-wrap;font-size:12px";
  document.body.appendChild(log);
  const note = (line) => {
    log.textContent += line + "\n";
  };
  window.mcp = {
    note,
    open(name) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${location.host}/stream/ws`);
        sockets[name] = ws;
        queues[name] = [];
        waiters[name] = [];
        ws.onmessage = (e) => {
          note(`${name} <- ${e.data}`);
          const w = waiters[name].shift();
          if (w) w(e.data);
          else queues[name].push(e.data);
        };
        ws.onopen = () => resolve(ws.readyState);
        ws.onerror = () => reject(new Error(`${name}: WebSocket error`));
        ws.onclose = (e) => note(`${name} closed ${e.code}`);
      });
    },
    send(name, value) {
      const text = JSON.stringify(value);
      note(`${name} -> ${text}`);
      sockets[name].send(text);
    },
    next(name) {
      const q = queues[name];
      if (q.length) return Promise.resolve(JSON.parse(q.shift()));
      return new Promise((resolve) => waiters[name].push((d) => resolve(JSON.parse(d))));
    },
    state(name) {
      return sockets[name].readyState;
    },
    closeAll() {
      for (const ws of Object.values(sockets)) ws.close(1000, "done");
    },
  };
}

// ---- the checks

const checks = [];
function test(name, fn) {
  checks.push({ name, fn });
}

test("two page WebSockets connect to /stream/ws and are welcomed", async ({ page }) => {
  for (const name of ["a", "b"]) {
    const state = await withTimeout(page.evaluate((n) => window.mcp.open(n), name), `open ${name}`);
    check(state === 1, `${name}: readyState ${state}, not OPEN`);
    const welcome = await withTimeout(page.evaluate((n) => window.mcp.next(n), name), "welcome");
    check(welcome.type === "welcome", `${name}: first message ${JSON.stringify(welcome)}`);
    check(welcome.data === "Connected to MCP server", JSON.stringify(welcome));
    check(typeof welcome.id === "string" && welcome.id.length > 0, JSON.stringify(welcome));
  }
});

test("a broadcast from one socket reaches the other with its data intact", async ({ page }) => {
  const got = await withTimeout(
    page.evaluate(async (data) => {
      window.mcp.send("a", { type: "broadcast", data, exclude_self: true });
      return window.mcp.next("b");
    }, TRICKY),
    "the broadcast",
  );
  check(got.type === "broadcast", JSON.stringify(got));
  check(deepEqual(got.data, TRICKY), `data changed: ${JSON.stringify(got.data)}`);
  check(/^[0-9a-f]{8}-[0-9]+$/.test(got.id), `id ${got.id}`);
  // exclude_self: the sender's next message is the pong of its ping.
  const next = await withTimeout(
    page.evaluate(async () => {
      window.mcp.send("a", { type: "ping" });
      return window.mcp.next("a");
    }),
    "the sender's pong",
  );
  check(deepEqual(next, { type: "pong" }), `sender got ${JSON.stringify(next)}`);
});

test("an HTTP publish to a room the page joined arrives", async ({ page, addr }) => {
  const joined = await withTimeout(
    page.evaluate(async () => {
      window.mcp.send("b", { type: "join", room: "browser-room" });
      return window.mcp.next("b");
    }),
    "join",
  );
  check(deepEqual(joined, { type: "joined", room: "browser-room" }), JSON.stringify(joined));
  const ids = await publish(addr, { topic: "browser-room", event: "update", data: TRICKY });
  const event = await withTimeout(page.evaluate(() => window.mcp.next("b")), "the event");
  const expected = { type: "event", topic: "browser-room", event: "update", id: ids[0], data: TRICKY };
  check(deepEqual(event, expected), `got ${JSON.stringify(event)}`);
  const states = await page.evaluate(() => [window.mcp.state("a"), window.mcp.state("b")]);
  check(deepEqual(states, [1, 1]), `sockets not open: ${states}`);
});

// ---- main

async function main() {
  const resultsFile = process.argv[2];
  let passed = 0;
  let failed = 0;
  let server;
  let context;
  const userDataDir = mkdtempSync(join(tmpdir(), "mcp-stream-chromium-"));
  try {
    server = await startServer();
    context = await withTimeout(
      chromium.launchPersistentContext(userDataDir, {
        executablePath: "/usr/bin/chromium",
        headless: true,
        args: [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
        ],
        viewport: { width: 1000, height: 700 },
      }),
      "launching chromium",
      30_000,
    );
    const page = context.pages()[0] || (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    const response = await page.goto(`http://${server.addr}/`, { timeout: WAIT_MS });
    check(response && response.status() === 200, "the demo page did not load");
    await page.evaluate(installPageHelpers);
    for (const { name, fn } of checks) {
      try {
        await fn({ page, addr: server.addr });
        passed += 1;
        console.log(`ok - ${name}`);
      } catch (e) {
        failed += 1;
        console.log(`not ok - ${name}\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
      }
    }
    if (pageErrors.length) console.log(`page errors: ${pageErrors.join("; ")}`);
    await page.evaluate(() => window.mcp.note("interop checks done"));
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`screenshot: ${SCREENSHOT}`);
    await page.evaluate(() => window.mcp.closeAll());
  } catch (e) {
    // Every check that did not pass counts as failed.
    failed = Math.max(1, checks.length - passed);
    console.log(`not ok - setup\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
  } finally {
    if (context) await context.close().catch(() => {});
    if (server) server.child.kill("SIGKILL");
    rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  if (resultsFile) writeFileSync(resultsFile, JSON.stringify({ passed, failed }));
  process.exit(failed === 0 ? 0 : 1);
}

main();
