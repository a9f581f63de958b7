// Interop: the MCP stdio gateway, with stdio MCP servers that no one here wrote, driven through
// the real mcp-stream binary by the official MCP TypeScript SDK client (@modelcontextprotocol/sdk),
// on its three transports: StreamableHTTPClientTransport at /mcp, SSEClientTransport (legacy
// HTTP+SSE) at /sse and WebSocketClientTransport at ws://.../mcp (the `ws` package's WebSocket).
//
//   node interop/gateway/test.mjs [RESULTS.json]
//
// mcp-stream runs with `mcp.stdio` set, so every MCP session is served by a child process of its
// own. The servers behind it:
// - py: interop/gateway/py_server.py on the official Python SDK (needs interop/.pydeps, which
//   run.sh installs), started with the object form of `mcp.stdio` (command, args, env);
// - everything: @modelcontextprotocol/server-everything (pinned in package.json), started with
//   the string form (/bin/sh -c), which exports the shell's pid as CHILD_PID before `exec node`:
//   its get-env tool then names the pid of the process serving the session.
//
// Each check starts its own mcp-stream on 127.0.0.1 with a port the kernel picks. Every message
// the transport delivers to the SDK, and every one the SDK sends, is recorded in order ("the
// wire"), so progress is checked as it arrived: the SDK's own onprogress can lose the last
// notification when it comes in the same read as the answer (see /work/shared/PITFALLS.md).
// Every wait is bounded. Prints one line per check and a summary, writes {"passed":N,"failed":M}
// to RESULTS.json when given, and exits non-zero on any failure.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { WebSocketClientTransport } from "@modelcontextprotocol/sdk/client/websocket.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import WebSocket from "ws";

import { BIN, CONFIG_ENV, TRICKY, WAIT_MS, check, deepEqual, withTimeout } from "../common.mjs";

// WebSocketClientTransport uses the global WebSocket, which Node 20 lacks: the pinned `ws` one
// stands in (set always, so that every Node runs the same client).
globalThis.WebSocket = WebSocket;

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "..", "..");
const PYDEPS = join(ROOT, "interop", ".pydeps");
const EVERYTHING = join(HERE, "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js");
// How soon a child must be gone once its session has ended.
const EXIT_WAIT_MS = 5_000;
// About 500 KB of UTF-8 (a mix of 1- to 4-byte characters), that JSON keeps nearly as is.
const LARGE = "héllo — 日本語 🎉 0123456789 abcdefghijklmnopqrstuvwxyz\n".repeat(7900);

function short(text) {
  const s = JSON.stringify(text);
  return s.length > 200 ? `${s.slice(0, 200)}... (${s.length} chars)` : s;
}

// ---- the servers behind the gateway

const PY = {
  id: "py",
  name: "gateway-fixture",
  marker: "py_server.py",
  config() {
    check(existsSync(join(PYDEPS, "mcp")), `${PYDEPS}/mcp is missing: run interop/run.sh`);
    // The object form.
    return {
      mcp: {
        stdio: { command: "python3", args: [join(HERE, "py_server.py")], env: { PYTHONPATH: PYDEPS } },
      },
    };
  },
  checkTools(names) {
    check(deepEqual([...names].sort(), ["big", "echo", "slow", "whoami"]), `tools ${names}`);
  },
  echo: (text) => ["echo", { text }, text],
  /** A call that reports progress 1..steps of steps: [tool, arguments, answer]. */
  progress: (steps) => ["slow", { steps, delay_ms: 20 }, `done after ${steps} steps`],
  large() {
    const size = 500_000;
    return ["big", { size }, "0123456789abcdef".repeat(size / 16 + 1).slice(0, size)];
  },
  async pid(client) {
    return Number(textOf(await withTimeout(client.callTool({ name: "whoami", arguments: {} }), "whoami")));
  },
};

const EVERYTHING_SERVER = {
  id: "everything",
  name: "mcp-servers/everything",
  marker: "server-everything/dist/index.js",
  config() {
    check(existsSync(EVERYTHING), `${EVERYTHING} is missing: run interop/run.sh (npm ci in interop/gateway)`);
    // The string form, run by /bin/sh -c; `exec` keeps the shell's pid for node.
    return { mcp: { stdio: `export CHILD_PID=$$; exec node '${EVERYTHING}' stdio` } };
  },
  checkTools(names) {
    // Tools that depend on the client's capabilities are registered after
    // notifications/initialized; these are always there.
    for (const name of ["echo", "get-env", "get-sum", "trigger-long-running-operation"]) {
      check(names.includes(name), `tools ${names}`);
    }
  },
  echo: (message) => ["echo", { message }, `Echo: ${message}`],
  progress: (steps) => [
    "trigger-long-running-operation",
    { duration: steps / 10, steps },
    `Long running operation completed. Duration: ${steps / 10} seconds, Steps: ${steps}.`,
  ],
  large() {
    return this.echo(LARGE);
  },
  async pid(client) {
    const env = JSON.parse(textOf(await withTimeout(client.callTool({ name: "get-env", arguments: {} }), "get-env")));
    return Number(env.CHILD_PID);
  },
};

