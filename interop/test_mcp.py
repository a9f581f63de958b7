"""Interop: the official MCP Python SDK (`mcp` on PyPI) against the real mcp-stream binary.

Run by interop/run.sh (which installs the pinned packages). Each test starts its own server on
127.0.0.1 with a port the kernel picks and stops it afterwards. The SDK's Streamable HTTP
client talks to `/mcp`, and its legacy HTTP+SSE client (`sse_client`, revision 2024-11-05) to
`/sse` and the `/messages` endpoint it names. An httpx2 client with event hooks is handed to
the SDK, so the tests see the HTTP exchanges it makes (the GET stream opening, the POSTs' 202,
the DELETE on exit) and wait on those events instead of on time. Every wait is bounded by WAIT.
(The SDK has no WebSocket client: the WebSocket transport is covered by the TypeScript suite.)
"""

import asyncio
import json
import re

import httpx2
import pytest
from mcp import Client, ClientSession, MCPError, ResourceUpdatedNotification
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from server import WAIT, run

# The SDK marks logging and resources/subscribe deprecated as of revision 2026-07-28; this
# server speaks 2025-11-25, where they are current.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")

# Quotes, backslashes, JSON escapes, control characters, U+2028 and non-ASCII of every UTF-8
# length.
TRICKY = (
    'she said "hi" \\ back\\\\slash \\" \x00 \x01 \x1f tab\t nl\n cr\r / \x7f '
    "\u2028\u2029 héllo — 日本語 🎉 \U0010ffff"
)


class Http:
    """An httpx2 client for the SDK that records every exchange it makes."""

    def __init__(self, own_client=True):
        self.exchanges = []  # (method, status, request body as JSON or None, response headers)
        self.urls = []  # the URL of each exchange, in the same order
        self.get_stream_open = asyncio.Event()
        self._changed = asyncio.Event()
        # Without a client of its own, it is only a factory of recording clients.
        self.client = self.factory() if own_client else None

    def factory(self, headers=None, timeout=None, auth=None):
        """A recording client; also usable as the `httpx_client_factory` of `sse_client`."""
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
        self.urls.append(str(request.url))
        if request.method == "GET" and response.status_code == 200:
            self.get_stream_open.set()
        self._changed.set()

    async def until(self, what, predicate):
        """Waits until `predicate()` holds over the exchanges seen so far."""

        async def loop():
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await wait_for(what, loop())

    def posts(self, rpc_method):
        """The statuses of the POSTs that carried `rpc_method`."""
        return [
            (status, headers)
            for (method, status, body, headers) in self.exchanges
            if method == "POST" and isinstance(body, dict) and body.get("method") == rpc_method
        ]


def session_id_of(http):
    """The Mcp-Session-Id the server gave on the initialize answer."""
    answers = http.posts("initialize")
    assert len(answers) == 1, http.exchanges
    status, headers = answers[0]
    assert status == 200
    sid = headers.get("mcp-session-id")
    assert sid and re.fullmatch(r"[0-9a-f]{32}", sid), sid
    return sid


