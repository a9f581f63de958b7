// Interop: the official MCP TypeScript SDK (@modelcontextprotocol/sdk) against the real
// mcp-stream binary, on its three transports: its Client over StreamableHTTPClientTransport at
// /mcp, over SSEClientTransport (legacy HTTP+SSE, 2024-11-05) at /sse, and over
// WebSocketClientTransport at ws://.../mcp (subprotocol mcp; the WebSocket is the `ws` package's,
// as Node 20 has no global WebSocket).
//
//   node interop/mcp-ts/test.mjs [RESULTS.json]
//
// Each check starts its own server on 127.0.0.1 with a port the kernel picks. The HTTP
// transports are given a fetch that records every HTTP exchange, so the checks wait on what the
// SDK did (its GET stream opening, the DELETE of terminateSession, the POSTs' 202) rather than on
// time; every wait is bounded by WAIT_MS. Prints one line per check and a summary, writes
// {"passed":N,"failed":M} to RESULTS.json when given, and exits non-zero on any failure.

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createInterface } from "node:readline";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { WebSocketClientTransport } from "@modelcontextprotocol/sdk/client/websocket.js";
import { McpError, ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import WebSocket from "ws";

import { BIN, CONFIG_ENV, TRICKY, WAIT_MS, check, deepEqual, withTimeout } from "../common.mjs";

// WebSocketClientTransport uses the global WebSocket, which Node 20 lacks: the pinned `ws` one
// stands in (set always, so that every Node runs the same client).
globalThis.WebSocket = WebSocket;


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
  const addr = first.slice(prefix.length).trim();
  return { child, addr, url: `http://${addr}/mcp` };
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

/** A ping in `sessionId` by hand, outside the SDK: { status, body }. */
async function rawPing(url, sessionId) {
  const r = await withTimeout(
    fetch(url, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json, text/event-stream",
        "Mcp-Session-Id": sessionId,
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }),
    }),
    "raw ping",
  );
  return { status: r.status, body: await r.json() };
}

/** A fetch for the transport that records every exchange: { method, status, rpc, headers }. */
function recordingFetch() {
  const exchanges = [];
  let wake = () => {};
  const recorder = async (url, init) => {
    const response = await fetch(url, init);
    let rpc;
    try {
      rpc = init?.body ? JSON.parse(init.body) : undefined;
    } catch {
      rpc = undefined;
    }
    exchanges.push({
      method: init?.method || "GET",
      url: String(url),
      status: response.status,
      rpc,
      headers: response.headers,
    });
    wake();
    return response;
  };
  /** Resolves once `predicate(exchanges)` holds. */
  const until = (what, predicate) =>
    withTimeout(
      (async () => {
        while (!predicate(exchanges)) {
          await new Promise((res) => {
            wake = res;
          });
        }
      })(),
      what,
    );
  return { fetch: recorder, exchanges, until };
}

/** An async queue of values, read with a bound. */
function queue() {
  const items = [];
  const waiters = [];
  return {
    push(v) {
      const w = waiters.shift();
      if (w) w(v);
      else items.push(v);
    },
    next(what) {
      if (items.length) return Promise.resolve(items.shift());
      return withTimeout(new Promise((res) => waiters.push(res)), what);
    },
    get size() {
      return items.length;
    },
  };
}

/** A connected SDK client with its transport, recorder and collected transport errors. */
async function connect(server, setup = () => {}) {
  const http = recordingFetch();
  const transport = new StreamableHTTPClientTransport(new URL(server.url), { fetch: http.fetch });
  const client = new Client({ name: "mcp-stream-interop", version: "0.0.0" });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  setup(client);
  await withTimeout(client.connect(transport), "connect (initialize)");
  return { client, transport, http, errors };
}

/** Asserts that the SDK reported no transport error, then closes the client. */
async function closeClean({ client, errors }) {
  check(errors.length === 0, `transport errors: ${errors.map(String).join("; ")}`);
  await client.close();
}

function textOf(result) {
  check(result.isError === false, `isError: ${JSON.stringify(result)}`);
  check(result.content.length === 1 && result.content[0].type === "text", JSON.stringify(result));
  return result.content[0].text;
}

// ---- the checks

const checks = [];
function test(name, fn) {
  checks.push({ name, fn });
}