// ---- mcp-stream

/** Starts `mcp-stream serve --listen 127.0.0.1:0 --config <config>`. */
async function startGateway(config) {
  const dir = mkdtempSync(join(tmpdir(), "mcp-stream-gateway-"));
  const file = join(dir, "config.json");
  writeFileSync(file, JSON.stringify(config));
  const env = { ...process.env };
  for (const name of CONFIG_ENV) delete env[name];
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", "--config", file], {
    env,
    stdio: ["ignore", "pipe", "ignore"],
  });
  const stop = () => {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  try {
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
    return { child, addr, url: `http://${addr}/mcp`, stop, exited: () => child.exitCode !== null || child.signalCode !== null };
  } catch (e) {
    stop();
    throw e;
  }
}

// ---- the client side

/**
 * A fetch for the transport that records every exchange: { method, status, rpc, headers }.
 * A POST answered with an event stream also gets `events`, the JSON messages of that stream in
 * order (read from a copy of the body), and `ended`, which resolves when the stream ends.
 */
function recordingFetch() {
  const exchanges = [];
  const recorder = async (url, init) => {
    const response = await fetch(url, init);
    let rpc;
    try {
      rpc = init?.body ? JSON.parse(init.body) : undefined;
    } catch {
      rpc = undefined;
    }
    const exchange = { method: init?.method || "GET", url: String(url), status: response.status, rpc, headers: response.headers };
    exchanges.push(exchange);
    const type = response.headers.get("content-type") || "";
    if (exchange.method !== "POST" || !type.startsWith("text/event-stream") || !response.body) return response;
    const [mine, theirs] = response.body.tee();
    exchange.events = [];
    exchange.ended = (async () => {
      const decoder = new TextDecoder();
      let buffer = "";
      for await (const chunk of mine) {
        buffer += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
          buffer = buffer.slice(end + 2);
          if (data.length) exchange.events.push(JSON.parse(data.join("\n")));
        }
      }
    })();
    return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
  return { fetch: recorder, exchanges };
}

const TRANSPORTS = {
  "streamable-http": (gw, http) => new StreamableHTTPClientTransport(new URL(gw.url), { fetch: http.fetch }),
  "legacy-sse": (gw, http) => new SSEClientTransport(new URL(`http://${gw.addr}/sse`), { fetch: http.fetch }),
  websocket: (gw) => new WebSocketClientTransport(new URL(`ws://${gw.addr}/mcp`)),
};

/**
 * A connected client through the gateway: { client, transport, http, errors, wire }. `wire`
 * holds ["in" | "out", message] in the order the transport delivered or was given them.
 */
async function connect(gw, transportName, { capabilities = {}, setup = () => {} } = {}) {
  const http = recordingFetch();
  const transport = TRANSPORTS[transportName](gw, http);
  const client = new Client({ name: "mcp-stream-gateway-interop", version: "0.0.0" }, { capabilities });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  setup(client);
  const wire = [];
  const send = transport.send.bind(transport);
  transport.send = (message, options) => {
    wire.push(["out", message]);
    return send(message, options);
  };
  // The SDK's connect chains the handler it finds: the recorder sees each message first.
  transport.onmessage = (message) => wire.push(["in", message]);
  await withTimeout(client.connect(transport), "connect (initialize)");
  return { client, transport, http, errors, wire, transportName };
}

/**
 * The SDK's errors, less the one it makes itself (PITFALLS.md, "MCP clients"): when the last
 * progress notification of a request and the request's answer arrive in one read (legacy SSE,
 * WebSocket), it handles the answer first and then reports the notification as "for an unknown
 * token". Such an error is excused only when the wire shows that very notification delivered
 * before the answer.
 */
