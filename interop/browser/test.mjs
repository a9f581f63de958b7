// Interop: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) against the
// real mcp-stream binary. The page is the server's own dashboard at `/`, so the WebSockets a
// page opens with the browser's own `WebSocket` are same-origin.
//
//   node interop/browser/test.mjs [RESULTS.json]
//
// Two parts: WebSocket checks through helpers installed into one tab (window.mcp), then checks
// that drive the dashboard in a second tab as a person would: its figures, its console (SSE
// subscribe, publish), its latency histogram and its feature switches; then its admin-token
// flow against a second server that has an admin token.
//
// Prints one line per check, writes {"passed":N,"failed":M} to RESULTS.json when given, saves
// screenshots to target/interop-browser.png and target/dashboard.png, and exits non-zero on any
// failure.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

import { BIN, CONFIG_ENV, ROOT, WAIT_MS, check, deepEqual, withTimeout } from "../common.mjs";

const SCREENSHOT = join(ROOT, "target", "interop-browser.png");
const DASHBOARD_SCREENSHOT = join(ROOT, "target", "dashboard.png");
const ADMIN_TOKEN = "dashboard-admin-secret";
// Quotes, backslashes, a control character, non-ASCII of every UTF-8 length, nesting.
const TRICKY = {
  text: 'she said "hi" \\ back\\slash \u0001 tab\t nl\n',
  unicode: "héllo — 日本語 🎉",
  nested: [1, 2.5, null, true, { k: '"v"' }],
};

/** Starts `mcp-stream serve --listen 127.0.0.1:0` with `extraEnv`; resolves with the process and
 * its address. */