test("initialize negotiates 2025-11-25, names the server and opens the GET stream", async (server) => {
  const ctx = await connect(server);
  const { client, transport, http } = ctx;
  check(client.getServerVersion()?.name === "mcp-stream", JSON.stringify(client.getServerVersion()));
  check(transport.protocolVersion === "2025-11-25", `protocol version ${transport.protocolVersion}`);
  const caps = client.getServerCapabilities();
  check(caps?.resources?.subscribe === true, `capabilities ${JSON.stringify(caps)}`);
  check(caps?.tools && caps?.logging, `capabilities ${JSON.stringify(caps)}`);
  check(/^[0-9a-f]{32}$/.test(transport.sessionId || ""), `session id ${transport.sessionId}`);
  // After notifications/initialized (202) the SDK opens the session's GET stream.
  await http.until("the GET stream", (xs) => xs.some((x) => x.method === "GET" && x.status === 200));
  const initialized = http.exchanges.filter((x) => x.rpc?.method === "notifications/initialized");
  check(deepEqual(initialized.map((x) => x.status), [202]), "notifications/initialized not 202");
  await closeClean(ctx);
});

test("ping and listTools", async (server) => {
  const { client } = await connect(server);
  await withTimeout(client.ping(), "ping");
  const { tools } = await withTimeout(client.listTools(), "listTools");
  const names = tools.map((t) => t.name);
  check(deepEqual(names, ["echo", "countdown", "publish", "history", "topics"]), `tools ${names}`);
  await withTimeout(client.setLoggingLevel("debug"), "logging/setLevel");
  await client.close();
});

test("echo returns quotes, backslashes and non-ASCII exactly", async (server) => {
  const { client } = await connect(server);
  for (const text of [TRICKY, "", "\\", '"', TRICKY.repeat(200)]) {
    const got = textOf(await withTimeout(client.callTool({ name: "echo", arguments: { text } }), "echo"));
    check(Buffer.from(got, "utf8").equals(Buffer.from(text, "utf8")), `echo changed ${JSON.stringify(got).slice(0, 200)}`);
  }
  await client.close();
});

test("an unknown tool is an McpError -32602 and the session carries on", async (server) => {
  const { client } = await connect(server);
  let error;
  try {
    await withTimeout(client.callTool({ name: "no-such-tool", arguments: {} }), "unknown tool");
  } catch (e) {
    error = e;
  }
  check(error instanceof McpError && error.code === -32602, `got ${error}`);
  await withTimeout(client.ping(), "ping");
  await client.close();
});

test("topics are resources that list and read", async (server) => {
  const ids = await publish(server.addr, { topic: "news", event: "update", data: { t: TRICKY } });
  const { client } = await connect(server);
  const { resources } = await withTimeout(client.listResources(), "listResources");
  check(deepEqual(resources.map((r) => r.uri), ["stream://topics/news"]), JSON.stringify(resources));
  const read = await withTimeout(client.readResource({ uri: "stream://topics/news" }), "readResource");
  const expected = [{ type: "event", topic: "news", event: "update", id: ids[0], data: { t: TRICKY } }];
  check(deepEqual(JSON.parse(read.contents[0].text), expected), JSON.stringify(read));
  await client.close();
});

test("three concurrent countdowns each get all progress in order through onprogress", async (server) => {
  const ctx = await connect(server);
  const { client } = ctx;
  const n = 10;
  const seen = [[], [], []];
  const results = await withTimeout(
    Promise.all(
      [0, 1, 2].map((k) =>
        client.callTool({ name: "countdown", arguments: { n, interval_ms: 100 } }, undefined, {
          // Counted as it arrives.
          onprogress: (p) => seen[k].push([p.progress, p.total]),
        }),
      ),
    ),
    "three countdowns",
  );
  const expected = Array.from({ length: n }, (_, i) => [i + 1, n]);
  results.forEach((result, k) => {
    check(textOf(result) === "done", `countdown ${k}: ${JSON.stringify(result)}`);
    check(deepEqual(seen[k], expected), `countdown ${k} progress ${JSON.stringify(seen[k])}`);
  });
  await closeClean(ctx);
});

