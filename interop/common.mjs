// Shared by the Node interop suites (mcp-ts/test.mjs, gateway/test.mjs, browser/test.mjs): where
// the binary is, the bound of every wait, the environment variables cleared for each server
// started, the awkward text the echo checks use, and small assertion helpers.

import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const BIN = process.env.MCP_STREAM_BIN || join(ROOT, "target", "debug", "mcp-stream");
export const WAIT_MS = 10_000;
// Every variable the server reads: removed so that the caller's environment cannot change a test.
export const CONFIG_ENV = [
  "SSE_ENABLED", "WEBSOCKET_ENABLED", "MAX_CONNECTIONS", "STREAM_BUFFER_SIZE",
  "PROCESSING_INTERVAL", "STREAM_COMPRESSION", "CONNECTION_POOLING", "AUTO_RECONNECTION",
  "MONITORING_ENABLED", "STREAM_AUTHENTICATION", "STREAM_RATE_LIMITING",
  "MAX_REQUESTS_PER_MINUTE", "CORS_ENABLED", "MCP_STREAM_LISTEN", "MCP_STREAM_TOKENS",
  "MCP_STREAM_JWT_SECRET", "MCP_STREAM_ADMIN_TOKEN",
];
// Quotes, backslashes, JSON escapes, control characters, U+2028 and non-ASCII of every UTF-8
// length.
export const TRICKY =
  'she said "hi" \\ back\\\\slash \\" \u0000 \u0001 \u001f tab\t nl\n cr\r / \u007f ' +
  "\u2028\u2029 héllo — 日本語 🎉 \u{10ffff}";

/** `promise`, or a rejection naming `what` after `ms`. */
export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export function deepEqual(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}