async def wait_for(what, awaitable):
    try:
        return await asyncio.wait_for(awaitable, WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: not within {WAIT} s") from None


def text_of(result):
    assert result.is_error is False, result
    assert len(result.content) == 1, result
    assert result.content[0].type == "text"
    return result.content[0].text


# ---- the handshake and plain requests


def test_initialize_negotiates_the_newest_revision_and_names_the_server(server):
    async def body():
        http = Http()
        async with http.client, streamable_http_client(server.url, http_client=http.client) as (
            read, write, *_
        ):
            async with ClientSession(read, write) as s:
                result = await wait_for("initialize", s.initialize())
                assert result.protocol_version == "2025-11-25"
                assert s.protocol_version == "2025-11-25"
                assert s.server_info.name == "mcp-stream"
                assert s.server_info.version
                caps = s.server_capabilities
                assert caps.tools is not None
                assert caps.resources is not None and caps.resources.subscribe is True
                assert caps.logging is not None
                session_id_of(http)
                # The SDK sends notifications/initialized (in the background) and gets 202.
                await http.until(
                    "notifications/initialized", lambda: http.posts("notifications/initialized")
                )
                assert [st for st, _ in http.posts("notifications/initialized")] == [202]

    run(body())


def test_ping_tools_list_and_logging(server):
    async def body():
        async with streamable_http_client(server.url) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                await wait_for("ping", s.send_ping())
                tools = await wait_for("tools/list", s.list_tools())
                assert [t.name for t in tools.tools] == [
                    "echo", "countdown", "publish", "history", "topics",
                ]
                for t in tools.tools:
                    assert t.input_schema["type"] == "object"
                await wait_for("logging/setLevel", s.set_logging_level("debug"))

    run(body())


def test_echo_returns_quotes_backslashes_and_non_ascii_exactly(server):
    async def body():
        async with streamable_http_client(server.url) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                for text in [TRICKY, "", "\\", '"', TRICKY * 200]:
                    result = await wait_for("echo", s.call_tool("echo", {"text": text}))
                    got = text_of(result)
                    assert got.encode("utf-8") == text.encode("utf-8")

    run(body())


def test_errors_reach_the_caller_as_mcp_errors_or_tool_errors(server):
    async def body():
        async with streamable_http_client(server.url) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                with pytest.raises(MCPError) as unknown_tool:
                    await wait_for("unknown tool", s.call_tool("no-such-tool", {}))
                assert unknown_tool.value.code == -32602
                with pytest.raises(MCPError) as bad_resource:
                    await wait_for("bad resource", s.read_resource("file:///etc/passwd"))
                assert bad_resource.value.code == -32602
                result = await wait_for("echo without text", s.call_tool("echo", {}))
                assert result.is_error is True
                # The session carries on.
                await wait_for("ping", s.send_ping())

    run(body())


def test_topics_are_resources_that_list_and_read(server):
    async def body():
        ids = await asyncio.to_thread(
            server.publish, {"topic": "news", "event": "update", "data": {"t": TRICKY}}
        )
        async with streamable_http_client(server.url) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                listed = await wait_for("resources/list", s.list_resources())
                assert [str(r.uri) for r in listed.resources] == ["stream://topics/news"]
                templates = await wait_for("templates", s.list_resource_templates())
                assert templates.resource_templates[0].uri_template == "stream://topics/{topic}"
                got = await wait_for("resources/read", s.read_resource("stream://topics/news"))
                assert len(got.contents) == 1
                assert json.loads(got.contents[0].text) == [{
                    "type": "event", "topic": "news", "event": "update", "id": ids[0],
                    "data": {"t": TRICKY},
                }]

    run(body())


# ---- progress


def test_three_concurrent_countdowns_each_receive_all_progress_in_order(server):
    async def body():
        n = 15
        seen = {k: [] for k in range(3)}

        def recorder(k):
            async def on_progress(progress, total, message):
                # Counted as it arrives.
                seen[k].append((progress, total))

            return on_progress

        async with streamable_http_client(server.url) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                results = await wait_for("three countdowns", asyncio.gather(*[
                    s.call_tool(
                        "countdown", {"n": n, "interval_ms": 20}, progress_callback=recorder(k)
                    )
                    for k in range(3)
                ]))
                for k, result in enumerate(results):
                    assert text_of(result) == "done"
                    assert seen[k] == [(float(i), float(n)) for i in range(1, n + 1)], (k, seen[k])

    run(body())


# ---- resource subscriptions over the GET stream


def test_a_subscription_receives_resources_updated_after_an_http_publish(server):
    async def body():
        http = Http()
        updates = asyncio.Queue()

        async def on_message(message):
            if isinstance(message, ResourceUpdatedNotification):
                updates.put_nowait(str(message.params.uri))

        async with http.client, streamable_http_client(server.url, http_client=http.client) as (
            read, write, *_
        ):
            async with ClientSession(read, write, message_handler=on_message) as s:
                await wait_for("initialize", s.initialize())
                # The SDK opens the session's GET stream after notifications/initialized.
                await wait_for("the GET stream", http.get_stream_open.wait())
                await wait_for("subscribe", s.subscribe_resource("stream://topics/news"))
                await wait_for("subscribe", s.subscribe_resource("stream://topics/barrier.1"))

                await asyncio.to_thread(server.publish, {"topic": "news", "data": TRICKY})
                assert await wait_for("the update", updates.get()) == "stream://topics/news"
                # An unsubscribed topic is not heard of: the barrier topic comes next.
                await asyncio.to_thread(server.publish, {"topic": "sport", "data": 1})
                await asyncio.to_thread(server.publish, {"topic": "barrier.1", "data": 1})
                assert await wait_for("the barrier", updates.get()) == "stream://topics/barrier.1"

                # The SDK's own publish (the publish tool) is heard of too.
                await wait_for("publish tool", s.call_tool("publish", {"topic": "news", "data": 2}))
                assert await wait_for("the update", updates.get()) == "stream://topics/news"

                await wait_for("unsubscribe", s.unsubscribe_resource("stream://topics/news"))
                await wait_for("subscribe", s.subscribe_resource("stream://topics/barrier.2"))
                await asyncio.to_thread(server.publish, {"topic": "news", "data": 3})
                await asyncio.to_thread(server.publish, {"topic": "barrier.2", "data": 1})
                assert await wait_for("the barrier", updates.get()) == "stream://topics/barrier.2"
                assert updates.empty()
                # The one GET stream stayed open all along.
                gets = [st for (m, st, _, _) in http.exchanges if m == "GET"]
                assert gets == [200], http.exchanges

    run(body())


# ---- termination


def test_leaving_the_client_deletes_the_session(server):
    async def body():
        http = Http()
        async with http.client:
            async with streamable_http_client(server.url, http_client=http.client) as (
                read, write, *_
            ):
                async with ClientSession(read, write) as s:
                    await wait_for("initialize", s.initialize())
                    await wait_for("ping", s.send_ping())
                    sid = session_id_of(http)
                    status, answer = await asyncio.to_thread(server.raw_ping, sid)
                    assert (status, answer) == (200, {"jsonrpc": "2.0", "id": 1, "result": {}})
            deletes = [st for (m, st, _, _) in http.exchanges if m == "DELETE"]
            assert deletes == [200], http.exchanges
        status, answer = await asyncio.to_thread(server.raw_ping, sid)
        assert status == 404
        assert answer == {"error": "unknown session"}

    run(body())


# ---- the high-level client: server/discover probe, then initialize


def test_the_high_level_client_probes_discover_then_falls_back_to_initialize(server):
    async def body():
        http = Http()
        async with http.client:
            transport = streamable_http_client(server.url, http_client=http.client)
            async with Client(transport) as client:
                assert client.protocol_version == "2025-11-25"
                assert client.server_info.name == "mcp-stream"
                result = await wait_for("echo", client.call_tool("echo", {"text": TRICKY}))
                assert text_of(result) == TRICKY
            posted = [
                body.get("method") for (m, _, body, _) in http.exchanges
                if m == "POST" and isinstance(body, dict)
            ]
            assert posted[:2] == ["server/discover", "initialize"], posted
            # The probe got a JSON-RPC error at once, as a 200 without a session.
            [(status, headers)] = http.posts("server/discover")
            assert status == 200 and "mcp-session-id" not in headers

    run(body())


# ---- the legacy HTTP+SSE transport (2024-11-05): GET /sse, POST /messages?sessionId=...


class Legacy:
    """`sse_client` on a recording client, with the session id its endpoint event named."""

    def __init__(self, server):
        self.http = Http(own_client=False)
        self.sessions = []
        self.transport = sse_client(
            server.sse_url,
            timeout=WAIT,
            httpx_client_factory=self.http.factory,
            on_session_created=self.sessions.append,
        )

    @property
    def endpoint(self):
        """The path the endpoint event named, checked against the session id."""
        [sid] = self.sessions
        assert re.fullmatch(r"[0-9a-f]{32}", sid), sid
        return f"/messages?sessionId={sid}"

    def post_statuses(self):
        return [
            (status, url) for (method, status, _, _), url in zip(self.http.exchanges, self.http.urls)
            if method == "POST"
        ]

    def assert_posts_accepted(self):
        """Every POST went to the endpoint and got 202."""
        posts = self.post_statuses()
        assert posts, self.http.exchanges
        for status, url in posts:
            assert status == 202, posts
            assert url.endswith(self.endpoint), posts


def test_legacy_sse_initialize_ping_tools_list_and_echo(server):
    async def body():
        legacy = Legacy(server)
        async with legacy.transport as (read, write, *_):
            async with ClientSession(read, write) as s:
                result = await wait_for("initialize", s.initialize())
                assert result.server_info.name == "mcp-stream"
                assert result.capabilities.resources.subscribe is True
                await wait_for("ping", s.send_ping())
                tools = await wait_for("tools/list", s.list_tools())
                assert [t.name for t in tools.tools] == [
                    "echo", "countdown", "publish", "history", "topics",
                ]
                for text in [TRICKY, "", "\\", '"', TRICKY * 200]:
                    got = text_of(await wait_for("echo", s.call_tool("echo", {"text": text})))
                    assert got.encode("utf-8") == text.encode("utf-8")
                with pytest.raises(MCPError) as unknown_tool:
                    await wait_for("unknown tool", s.call_tool("no-such-tool", {}))
                assert unknown_tool.value.code == -32602
                await wait_for("ping", s.send_ping())
                # One GET /sse, answered 200 as an event stream; every message was a POST to
                # the endpoint it named, answered 202 (the answers came on the stream).
                gets = [
                    (st, h.get("content-type")) for (m, st, _, h) in legacy.http.exchanges
                    if m == "GET"
                ]
                assert gets == [(200, "text/event-stream")], legacy.http.exchanges
                legacy.assert_posts_accepted()
                methods = [b.get("method") for (m, _, b, _) in legacy.http.exchanges if m == "POST"]
                assert methods[:2] == ["initialize", "notifications/initialized"], methods

    run(body())


def test_legacy_sse_three_concurrent_countdowns_each_receive_all_progress_in_order(server):
    async def body():
        n = 5
        seen = {k: [] for k in range(3)}

        def recorder(k):
            async def on_progress(progress, total, message):
                # Counted as it arrives.
                seen[k].append((progress, total))

            return on_progress

        legacy = Legacy(server)
        async with legacy.transport as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                results = await wait_for("three countdowns", asyncio.gather(*[
                    s.call_tool(
                        "countdown", {"n": n, "interval_ms": 100}, progress_callback=recorder(k)
                    )
                    for k in range(3)
                ]))
                for k, result in enumerate(results):
                    assert text_of(result) == "done"
                    assert seen[k] == [(float(i), float(n)) for i in range(1, n + 1)], (k, seen[k])
                legacy.assert_posts_accepted()

    run(body())


def test_legacy_sse_a_subscription_receives_resources_updated_after_an_http_publish(server):
    async def body():
        updates = asyncio.Queue()

        async def on_message(message):
            if isinstance(message, ResourceUpdatedNotification):
                updates.put_nowait(str(message.params.uri))

        legacy = Legacy(server)
        async with legacy.transport as (read, write, *_):
            async with ClientSession(read, write, message_handler=on_message) as s:
                await wait_for("initialize", s.initialize())
                await wait_for("subscribe", s.subscribe_resource("stream://topics/news"))
                await wait_for("subscribe", s.subscribe_resource("stream://topics/barrier.1"))
                await asyncio.to_thread(server.publish, {"topic": "news", "data": TRICKY})
                assert await wait_for("the update", updates.get()) == "stream://topics/news"
                # An unsubscribed topic is not heard of: the barrier topic comes next.
                await asyncio.to_thread(server.publish, {"topic": "sport", "data": 1})
                await asyncio.to_thread(server.publish, {"topic": "barrier.1", "data": 1})
                assert await wait_for("the barrier", updates.get()) == "stream://topics/barrier.1"
                await wait_for("unsubscribe", s.unsubscribe_resource("stream://topics/news"))
                await wait_for("subscribe", s.subscribe_resource("stream://topics/barrier.2"))
                await asyncio.to_thread(server.publish, {"topic": "news", "data": 3})
                await asyncio.to_thread(server.publish, {"topic": "barrier.2", "data": 1})
                assert await wait_for("the barrier", updates.get()) == "stream://topics/barrier.2"
                assert updates.empty()
                legacy.assert_posts_accepted()

    run(body())


def test_legacy_sse_leaving_the_client_ends_the_session(server):
    # A notification that needs no answer: posting it by hand leaves the SDK's stream alone.
    note = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}

    async def body():
        legacy = Legacy(server)
        async with legacy.transport as (read, write, *_):
            async with ClientSession(read, write) as s:
                await wait_for("initialize", s.initialize())
                await wait_for("ping", s.send_ping())
                endpoint = legacy.endpoint
                status, _ = await asyncio.to_thread(server.raw_legacy_post, endpoint, note)
                assert status == 202
        legacy.assert_posts_accepted()

        # Closing the client closed its stream; once the server has seen that, the session is
        # gone and its endpoint is 404.
        async def gone():
            while True:
                status, answer = await asyncio.to_thread(server.raw_legacy_post, endpoint, note)
                if status == 404:
                    return json.loads(answer)
                assert status == 202, (status, answer)
                await asyncio.sleep(0.02)  # polling a condition, bounded by wait_for

        assert await wait_for("the session ends", gone()) == {"error": "unknown session"}

    run(body())


def test_legacy_sse_the_high_level_client_probes_discover_then_falls_back_to_initialize(server):
    async def body():
        legacy = Legacy(server)
        async with Client(legacy.transport) as client:
            assert client.server_info.name == "mcp-stream"
            assert client.protocol_version == "2025-11-25"
            result = await wait_for("echo", client.call_tool("echo", {"text": TRICKY}))
            assert text_of(result) == TRICKY
        posted = [
            body.get("method") for (m, _, body, _) in legacy.http.exchanges
            if m == "POST" and isinstance(body, dict)
        ]
        # The probe was accepted (202) and answered on the stream with an error, so the SDK
        # fell back to initialize.
        assert posted[:2] == ["server/discover", "initialize"], posted
        legacy.assert_posts_accepted()

    run(body())