test("a subscription receives resources/updated after an HTTP publish", async (server) => {
  const updates = queue();
  const ctx = await connect(server, (c) =>
    c.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updates.push(n.params.uri)),
  );
  const { client, http } = ctx;
  await http.until("the GET stream", (xs) => xs.some((x) => x.method === "GET" && x.status === 200));
  await withTimeout(client.subscribeResource({ uri: "stream://topics/news" }), "subscribe");
  await withTimeout(client.subscribeResource({ uri: "stream://topics/barrier.1" }), "subscribe");
  await publish(server.addr, { topic: "news", data: TRICKY });
  check((await updates.next("the update")) === "stream://topics/news", "first update");
  // An unsubscribed topic is not heard of: the barrier topic comes next.
  await publish(server.addr, { topic: "sport", data: 1 });
  await publish(server.addr, { topic: "barrier.1", data: 1 });
  check((await updates.next("the barrier")) === "stream://topics/barrier.1", "barrier.1");
  // The publish tool, from this very client.
  await withTimeout(client.callTool({ name: "publish", arguments: { topic: "news", data: 2 } }), "publish tool");
  check((await updates.next("the update")) === "stream://topics/news", "update after the publish tool");
  await withTimeout(client.unsubscribeResource({ uri: "stream://topics/news" }), "unsubscribe");
  await withTimeout(client.subscribeResource({ uri: "stream://topics/barrier.2" }), "subscribe");
  await publish(server.addr, { topic: "news", data: 3 });
  await publish(server.addr, { topic: "barrier.2", data: 1 });
  check((await updates.next("the barrier")) === "stream://topics/barrier.2", "barrier.2");
  check(updates.size === 0, "an update after unsubscribing");
  const gets = http.exchanges.filter((x) => x.method === "GET").map((x) => x.status);
  check(deepEqual(gets, [200]), `GET statuses ${gets}`);
  await closeClean(ctx);
});

test("terminateSession deletes the session", async (server) => {
  const { client, transport, http } = await connect(server);
  await withTimeout(client.ping(), "ping");
  const sid = transport.sessionId;
  const before = await rawPing(server.url, sid);
  check(before.status === 200 && deepEqual(before.body, { jsonrpc: "2.0", id: 1, result: {} }), JSON.stringify(before));
  await withTimeout(transport.terminateSession(), "terminateSession");
  const deletes = http.exchanges.filter((x) => x.method === "DELETE").map((x) => x.status);
  check(deepEqual(deletes, [200]), `DELETE statuses ${deletes}`);
  check(transport.sessionId === undefined, "the transport kept its session id");
  const after = await rawPing(server.url, sid);
  check(after.status === 404 && deepEqual(after.body, { error: "unknown session" }), JSON.stringify(after));
  await client.close();
});

// ---- the legacy HTTP+SSE transport (2024-11-05): GET /sse, POST /messages?sessionId=...

/** A client over SSEClientTransport at /sse, with its recorder and transport errors. */
async function connectLegacy(server, setup = () => {}) {
  const http = recordingFetch();
  const transport = new SSEClientTransport(new URL(`http://${server.addr}/sse`), { fetch: http.fetch });
  const client = new Client({ name: "mcp-stream-interop", version: "0.0.0" });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  setup(client);
  await withTimeout(client.connect(transport), "connect (initialize)");
  return { client, transport, http, errors };
}

/** The endpoint the SDK posts to, checked: one `/messages?sessionId=<32 hex>`, every POST 202. */
function legacyEndpoint({ http }) {
  const posts = http.exchanges.filter((x) => x.method === "POST");
  check(posts.length > 0, "no POST");
  const urls = [...new Set(posts.map((x) => x.url))];
  check(urls.length === 1, `POSTs went to ${urls}`);
  const url = new URL(urls[0]);
  check(url.pathname === "/messages" && /^[0-9a-f]{32}$/.test(url.searchParams.get("sessionId") || ""), `endpoint ${url}`);
  const statuses = posts.map((x) => x.status);
  check(statuses.every((st) => st === 202), `POST statuses ${statuses}`);
  return url;
}

/** POSTs `message` to a legacy endpoint by hand: { status, text }. */
async function rawLegacyPost(url, message) {
  const r = await withTimeout(
    fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(message) }),
    "raw POST /messages",
  );
  return { status: r.status, text: await r.text() };
}

