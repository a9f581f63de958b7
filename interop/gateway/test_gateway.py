"""Interop: the MCP stdio gateway, with stdio MCP servers that no one here wrote, driven through
the real mcp-stream binary by the official MCP Python SDK client (`mcp` on PyPI).

Run by interop/run.sh (which installs the pinned packages, and the npm server into
interop/gateway/node_modules). mcp-stream runs with `mcp.stdio` set, so every MCP session is
served by a child process of its own; each test starts its own mcp-stream on 127.0.0.1 with a
port the kernel picks, and stops it afterwards. The servers behind it:

- `py`: interop/gateway/py_server.py on the official Python SDK (`MCPServer`), started with the
  object form of `mcp.stdio` (`command`, `args`, `env`);
- `everything`: `@modelcontextprotocol/server-everything` (the TypeScript SDK's reference
  server, pinned in package.json), started with the string form (`/bin/sh -c`), which exports
  the shell's pid as CHILD_PID before `exec node`: its `get-env` tool then names the pid of the
  process serving the session.

The client talks to them over Streamable HTTP (`/mcp`) and legacy HTTP+SSE (`/sse`); the SDK
has no WebSocket client (gateway/test.mjs covers WebSocket). Every wait is bounded; where the
server has to notice something first (a child exiting), the tests poll that condition, bounded.
"""

import asyncio
import contextlib
import json
import os
import pathlib
import re
import shlex
import sys

import httpx2
import mcp
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from server import WAIT, Server, run  # noqa: E402  (interop/server.py)

pytestmark = pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")

# How soon a child must be gone once its session has ended.
EXIT_WAIT = 5.0
# Quotes, backslashes, JSON escapes, control characters, U+2028 and non-ASCII of every UTF-8
# length.
TRICKY = (
    'she said "hi" \\ back\\\\slash \\" \x00 \x01 \x1f tab\t nl\n cr\r / \x7f '
    "\u2028\u2029 héllo — 日本語 🎉 \U0010ffff"
)
# About 500 KB of UTF-8 (a mix of 1- to 4-byte characters), that JSON keeps nearly as is.
LARGE = "héllo — 日本語 🎉 0123456789 abcdefghijklmnopqrstuvwxyz\n" * 7900
assert 490_000 < len(LARGE.encode("utf-8")) < 560_000

EVERYTHING = HERE / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


# ---- the servers behind the gateway