function realErrors(ctx) {
  const prefix = "Received a progress notification for an unknown token: ";
  return ctx.errors.filter((e) => {
    const text = String(e.message || e);
    if (!text.startsWith(prefix)) return true;
    const note = JSON.parse(text.slice(prefix.length));
    const token = note.params?.progressToken;
    const noteAt = ctx.wire.findIndex(
      ([dir, m]) => dir === "in" && m.method === note.method && m.params?.progressToken === token && m.params?.progress === note.params?.progress,
    );
    const answerAt = ctx.wire.findIndex(([dir, m]) => dir === "in" && m.id === token && ("result" in m || "error" in m));
    return !(noteAt >= 0 && answerAt > noteAt);
  });
}

/** Ends the session the way each transport does: DELETE (Streamable HTTP), or closing. */
async function leave(ctx) {
  const errors = realErrors(ctx);
  check(errors.length === 0, `transport errors: ${errors.map(String).join("; ")}`);
  if (ctx.transportName === "streamable-http") {
    await withTimeout(ctx.transport.terminateSession(), "terminateSession");
    const deletes = ctx.http.exchanges.filter((x) => x.method === "DELETE").map((x) => x.status);
    check(deepEqual(deletes, [200]), `DELETE statuses ${deletes}`);
  }
  await withTimeout(ctx.client.close(), "close");
}

function textOf(result) {
  check(result.isError !== true, `isError: ${short(result)}`);
  check(result.content.length === 1 && result.content[0].type === "text", short(result));
  return result.content[0].text;
}

async function callText(client, [name, args]) {
  return textOf(await withTimeout(client.callTool({ name, arguments: args }), name));
}

/**
 * Calls `tool` with a progress token and checks, on the wire, that its progress notifications
 * came 1..steps of steps, in order, all before its answer. Returns the answer's text and what
 * the SDK's onprogress saw.
 */
async function callWithProgress(ctx, [tool, args, expected], steps) {
  const seen = [];
  const result = await withTimeout(
    ctx.client.callTool({ name: tool, arguments: args }, undefined, {
      onprogress: (p) => seen.push([p.progress, p.total]),
    }),
    tool,
  );
  check(textOf(result) === expected, `${tool}: ${short(result)}`);
  const [request] = ctx.wire.filter(
    ([dir, m]) => dir === "out" && m.method === "tools/call" && m.params?._meta?.progressToken !== undefined && m.params?.name === tool && deepEqual(m.params.arguments, args),
  ).map(([, m]) => m);
  check(request, "the request is not on the wire");
  const token = request.params._meta.progressToken;
  const answerAt = ctx.wire.findIndex(([dir, m]) => dir === "in" && m.id === request.id && ("result" in m || "error" in m));
  check(answerAt >= 0, "the answer is not on the wire");
  const progress = ctx.wire
    .map(([dir, m], at) => ({ dir, m, at }))
    .filter(({ dir, m }) => dir === "in" && m.method === "notifications/progress" && m.params.progressToken === token);
  const wanted = Array.from({ length: steps }, (_, i) => [i + 1, steps]);
  check(deepEqual(progress.map(({ m }) => [m.params.progress, m.params.total]), wanted),
    `progress on the wire: ${JSON.stringify(progress.map(({ m }) => m.params.progress))}`);
  check(progress.every(({ at }) => at < answerAt), "progress after the answer");
  // What the SDK handed onprogress is in order too (it may lack the last one: PITFALLS).
  check(deepEqual(seen, wanted.slice(0, seen.length)), `onprogress saw ${JSON.stringify(seen)}`);
  if (ctx.transportName === "streamable-http") {
    // The progress went on the stream of the POST that carried the request, then the answer,
    // and the stream ended.
    const [post] = ctx.http.exchanges.filter((x) => x.method === "POST" && x.rpc?.id === request.id);
    check(post?.events, `the request's POST: ${post?.status} ${post?.headers.get("content-type")}`);
    await withTimeout(post.ended, "the end of the request's stream");
    const onStream = post.events.map((m) => (m.method === "notifications/progress" && m.params.progressToken === token ? m.params.progress : m.id === request.id ? "answer" : short(m)));
    check(deepEqual(onStream, [...wanted.map(([p]) => p), "answer"]), `the request's stream carried ${JSON.stringify(onStream)}`);
  }
  return seen;
}

// ---- processes

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    if (e.code === "ESRCH") return false;
    throw e;
  }
}

function parentOf(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // pid (comm) state ppid ...: comm may hold spaces and parentheses.
  return Number(stat.slice(stat.lastIndexOf(")") + 1).trim().split(/\s+/)[1]);
}