/** Checks shared by the legacy SSE and WebSocket transports, on a connected client. */
async function plainRequests(client) {
  check(client.getServerVersion()?.name === "mcp-stream", JSON.stringify(client.getServerVersion()));
  const caps = client.getServerCapabilities();
  check(caps?.resources?.subscribe === true && caps?.tools, `capabilities ${JSON.stringify(caps)}`);
  await withTimeout(client.ping(), "ping");
  const { tools } = await withTimeout(client.listTools(), "listTools");
  const names = tools.map((t) => t.name);
  check(deepEqual(names, ["echo", "countdown", "publish", "history", "topics"]), `tools ${names}`);
  for (const text of [TRICKY, "", "\\", '"', TRICKY.repeat(200)]) {
    const got = textOf(await withTimeout(client.callTool({ name: "echo", arguments: { text } }), "echo"));
    check(Buffer.from(got, "utf8").equals(Buffer.from(text, "utf8")), `echo changed ${JSON.stringify(got).slice(0, 200)}`);
  }
  let error;
  try {
    await withTimeout(client.callTool({ name: "no-such-tool", arguments: {} }), "unknown tool");
  } catch (e) {
    error = e;
  }
  check(error instanceof McpError && error.code === -32602, `got ${error}`);
  await withTimeout(client.ping(), "ping");
}

/** Three concurrent countdowns (n=5, 100 ms apart), each counting its progress as it arrives. */
async function threeCountdowns(client) {
  const n = 5;
  const seen = [[], [], []];
  const results = await withTimeout(
    Promise.all(
      [0, 1, 2].map((k) =>
        client.callTool({ name: "countdown", arguments: { n, interval_ms: 100 } }, undefined, {
          onprogress: (p) => seen[k].push([p.progress, p.total]),
        }),
      ),
    ),
    "three countdowns",
  );
  const expected = Array.from({ length: n }, (_, i) => [i + 1, n]);
  results.forEach((result, k) => {
    check(textOf(result) === "done", `countdown ${k}: ${JSON.stringify(result)}`);
    check(deepEqual(seen[k], expected), `countdown ${k} progress ${JSON.stringify(seen[k])}`);
  });
}

/** Subscribes; an HTTP publish on the topic gives notifications/resources/updated, others don't. */
async function subscriptionHearsOfPublish(server, client, updates) {
  await withTimeout(client.subscribeResource({ uri: "stream://topics/news" }), "subscribe");
  await withTimeout(client.subscribeResource({ uri: "stream://topics/barrier.1" }), "subscribe");
  await publish(server.addr, { topic: "news", data: TRICKY });
  check((await updates.next("the update")) === "stream://topics/news", "first update");
  await publish(server.addr, { topic: "sport", data: 1 });
  await publish(server.addr, { topic: "barrier.1", data: 1 });
  check((await updates.next("the barrier")) === "stream://topics/barrier.1", "barrier.1");
  await withTimeout(client.unsubscribeResource({ uri: "stream://topics/news" }), "unsubscribe");
  await withTimeout(client.subscribeResource({ uri: "stream://topics/barrier.2" }), "subscribe");
  await publish(server.addr, { topic: "news", data: 3 });
  await publish(server.addr, { topic: "barrier.2", data: 1 });
  check((await updates.next("the barrier")) === "stream://topics/barrier.2", "barrier.2");
  check(updates.size === 0, "an update after unsubscribing");
}

test("legacy SSE: initialize, ping, listTools, echo byte-exact, McpError -32602", async (server) => {
  const ctx = await connectLegacy(server);
  await plainRequests(ctx.client);
  const gets = ctx.http.exchanges.filter((x) => x.method === "GET");
  check(
    deepEqual(gets.map((x) => [x.status, x.headers.get("content-type")]), [[200, "text/event-stream"]]),
    `GET /sse: ${JSON.stringify(gets.map((x) => x.status))}`,
  );
  legacyEndpoint(ctx);
  const methods = ctx.http.exchanges.filter((x) => x.method === "POST").map((x) => x.rpc?.method);
  check(deepEqual(methods.slice(0, 2), ["initialize", "notifications/initialized"]), `POSTs ${methods}`);
  await closeClean(ctx);
});

test("legacy SSE: three concurrent countdowns each get all progress in order", async (server) => {
  const ctx = await connectLegacy(server);
  await threeCountdowns(ctx.client);
  legacyEndpoint(ctx);
  await closeClean(ctx);
});