class PyServer:
    """interop/gateway/py_server.py on the Python SDK."""

    id = "py"
    name = "gateway-fixture"
    marker = "py_server.py"

    def config(self):
        # The object form; PYTHONPATH names where this very `mcp` package is installed.
        return {"mcp": {"stdio": {
            "command": sys.executable,
            "args": [str(HERE / "py_server.py")],
            "env": {"PYTHONPATH": str(pathlib.Path(mcp.__file__).resolve().parent.parent)},
        }}}

    def check_tools(self, names):
        assert sorted(names) == ["big", "echo", "slow", "whoami"], names

    def echo(self, text):
        return "echo", {"text": text}, text

    def progress(self, steps):
        """A call that reports progress 1..steps of steps: (tool, arguments, answer)."""
        return "slow", {"steps": steps, "delay_ms": 20}, f"done after {steps} steps"

    def large(self):
        size = 500_000
        return "big", {"size": size}, ("0123456789abcdef" * (size // 16 + 1))[:size]

    async def pid(self, s):
        return int(text_of(await wait_for("whoami", s.call_tool("whoami", {}))))


class Everything:
    """@modelcontextprotocol/server-everything, in its stdio mode."""

    id = "everything"
    name = "mcp-servers/everything"
    marker = "server-everything/dist/index.js"

    def config(self):
        if not EVERYTHING.is_file():
            pytest.fail(f"{EVERYTHING} is missing: run interop/run.sh (npm ci in interop/gateway)")
        # The string form, run by /bin/sh -c; `exec` keeps the shell's pid for node.
        return {"mcp": {"stdio": f"export CHILD_PID=$$; exec node {shlex.quote(str(EVERYTHING))} stdio"}}

    def check_tools(self, names):
        # Tools that depend on the client's capabilities are registered after
        # notifications/initialized; these are always there.
        for name in ["echo", "get-env", "get-sum", "trigger-long-running-operation"]:
            assert name in names, names

    def echo(self, text):
        return "echo", {"message": text}, f"Echo: {text}"

    def progress(self, steps):
        return (
            "trigger-long-running-operation",
            {"duration": steps / 10, "steps": steps},
            f"Long running operation completed. Duration: {steps / 10:g} seconds, Steps: {steps}.",
        )

    def large(self):
        return self.echo(LARGE)

    async def pid(self, s):
        env = json.loads(text_of(await wait_for("get-env", s.call_tool("get-env", {}))))
        return int(env["CHILD_PID"])


SERVERS = [PyServer(), Everything()]
TRANSPORTS = ["streamable-http", "legacy-sse"]


@pytest.fixture(params=SERVERS, ids=lambda s: s.id)
def upstream(request):
    return request.param


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def gateway(upstream):
    s = Server(upstream.config())
    yield s
    s.stop()


# ---- helpers


class Http:
    """An httpx2 client factory for the SDK whose clients record every exchange they make."""

    def __init__(self):
        self.exchanges = []  # (method, status, request body as JSON or None, response headers)

    def factory(self, headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(
            headers=headers,
            timeout=timeout or httpx2.Timeout(WAIT, read=300.0),
            auth=auth,
            event_hooks={"response": [self._on_response]},
        )

    async def _on_response(self, response):
        request = response.request
        try:
            body = json.loads(request.content) if request.content else None
        except ValueError:
            body = None
        self.exchanges.append((request.method, response.status_code, body, response.headers))

    def posts(self, rpc_method):
        """(status, headers) of the POSTs that carried `rpc_method`."""
        return [
            (status, headers)
            for (method, status, body, headers) in self.exchanges
            if method == "POST" and isinstance(body, dict) and body.get("method") == rpc_method
        ]

    def statuses(self, method):
        return [status for (m, status, _, _) in self.exchanges if m == method]


@contextlib.asynccontextmanager
async def session(gateway, transport, **session_args):
    """An initialized ClientSession through the gateway: (session, its Http recorder, the
    initialize result). Leaving it closes the client (a DELETE on Streamable HTTP)."""
    http = Http()
    if transport == "streamable-http":
        client = http.factory()
        connection = streamable_http_client(gateway.url, http_client=client)
    else:
        client = contextlib.nullcontext()
        connection = sse_client(gateway.sse_url, timeout=WAIT, httpx_client_factory=http.factory)
    async with client, connection as (read, write, *_):
        async with ClientSession(read, write, **session_args) as s:
            result = await wait_for("initialize", s.initialize())
            yield s, http, result


class Held:
    """A session held open by a task of its own, so that sessions can be closed in any order
    (the SDK's task groups must be left in the task that entered them, innermost first)."""

    def __init__(self, gateway, transport):
        self._ready = asyncio.get_running_loop().create_future()
        self._close = asyncio.Event()
        self._task = asyncio.create_task(self._run(gateway, transport))

    async def _run(self, gateway, transport):
        try:
            async with session(gateway, transport) as (s, http, _):
                self._ready.set_result((s, http))
                await self._close.wait()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise

    async def open(self):
        """(session, its Http recorder), once initialized."""
        return await wait_for("a session", asyncio.shield(self._ready))

    async def close(self, quiet=False):
        """Leaves the session (idempotent); `quiet` swallows its failure (when cleaning up after
        a failed test, whose own error matters)."""
        self._close.set()
        try:
            await wait_for("closing a session", asyncio.shield(self._task))
        except BaseException:
            if not quiet:
                raise


async def wait_for(what, awaitable, bound=WAIT):
    try:
        return await asyncio.wait_for(awaitable, bound)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: not within {bound} s") from None


def text_of(result):
    assert result.is_error is False, result
    assert len(result.content) == 1, result
    assert result.content[0].type == "text"
    return result.content[0].text


def alive(pid):
    """Whether process `pid` exists (a zombie, not yet reaped, counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cmdline_of(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def check_child(gateway, upstream, pid):
    """`pid` runs the upstream server as a child of mcp-stream."""
    assert alive(pid), pid
    assert upstream.marker in cmdline_of(pid), cmdline_of(pid)
    assert parent_of(pid) == gateway.proc.pid, (pid, parent_of(pid), gateway.proc.pid)


async def until_gone(pid):
    async def loop():
        while alive(pid):
            await asyncio.sleep(0.02)  # polling a condition, bounded by wait_for

    await wait_for(f"child {pid} to exit", loop(), EXIT_WAIT)


async def call_with_progress(s, tool, arguments):
    """Calls `tool`; returns its result and the progress seen, in the order it arrived."""
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    result = await s.call_tool(tool, arguments, progress_callback=on_progress)
    # What the callback had seen when the result came: every progress comes before it.
    return result, list(seen)


# ---- the tests


def test_initialize_names_the_child_lists_its_tools_and_echoes_exactly(gateway, upstream, transport):
    async def body():
        async with session(gateway, transport) as (s, http, result):
            # The child answered initialize, not mcp-stream's built-in server.
            assert result.server_info.name == upstream.name
            assert result.protocol_version == "2025-11-25"
            assert s.server_info.name == upstream.name
            assert result.capabilities.tools is not None
            if transport == "streamable-http":
                # initialize is answered on an SSE stream, with the session's id.
                [(status, headers)] = http.posts("initialize")
                assert status == 200
                assert headers.get("content-type", "").startswith("text/event-stream"), headers
                sid = headers.get("mcp-session-id")
                assert sid and re.fullmatch(r"[0-9a-f]{32}", sid), sid
            else:
                gets = [(st, h.get("content-type")) for (m, st, _, h) in http.exchanges if m == "GET"]
                assert gets == [(200, "text/event-stream")], http.exchanges
                assert set(http.statuses("POST")) == {202}, http.exchanges
            tools = await wait_for("tools/list", s.list_tools())
            upstream.check_tools([t.name for t in tools.tools])
            for text in [TRICKY, "", TRICKY * 50]:
                tool, arguments, expected = upstream.echo(text)
                got = text_of(await wait_for("echo", s.call_tool(tool, arguments)))
                assert got.encode("utf-8") == expected.encode("utf-8")
            await wait_for("ping", s.send_ping())

    run(body())


def test_a_call_gets_all_its_progress_in_order_before_its_result(gateway, upstream, transport):
    async def body():
        steps = 8
        tool, arguments, expected = upstream.progress(steps)
        async with session(gateway, transport) as (s, _, _):
            result, seen = await wait_for(tool, call_with_progress(s, tool, arguments))
            assert text_of(result) == expected
            assert seen == [(float(i), float(steps)) for i in range(1, steps + 1)], seen

    run(body())


def test_a_large_result_arrives_exactly(gateway, upstream, transport):
    async def body():
        tool, arguments, expected = upstream.large()
        async with session(gateway, transport) as (s, _, _):
            got = text_of(await wait_for(tool, s.call_tool(tool, arguments)))
            assert len(got) == len(expected)
            assert got == expected
            # The session carries on.
            tool, arguments, expected = upstream.echo("after")
            assert text_of(await wait_for("echo", s.call_tool(tool, arguments))) == expected

    run(body())


def test_two_sessions_have_two_children_each_ends_with_its_session(gateway, upstream, transport):
    async def body():
        a_session, b_session = Held(gateway, transport), Held(gateway, transport)
        try:
            (a, a_http), (b, b_http) = await a_session.open(), await b_session.open()
            a_pid, b_pid = await asyncio.gather(upstream.pid(a), upstream.pid(b))
            assert a_pid != b_pid
            check_child(gateway, upstream, a_pid)
            check_child(gateway, upstream, b_pid)

            # At once in both sessions: calls with progress of different lengths and echoes of
            # different texts; each session gets its own answers only.
            async def work(s, steps, text):
                tool, arguments, expected = upstream.progress(steps)
                (result, seen), echoed = await asyncio.gather(
                    call_with_progress(s, tool, arguments),
                    s.call_tool(*upstream.echo(text)[:2]),
                )
                assert text_of(result) == expected
                assert seen == [(float(i), float(steps)) for i in range(1, steps + 1)], seen
                assert text_of(echoed) == upstream.echo(text)[2]

            await wait_for("work in both sessions", asyncio.gather(
                work(a, 3, "session a " + TRICKY), work(b, 6, "session b " + TRICKY),
            ))
            # Still the same processes.
            assert await upstream.pid(a) == a_pid and await upstream.pid(b) == b_pid

            # Closing A ends A's child only; B's child carries on serving B.
            await a_session.close()
            await until_gone(a_pid)
            assert alive(b_pid)
            tool, arguments, expected = upstream.echo("b still here")
            assert text_of(await wait_for("echo", b.call_tool(tool, arguments))) == expected

            await b_session.close()
            await until_gone(b_pid)
            if transport == "streamable-http":
                # The SDK ended each session with a DELETE, answered 200.
                assert a_http.statuses("DELETE") == [200], a_http.exchanges
                assert b_http.statuses("DELETE") == [200], b_http.exchanges
            assert gateway.proc.poll() is None
        finally:
            await a_session.close(quiet=True)
            await b_session.close(quiet=True)

    run(body())


def test_a_request_of_the_child_reaches_the_client_and_its_answer_the_child(transport):
    """server-everything's trigger-sampling-request: the child asks the client for sampling
    (sampling/createMessage), and puts the client's answer into its result. (py_server.py makes
    no request of its client.)"""
    gateway = Server(Everything().config())
    asked = []

    async def sampling(context, params):
        asked.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled " + TRICKY),
            model="interop-model",
            stop_reason="endTurn",
        )

    async def body():
        async with session(gateway, transport, sampling_callback=sampling) as (s, _, _):
            result = await wait_for("trigger-sampling-request", s.call_tool(
                "trigger-sampling-request", {"prompt": "hi " + TRICKY, "maxTokens": 7},
            ))
            text = text_of(result)
            prefix = "LLM sampling result: \n"
            assert text.startswith(prefix), text
            answer = json.loads(text[len(prefix):])
            assert answer["model"] == "interop-model"
            assert answer["role"] == "assistant"
            assert answer["content"] == {"type": "text", "text": "sampled " + TRICKY}
            assert len(asked) == 1
            assert asked[0].max_tokens == 7
            assert asked[0].messages[0].content.text == "Resource trigger-sampling-request context: hi " + TRICKY

    try:
        run(body())
    finally:
        gateway.stop()
