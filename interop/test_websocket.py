"""Interop: the Python `websockets` asyncio client against the real mcp-stream binary.

Run by interop/run.sh (which installs the pinned packages). Each test starts its own server on
127.0.0.1 with a port the kernel picks and stops it afterwards. Every wait is bounded by WAIT;
absence is shown with a barrier: a `{"type":"ping"}` is answered after everything the server
queued for that client before it, so if the pong comes next, nothing else came.
"""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from server import WAIT, run

# Quotes, backslashes, control characters, non-ASCII of every UTF-8 length, nesting.
TRICKY = {
    "text": 'she said "hi" \\ back\\slash \u0001 tab\t nl\n',
    "unicode": "héllo — 日本語 🎉",
    "nested": [1, 2.5, None, True, {"k": '"v"'}],
}


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def send_json(ws, value):
    await ws.send(json.dumps(value))


async def open_client(url):
    """Connects, reads the welcome, returns (client, connection id)."""
    ws = await asyncio.wait_for(connect(url, open_timeout=WAIT), WAIT)
    welcome = await recv_json(ws)
    assert set(welcome) == {"type", "data", "id"}, welcome
    assert welcome["type"] == "welcome"
    assert welcome["data"] == "Connected to MCP server"
    assert isinstance(welcome["id"], str) and welcome["id"]
    return ws, welcome["id"]


async def barrier(ws):
    await send_json(ws, {"type": "ping"})
    assert await recv_json(ws) == {"type": "pong"}


async def join(ws, room, **extra):
    await send_json(ws, {"type": "join", "room": room, **extra})
    assert await recv_json(ws) == {"type": "joined", "room": room}


def assert_broadcast(message, sender, data):
    assert set(message) == {"type", "data", "from", "id"}, message
    assert message["type"] == "broadcast"
    assert message["from"] == sender
    assert message["data"] == data
    epoch, seq = message["id"].split("-")
    int(epoch, 16), int(seq)
    return message["id"]


# ---- the two seed tests


def test_a_client_connects_and_is_open_with_a_welcome(server):
    async def body():
        ws, conn_id = await open_client(server.ws_url)
        assert ws.state is State.OPEN
        assert conn_id.isdigit()
        # The client offers permessage-deflate by default; the server does not take it.
        assert ws.response.status_code == 101
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await barrier(ws)
        await ws.close()
        assert ws.state is State.CLOSED
        assert ws.close_code == 1000

    run(body())


def test_a_broadcast_from_one_of_two_clients_reaches_both_with_data_intact(server):
    async def body():
        a, a_id = await open_client(server.ws_url)
        b, b_id = await open_client(server.ws_url)
        assert a_id != b_id
        await send_json(a, {"type": "broadcast", "data": TRICKY})
        got_a = assert_broadcast(await recv_json(a), a_id, TRICKY)
        got_b = assert_broadcast(await recv_json(b), a_id, TRICKY)
        assert got_a == got_b
        # The raw text of the frame is JSON whose data decodes to exactly what was sent.
        await send_json(b, {"type": "broadcast", "data": "\\\"'\u00e9"})
        raw = await asyncio.wait_for(a.recv(), WAIT)
        assert isinstance(raw, str)
        assert json.loads(raw)["data"] == "\\\"'\u00e9"
        await a.close()
        await b.close()

    run(body())


# ---- rooms, exclude_self, cross-transport


def test_room_broadcasts_reach_members_only_and_leave_stops_them(server):
    async def body():
        a, a_id = await open_client(server.ws_url)
        member, _ = await open_client(server.ws_url)
        outsider, _ = await open_client(server.ws_url)
        await join(a, "lobby")
        await join(member, "lobby")
        await send_json(a, {"type": "broadcast", "room": "lobby", "data": TRICKY})
        event_id = assert_broadcast(await recv_json(a), a_id, TRICKY)
        assert assert_broadcast(await recv_json(member), a_id, TRICKY) == event_id
        await barrier(outsider)

        await send_json(member, {"type": "leave", "room": "lobby"})
        assert await recv_json(member) == {"type": "left", "room": "lobby"}
        await send_json(a, {"type": "broadcast", "room": "lobby", "data": 2})
        assert_broadcast(await recv_json(a), a_id, 2)
        await barrier(member)
        for ws in (a, member, outsider):
            await ws.close()

    run(body())