async function startServer(extraEnv = {}) {
  const env = { ...process.env };
  for (const name of CONFIG_ENV) delete env[name];
  Object.assign(env, extraEnv);
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

/** GET `path` as JSON, with a bearer `token` when given; fails unless 200. */
async function getJson(addr, path, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await withTimeout(fetch(`http://${addr}${path}`, { headers }), `GET ${path}`);
  if (r.status !== 200) throw new Error(`GET ${path}: status ${r.status}: ${await r.text()}`);
  return r.json();
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

// ---- the dashboard, driven as a person would, in a tab of its own

/** Waits until `fn(arg)` holds in `page`, polling every 100 ms; resolves with its value. */
function until(page, fn, arg = null) {
  return page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
}

const logText = (page) => page.locator("#log").textContent();

/** Waits until the page's log pane contains `text`; returns the first line holding it. */
async function logLine(page, text) {
  await until(page, (t) => document.getElementById("log").textContent.includes(t), text);
  return (await logText(page)).split("\n").find((line) => line.includes(text));
}

/** The JSON at the end of a log line. */
const lineJson = (line) => JSON.parse(line.slice(line.indexOf("{")));

/** Waits until `#id` shows a whole number of at least `min`; returns it. */
async function figure(page, id, min = 0) {
  const shows = ([id, min]) => {
    const text = document.getElementById(id).textContent;
    return /^\d+$/.test(text) && Number(text) >= min && text; // the text: "0" is truthy
  };
  const handle = await until(page, shows, [id, min]).catch(async () => {
    const text = await page.locator(`#${id}`).textContent();
    throw new Error(`#${id} shows ${JSON.stringify(text)}, not a number of at least ${min}`);
  });
  return Number(await handle.jsonValue());
}

/** Subscribes in the console (SSE, no event filter) and waits for the stream to open. */
async function subscribe(page, topic) {
  await page.locator("#sub-topic").fill(topic);
  await page.locator("#sub-event").fill("");
  await page.locator("#sub-button").click();
  const open = (t) => document.getElementById("sub-state").textContent === `open: ${t}`;
  await until(page, open, topic);
}

/** Publishes from the console form; returns the event's id from the logged `202` answer. */
async function publishFromPage(page, topic, event, data) {
  await page.locator("#pub-topic").fill(topic);
  await page.locator("#pub-event").fill(event);
  await page.locator("#pub-data").fill(data);
  const seen = (await logText(page)).split("\n").length - 1; // lines logged so far
  await page.locator("#pub-button").click();
  const answer = `pub   ${topic}${event ? ` ${event}` : ""}: `;
  const answered = ([text, seen]) => {
    const lines = document.getElementById("log").textContent.split("\n");
    return lines.slice(seen).some((line) => line.includes(text));
  };
  await until(page, answered, [answer, seen]);
  const line = (await logText(page)).split("\n").slice(seen).find((l) => l.includes(answer));
  const match = /: 202 (\{.*\})$/.exec(line);
  check(match, `the publish from the page was not accepted: ${line}`);
  return JSON.parse(match[1]).ids[0];
}

/** The envelope of the SSE event `id`, once the page has logged it. */
async function loggedEvent(page, id) {
  return lineJson(await logLine(page, ` id=${id} `));
}

/** Clicks the switch of feature `name` and waits for the page to log the server's answer. */
async function flip(page, name, on) {
  const input = page.locator(`#feature-${name}`);
  check((await input.isChecked()) === !on, `${name} is already ${on ? "on" : "off"} in the page`);
  await input.click();
  await logLine(page, `${name} turned ${on ? "on" : "off"}`);
  check((await input.isChecked()) === on, `the ${name} switch did not stay ${on ? "on" : "off"}`);
  check(await input.isEnabled(), `the ${name} switch is still disabled`);
}

test("the dashboard loads without errors and shows figures from /stats", async (t) => {
  const { dash, addr, problems } = t;
  const response = await dash.goto(`http://${addr}/`, { timeout: WAIT_MS });
  check(response && response.status() === 200, "the dashboard did not load");
  for (const kind of ["http", "sse", "websocket", "mcp", "total"]) {
    await figure(dash, `conn-${kind}`);
  }
  // The first tab holds two WebSockets open, and nothing opens or closes one meanwhile.
  const shown = await figure(dash, "conn-websocket");
  const counted = (await getJson(addr, "/stats")).connections.websocket;
  check(shown === counted, `the page shows ${shown} WebSockets, /stats says ${counted}`);
  check(shown >= 2, `${shown} WebSocket connections shown; the first tab holds 2`);
  await until(dash, () => document.getElementById("health").textContent === "ok");
  await dash.locator("#feature-sse-streaming").waitFor({ timeout: WAIT_MS });
  check(await dash.locator("#feature-sse-streaming").isChecked(), "sse-streaming is shown off");
  const features = Object.keys((await getJson(addr, "/admin/features")).features);
  const switches = await dash.locator("#features input.switch").count();
  check(switches === features.length, `${switches} switches for ${features.length} features`);
  check(problems.length === 0, `errors on the dashboard: ${problems.join("; ")}`);
});

test("subscribing and publishing from the console shows the event in the log", async ({ dash }) => {
  await subscribe(dash, "dash-news");
  await logLine(dash, 'sse ← connected {"status":"connected"');
  const data = { greeting: "héllo from the console", n: [1, 2.5, null], quote: 'a "q" \\ b' };
  const id = await publishFromPage(dash, "dash-news", "", JSON.stringify(data));
  const event = await loggedEvent(dash, id);
  const expected = { type: "event", topic: "dash-news", event: "message", id, data };
  check(deepEqual(event, expected), `logged ${JSON.stringify(event)}`);
  // A named event (EventSource delivers it only to a listener for its name), and data that is
  // not JSON, which the page sends as a string.
  const named = await publishFromPage(dash, "dash-news", "update", "plain words, not JSON");
  const line = await logLine(dash, ` id=${named} `);
  check(line.includes("sse ← update "), `the named event was not logged by its name: ${line}`);
  const got = lineJson(line);
  check(got.event === "update" && got.data === "plain words, not JSON", JSON.stringify(got));
});

test("the counters move: published total and rate, /stats, the latency histogram", async (t) => {
  const { dash, addr } = t;
  const before = (await getJson(addr, "/stats")).messages.published;
  const shownBefore = await figure(dash, "total-published");
  // The rate is the growth since the previous poll, shown for one poll: watch for it first.
  const rateMoved = until(
    dash,
    () => parseFloat(document.getElementById("rate-published").textContent) > 0,
  );
  for (let n = 1; n <= 3; n++) {
    const id = await publishFromPage(dash, "dash-news", "", JSON.stringify({ batch: "c", n }));
    check((await loggedEvent(dash, id)).data.n === n, `event ${n} was not delivered`);
  }
  const after = await getJson(addr, "/stats");
  const published = after.messages.published;
  check(published >= before + 3, `/stats: ${before} published, then ${published}`);
  check(after.delivery_latency.count > 0, `/stats: ${after.delivery_latency.count} deliveries`);
  await figure(dash, "total-published", shownBefore + 3);
  await rateMoved;
  // One bar a bucket (the buckets are cumulative): the bars add up to the deliveries shown.
  await dash.locator("#latency-histogram .bar:not(.empty)").first().waitFor({ timeout: WAIT_MS });
  const [sum, deliveries] = await dash.evaluate(() => [
    [...document.querySelectorAll("#latency-histogram .bar")]
      .map((bar) => Number(bar.dataset.count))
      .reduce((a, b) => a + b, 0),
    Number(document.getElementById("lat-count").textContent),
  ]);
  check(sum === deliveries && sum > 0, `the bars add up to ${sum}, deliveries ${deliveries}`);
  check(/ ms$/.test(await dash.locator("#lat-p50").textContent()), "p50 is not shown in ms");
});

test("the sse-streaming switch turns SSE off and on; subscribing fails, then works", async (t) => {
  const { dash, addr } = t;
  await flip(dash, "sse-streaming", false);
  const off = (await getJson(addr, "/admin/features")).features["sse-streaming"];
  check(off === false, "the admin API still shows sse-streaming on");
  await dash.locator("#sub-topic").fill("dash-off");
  await dash.locator("#sub-button").click();
  await logLine(dash, "subscription to dash-off failed: HTTP 501: SSE streaming not enabled");
  const state = await dash.locator("#sub-state").textContent();
  check(state === "closed", `the refused subscription shows ${JSON.stringify(state)}`);

  await flip(dash, "sse-streaming", true);
  const on = (await getJson(addr, "/admin/features")).features["sse-streaming"];
  check(on === true, "the admin API still shows sse-streaming off");
  await subscribe(dash, "dash-on");
  const id = await publishFromPage(dash, "dash-on", "", '{"back":"on"}');
  const back = await loggedEvent(dash, id);
  check(deepEqual(back.data, { back: "on" }), `after SSE came back: ${JSON.stringify(back)}`);
});

test("a WebSocket joins a room from the console and gets what is published to it", async (t) => {
  const { dash } = t;
  await dash.locator("#ws-room").fill("dash-room");
  await dash.locator("#ws-button").click();
  await logLine(dash, 'ws ←  {"type":"joined","room":"dash-room"}');
  const id = await publishFromPage(dash, "dash-room", "", '{"to":"the room"}');
  const line = await logLine(dash, `"id":"${id}"`);
  check(line.includes("ws ← "), `not logged from the WebSocket: ${line}`);
  check(deepEqual(lineJson(line).data, { to: "the room" }), line);
});

test("a screenshot of the busy dashboard is saved to target/dashboard.png", async ({ dash }) => {
  check((await dash.locator("#latency-histogram .bar:not(.empty)").count()) > 0, "no bars");
  mkdirSync(dirname(DASHBOARD_SCREENSHOT), { recursive: true });
  await dash.screenshot({ path: DASHBOARD_SCREENSHOT, fullPage: true });
  const size = statSync(DASHBOARD_SCREENSHOT).size;
  check(size > 20_000, `a screenshot of ${size} bytes`);
  console.log(`screenshot: ${DASHBOARD_SCREENSHOT}`);
});

test("no page errors and no unexpected console errors on the dashboard", async ({ problems }) => {
  check(problems.length === 0, `errors on the dashboard: ${problems.join("; ")}`);
});

test("with an admin token, the page asks for it; a refused PUT reverts its switch", async (t) => {
  const server = await startServer({ MCP_STREAM_ADMIN_TOKEN: ADMIN_TOKEN });
  const page = await t.context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  try {
    await page.goto(`http://${server.addr}/`, { timeout: WAIT_MS });
    const asked = () => document.getElementById("features-status").textContent.includes("401");
    await until(page, asked);
    const said = await page.locator("#features-status").textContent();
    check(said.includes("HTTP 401: admin token required"), `the page says ${JSON.stringify(said)}`);
    check(await page.locator("#admin-token-form").isVisible(), "no admin token field");
    check((await page.locator("#features input.switch").count()) === 0, "switches without a token");
    await page.locator("#admin-token").fill(ADMIN_TOKEN);
    await page.locator("#admin-token-form button").click();
    await flip(page, "stream-compression", false);
    const seen = await getJson(server.addr, "/admin/features", ADMIN_TOKEN);
    check(seen.features["stream-compression"] === false, "the server has stream-compression on");
    const kept = await page.evaluate(() => sessionStorage.getItem("mcp-stream.admin-token"));
    check(kept === ADMIN_TOKEN, "the token is not kept in sessionStorage");
    // A wrong token: the PUT is refused, the reason logged, and the switch goes back.
    await page.locator("#admin-token").fill("wrong");
    await page.locator("#admin-token-form button").click();
    await page.locator("#feature-stream-compression").click();
    await logLine(page, "stream-compression: HTTP 401: admin token required");
    await until(page, () => !document.getElementById("feature-stream-compression").disabled);
    check(!(await page.locator("#feature-stream-compression").isChecked()), "the switch stayed on");
    const still = await getJson(server.addr, "/admin/features", ADMIN_TOKEN);
    check(still.features["stream-compression"] === false, "a refused PUT changed the feature");
    check(errors.length === 0, `page errors: ${errors.join("; ")}`);
  } finally {
    await page.close();
    server.child.kill("SIGKILL");
  }
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
    check(response && response.status() === 200, "the dashboard did not load");
    await page.evaluate(installPageHelpers);
    // The dashboard's tab: every page error and console error in it is a problem, but for the
    // one the SSE-off check causes on purpose (the browser reports the refused stream's 501).
    const dash = await context.newPage();
    const problems = [];
    dash.on("pageerror", (e) => problems.push(`page error: ${e}`));
    dash.on("console", (msg) => {
      if (msg.type() !== "error") return;
      const { url } = msg.location();
      if (/\/stream\/sse\?/.test(url) && /status of 501/.test(msg.text())) return;
      problems.push(`console error: ${msg.text()} (${url})`);
    });
    for (const { name, fn } of checks) {
      try {
        await fn({ page, dash, problems, context, addr: server.addr });
        passed += 1;
        console.log(`ok - ${name}`);
      } catch (e) {
        failed += 1;
        console.log(`not ok - ${name}\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
      }
    }
    if (pageErrors.length) console.log(`page errors: ${pageErrors.join("; ")}`);
    await page.bringToFront();
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
