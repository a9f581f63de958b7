"""Shared by the pytest interop suites (test_websocket.py, test_mcp.py): the real mcp-stream
binary started on 127.0.0.1 with a port the kernel picks, and the bound every wait shares.
conftest.py makes it the `server` fixture.
"""

import asyncio
import json
import os
import pathlib
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request


ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = os.environ.get("MCP_STREAM_BIN", str(ROOT / "target" / "debug" / "mcp-stream"))
WAIT = 10.0

# Every variable the server reads: removed so that the caller's environment cannot change a test.
CONFIG_ENV = [
    "SSE_ENABLED", "WEBSOCKET_ENABLED", "MAX_CONNECTIONS", "STREAM_BUFFER_SIZE",
    "PROCESSING_INTERVAL", "STREAM_COMPRESSION", "CONNECTION_POOLING", "AUTO_RECONNECTION",
    "MONITORING_ENABLED", "STREAM_AUTHENTICATION", "STREAM_RATE_LIMITING",
    "MAX_REQUESTS_PER_MINUTE", "CORS_ENABLED", "MCP_STREAM_LISTEN", "MCP_STREAM_TOKENS",
    "MCP_STREAM_JWT_SECRET", "MCP_STREAM_ADMIN_TOKEN",
]


class Server:
    """A running `mcp-stream serve --listen 127.0.0.1:0`."""

    def __init__(self, config=None):
        self._config_file = None
        args = [BIN, "serve", "--listen", "127.0.0.1:0", "--log-level", "warn"]
        if config is not None:
            f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            json.dump(config, f)
            f.close()
            self._config_file = f.name
            args += ["--config", f.name]
        env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, text=True,
        )
        line = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(WAIT)
        if not line or not line[0].startswith("listening on http://"):
            self.stop()
            raise RuntimeError(f"unexpected first line {line!r}")
        self.addr = line[0].strip().removeprefix("listening on http://")
        self.url = f"http://{self.addr}/mcp"
        self.sse_url = f"http://{self.addr}/sse"
        self.ws_url = f"ws://{self.addr}/stream/ws"

    def publish(self, body):
        """POST /stream/publish; asserts 202; returns the ids."""
        request = urllib.request.Request(
            f"http://{self.addr}/stream/publish", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, timeout=WAIT) as r:
            assert r.status == 202
            return json.loads(r.read())["ids"]

    def raw_ping(self, session_id):
        """A ping in `session_id` by hand, outside the SDK: (status, JSON body)."""
        request = urllib.request.Request(
            self.url, data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": session_id,
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def raw_legacy_post(self, endpoint, message):
        """POSTs `message` to a legacy `/messages?sessionId=...` endpoint by hand: (status, body)."""
        request = urllib.request.Request(
            f"http://{self.addr}{endpoint}", data=json.dumps(message).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        if self._config_file:
            os.unlink(self._config_file)


def run(coro):
    """Runs one test's coroutine, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, 60))