def test_exclude_self_skips_the_sender_only(server):
    async def body():
        a, a_id = await open_client(server.ws_url)
        b, _ = await open_client(server.ws_url)
        await send_json(a, {"type": "broadcast", "data": "not to me", "exclude_self": True})
        assert_broadcast(await recv_json(b), a_id, "not to me")
        await barrier(a)
        await a.close()
        await b.close()

    run(body())


def test_an_http_publish_reaches_a_websocket_room_member(server):
    async def body():
        ws, _ = await open_client(server.ws_url)
        await join(ws, "news")
        ids = await asyncio.to_thread(
            server.publish, {"topic": "news", "event": "update", "data": TRICKY}
        )
        event = await recv_json(ws)
        assert event == {
            "type": "event", "topic": "news", "event": "update", "id": ids[0], "data": TRICKY,
        }
        # Another topic does not arrive.
        await asyncio.to_thread(server.publish, {"topic": "sport", "data": 1})
        await barrier(ws)
        await ws.close()

    run(body())


def test_a_websocket_publish_is_acknowledged_and_reaches_members(server):
    async def body():
        publisher, _ = await open_client(server.ws_url)
        member, _ = await open_client(server.ws_url)
        await join(member, "t")
        await send_json(publisher, {"type": "publish", "topic": "t", "data": TRICKY})
        ack = await recv_json(publisher)
        assert set(ack) == {"type", "topic", "id"} and ack["type"] == "published", ack
        event = await recv_json(member)
        assert event == {
            "type": "event", "topic": "t", "event": "message", "id": ack["id"], "data": TRICKY,
        }
        await publisher.close()
        await member.close()

    run(body())


def test_join_since_replays_what_was_missed_then_recovery(server):
    async def body():
        ids = await asyncio.to_thread(
            server.publish, [{"topic": "r", "data": i} for i in range(4)]
        )
        ws, _ = await open_client(server.ws_url)
        await join(ws, "r", since=ids[0])
        replayed = [(await recv_json(ws))["id"] for _ in ids[1:]]
        assert replayed == ids[1:]
        assert await recv_json(ws) == {"type": "recovery", "room": "r", "recovered": True}
        await ws.close()

    run(body())


# ---- errors and control frames


def test_a_message_over_max_message_bytes_closes_with_1009(server):
    async def body():
        ws, _ = await open_client(server.ws_url)
        # The default limit is 65536 bytes.
        await send_json(ws, {"type": "ping", "pad": "x" * 70_000})
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert closed.value.rcvd is not None, "no close frame was received"
        assert closed.value.rcvd.code == 1009
        await asyncio.wait_for(ws.wait_closed(), WAIT)
        assert ws.state is State.CLOSED

    run(body())


def test_invalid_json_gets_an_error_reply_and_the_connection_stays_up(server):
    async def body():
        ws, _ = await open_client(server.ws_url)
        for bad in ["not json", "{", "{}", '{"type":"nope"}', "[1]"]:
            await ws.send(bad)
            reply = await recv_json(ws)
            assert set(reply) == {"type", "error"}, reply
            assert reply["type"] == "error" and reply["error"], reply
        await ws.send(b"\x00binary")
        reply = await recv_json(ws)
        assert reply["type"] == "error", reply
        assert ws.state is State.OPEN
        await barrier(ws)
        await ws.close()

    run(body())


def test_the_clients_own_ping_gets_a_pong(server):
    async def body():
        ws, _ = await open_client(server.ws_url)
        pong = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(pong, WAIT)
        assert latency >= 0
        await ws.close()

    run(body())