function cmdlineOf(pid) {
  return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
}

/** `pid` runs the upstream server as a child of mcp-stream. */
function checkChild(gw, upstream, pid) {
  check(Number.isInteger(pid) && alive(pid), `pid ${pid} is not running`);
  check(cmdlineOf(pid).includes(upstream.marker), `pid ${pid} runs ${cmdlineOf(pid)}`);
  check(parentOf(pid) === gw.child.pid, `pid ${pid} is a child of ${parentOf(pid)}, not of mcp-stream ${gw.child.pid}`);
}

async function untilGone(pid) {
  await withTimeout(
    (async () => {
      while (alive(pid)) await new Promise((res) => setTimeout(res, 20)); // polling, bounded
    })(),
    `child ${pid} to exit`,
    EXIT_WAIT_MS,
  );
}

// ---- the checks

const checks = [];
/** A check: `start()` starts its mcp-stream, `fn(gateway)` runs against it. */
function test(name, start, fn) {
  checks.push({ name, start, fn });
}

for (const upstream of [PY, EVERYTHING_SERVER]) {
  for (const transportName of Object.keys(TRANSPORTS)) {
    const label = `${upstream.id} over ${transportName}`;
    const gateway = (extra = {}) => startGateway({ ...upstream.config(), ...extra });

    test(`${label}: initialize names the child, listTools, echo byte-exact`, gateway, async (gw) => {
      const ctx = await connect(gw, transportName);
      const { client, transport, http } = ctx;
      // The child answered initialize, not mcp-stream's built-in server.
      check(client.getServerVersion()?.name === upstream.name, JSON.stringify(client.getServerVersion()));
      check(client.getServerCapabilities()?.tools, JSON.stringify(client.getServerCapabilities()));
      const [initialize] = ctx.wire.filter(([dir, m]) => dir === "in" && m.result?.protocolVersion).map(([, m]) => m);
      check(initialize?.result.protocolVersion === "2025-11-25", `initialize answer ${short(initialize)}`);
      if (transportName === "streamable-http") {
        // initialize is answered on an SSE stream, with the session's id.
        const posts = http.exchanges.filter((x) => x.rpc?.method === "initialize");
        check(posts.length === 1 && posts[0].status === 200, `initialize POSTs ${posts.map((x) => x.status)}`);
        check((posts[0].headers.get("content-type") || "").startsWith("text/event-stream"), `content-type ${posts[0].headers.get("content-type")}`);
        check(/^[0-9a-f]{32}$/.test(transport.sessionId || ""), `session id ${transport.sessionId}`);
      } else if (transportName === "legacy-sse") {
        const statuses = http.exchanges.filter((x) => x.method === "POST").map((x) => x.status);
        check(statuses.length > 0 && statuses.every((s) => s === 202), `POST statuses ${statuses}`);
      } else {
        check(transport._socket?.protocol === "mcp", `subprotocol ${JSON.stringify(transport._socket?.protocol)}`);
      }
      const { tools } = await withTimeout(client.listTools(), "listTools");
      upstream.checkTools(tools.map((t) => t.name));
      for (const text of [TRICKY, "", TRICKY.repeat(50)]) {
        const [name, args, expected] = upstream.echo(text);
        const got = await callText(client, [name, args]);
        check(Buffer.from(got, "utf8").equals(Buffer.from(expected, "utf8")), `echo changed ${short(got)}`);
      }
      await withTimeout(client.ping(), "ping");
      await leave(ctx);
    });

    test(`${label}: a call gets all its progress in order before its answer`, gateway, async (gw) => {
      const ctx = await connect(gw, transportName);
      const steps = 8;
      await callWithProgress(ctx, upstream.progress(steps), steps);
      await leave(ctx);
    });

    // The everything server's large answer echoes a large request: over WebSocket that request
    // must fit the inbound message cap (64 KiB by default).
    const large = upstream === EVERYTHING_SERVER && transportName === "websocket"
      ? () => gateway({ streaming: { websocket: { max_message_bytes: 1 << 20 }, backpressure: { max_queue_bytes: 1 << 21 } } })
      : gateway;
    test(`${label}: a large answer (500 KB) arrives exactly`, large, async (gw) => {
      const ctx = await connect(gw, transportName);
      const [name, args, expected] = upstream.large();
      const got = await callText(ctx.client, [name, args]);
      check(got.length === expected.length, `length ${got.length}, not ${expected.length}`);
      check(got === expected, "the large answer differs");
      check((await callText(ctx.client, upstream.echo("after"))) === upstream.echo("after")[2], "echo after");
      await leave(ctx);
    });

    test(`${label}: two sessions have two children; each ends with its session`, gateway, async (gw) => {
      const a = await connect(gw, transportName);
      const b = await connect(gw, transportName);
      const [aPid, bPid] = await Promise.all([upstream.pid(a.client), upstream.pid(b.client)]);
      check(aPid !== bPid, `both sessions served by pid ${aPid}`);
      checkChild(gw, upstream, aPid);
      checkChild(gw, upstream, bPid);
      // At once in both sessions: calls with progress of different lengths and echoes of
      // different texts; each session gets its own answers only.
      const work = async (ctx, steps, text) => {
        const [, , expected] = upstream.echo(text);
        const [, echoed] = await Promise.all([
          callWithProgress(ctx, upstream.progress(steps), steps),
          callText(ctx.client, upstream.echo(text)),
        ]);
        check(echoed === expected, `echo got ${short(echoed)}`);
      };
      await withTimeout(Promise.all([work(a, 3, `session a ${TRICKY}`), work(b, 6, `session b ${TRICKY}`)]), "work in both sessions");
      check((await upstream.pid(a.client)) === aPid && (await upstream.pid(b.client)) === bPid, "the pids changed");
      // Ending A ends A's child only; B's child carries on serving B.
      await leave(a);
      await untilGone(aPid);
      check(alive(bPid), "B's child is gone with A's session");
      check((await callText(b.client, upstream.echo("b still here"))) === upstream.echo("b still here")[2], "echo in B");
      await leave(b);
      await untilGone(bPid);
      check(!gw.exited(), "mcp-stream exited");
    });
  }
}