test("legacy SSE: a subscription receives resources/updated after an HTTP publish", async (server) => {
  const updates = queue();
  const ctx = await connectLegacy(server, (c) =>
    c.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updates.push(n.params.uri)),
  );
  await subscriptionHearsOfPublish(server, ctx.client, updates);
  legacyEndpoint(ctx);
  await closeClean(ctx);
});

test("legacy SSE: closing the client ends the session (its endpoint is 404)", async (server) => {
  const ctx = await connectLegacy(server);
  await withTimeout(ctx.client.ping(), "ping");
  const endpoint = legacyEndpoint(ctx);
  // A notification that needs no answer: posting it by hand leaves the SDK's stream alone.
  const note = { jsonrpc: "2.0", method: "notifications/roots/list_changed" };
  const before = await rawLegacyPost(endpoint, note);
  check(before.status === 202, `before closing: ${JSON.stringify(before)}`);
  await closeClean(ctx);
  // Once the server has seen the stream end, the session is gone.
  const after = await withTimeout(
    (async () => {
      for (;;) {
        const r = await rawLegacyPost(endpoint, note);
        if (r.status !== 202) return r;
        await new Promise((res) => setTimeout(res, 20)); // polling a condition, bounded
      }
    })(),
    "the session ends with its stream",
  );
  check(after.status === 404 && deepEqual(JSON.parse(after.text), { error: "unknown session" }), JSON.stringify(after));
});

// ---- WebSocket at /mcp (subprotocol mcp)

/** A client over WebSocketClientTransport at ws://.../mcp, with its transport errors. */
async function connectWs(server, setup = () => {}) {
  const transport = new WebSocketClientTransport(new URL(`ws://${server.addr}/mcp`));
  const client = new Client({ name: "mcp-stream-interop", version: "0.0.0" });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  setup(client);
  await withTimeout(client.connect(transport), "connect (initialize)");
  // The server selected the subprotocol the SDK offered.
  check(transport._socket?.protocol === "mcp", `subprotocol ${JSON.stringify(transport._socket?.protocol)}`);
  return { client, transport, errors };
}

test("WebSocket: initialize, ping, listTools, echo byte-exact, McpError -32602", async (server) => {
  const ctx = await connectWs(server);
  await plainRequests(ctx.client);
  await closeClean(ctx);
});

test("WebSocket: three concurrent countdowns each get all progress in order", async (server) => {
  const ctx = await connectWs(server);
  await threeCountdowns(ctx.client);
  await closeClean(ctx);
});

test("WebSocket: a subscription receives resources/updated after an HTTP publish", async (server) => {
  const updates = queue();
  const ctx = await connectWs(server, (c) =>
    c.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updates.push(n.params.uri)),
  );
  await subscriptionHearsOfPublish(server, ctx.client, updates);
  await closeClean(ctx);
});

test("WebSocket: closing the client ends the connection with a clean close handshake", async (server) => {
  const ctx = await connectWs(server);
  await withTimeout(ctx.client.ping(), "ping");
  const socket = ctx.transport._socket;
  const closed = new Promise((res) => socket.addEventListener("close", (e) => res(e)));
  let clientClosed = false;
  ctx.client.onclose = () => {
    clientClosed = true;
  };
  await closeClean(ctx);
  const event = await withTimeout(closed, "the close handshake");
  // The server answered the client's close frame before ending the connection.
  check(event.wasClean === true, `close: code ${event.code}, clean ${event.wasClean}`);
  check(clientClosed, "the Client was not told of the close");
  check(socket.readyState === WebSocket.CLOSED, `readyState ${socket.readyState}`);
});

// ---- main

async function main() {
  const resultsFile = process.argv[2];
  let passed = 0;
  let failed = 0;
  for (const { name, fn } of checks) {
    let server;
    try {
      server = await startServer();
      await withTimeout(fn(server), name, 4 * WAIT_MS);
      passed += 1;
      console.log(`ok - ${name}`);
    } catch (e) {
      failed += 1;
      console.log(`not ok - ${name}\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
    } finally {
      if (server) server.child.kill("SIGKILL");
    }
  }
  console.log(`mcp-ts: ${passed} passed, ${failed} failed`);
  if (resultsFile) writeFileSync(resultsFile, JSON.stringify({ passed, failed }));
  process.exit(failed === 0 ? 0 : 1);
}

main();