for (const transportName of Object.keys(TRANSPORTS)) {
  test(`everything over ${transportName}: the child's sampling request reaches the client, its answer the child`,
    () => startGateway(EVERYTHING_SERVER.config()), async (gw) => {
      const asked = [];
      const ctx = await connect(gw, transportName, {
        capabilities: { sampling: {} },
        setup: (client) =>
          client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
            asked.push(request.params);
            return { role: "assistant", content: { type: "text", text: `sampled ${TRICKY}` }, model: "interop-model", stopReason: "endTurn" };
          }),
      });
      const text = await callText(ctx.client, ["trigger-sampling-request", { prompt: `hi ${TRICKY}`, maxTokens: 7 }]);
      const prefix = "LLM sampling result: \n";
      check(text.startsWith(prefix), short(text));
      const answer = JSON.parse(text.slice(prefix.length));
      check(answer.model === "interop-model" && answer.role === "assistant", short(answer));
      check(deepEqual(answer.content, { type: "text", text: `sampled ${TRICKY}` }), short(answer.content));
      check(asked.length === 1 && asked[0].maxTokens === 7, `asked ${short(asked)}`);
      check(asked[0].messages[0].content.text === `Resource trigger-sampling-request context: hi ${TRICKY}`, short(asked[0]));
      // The request came from the child, on the wire, and the SDK's answer went back.
      const requests = ctx.wire.filter(([dir, m]) => dir === "in" && m.method === "sampling/createMessage");
      check(requests.length === 1, `sampling requests on the wire: ${requests.length}`);
      const answers = ctx.wire.filter(([dir, m]) => dir === "out" && m.id === requests[0][1].id && m.result);
      check(answers.length === 1, "the SDK's answer is not on the wire");
      await leave(ctx);
    });
}

// ---- main

async function main() {
  const resultsFile = process.argv[2];
  let passed = 0;
  let failed = 0;
  const began = Date.now();
  // GATEWAY_TEST_FILTER=text runs only the checks whose name holds it.
  const only = process.env.GATEWAY_TEST_FILTER || "";
  for (const { name, start, fn } of checks.filter((c) => c.name.includes(only))) {
    let gw;
    try {
      gw = await start();
      await withTimeout(fn(gw), name, 4 * WAIT_MS);
      passed += 1;
      console.log(`ok - ${name}`);
    } catch (e) {
      failed += 1;
      console.log(`not ok - ${name}\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
    } finally {
      if (gw) gw.stop();
    }
  }
  console.log(`gateway-ts: ${passed} passed, ${failed} failed (${((Date.now() - began) / 1000).toFixed(1)} s)`);
  if (resultsFile) writeFileSync(resultsFile, JSON.stringify({ passed, failed }));
  process.exit(failed === 0 ? 0 : 1);
}

main();
