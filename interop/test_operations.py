"""Interop: `GET /metrics` read by the official Prometheus Python client's parser
(`prometheus_client.parser`), which is what a scrape's text must satisfy, and `GET /stats`.

Run by interop/run.sh (which installs the pinned packages). Traffic goes over a WebSocket
joined to a room (Python `websockets`) and HTTP publishes; the figures must parse, carry the
contract's names, types and labels, and move with the traffic.
"""

import asyncio
import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from server import WAIT, run

# The families CONTRACT.md names, with their type. The parser drops a counter's `_total`
# suffix from the family name (its samples keep it).
CONTRACT = {
    "mcp_stream_connections": "gauge",
    "mcp_stream_messages_sent": "counter",
    "mcp_stream_messages_received": "counter",
    "mcp_stream_errors": "counter",
    "mcp_stream_dropped": "counter",
    "mcp_stream_delivery_latency_seconds": "histogram",
}


def scrape(server):
    """GET /metrics: (content type, {family name: family})."""
    with urllib.request.urlopen(f"http://{server.addr}/metrics", timeout=WAIT) as r:
        assert r.status == 200
        content_type = r.headers["Content-Type"]
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return content_type, families


def sample(families, name, labels=None):
    """The value of the sample `name` with exactly `labels`."""
    family = name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for s in families[family].samples:
        if s.name == name and s.labels == (labels or {}):
            return s.value
    raise AssertionError(f"no sample {name}{labels or ''}")


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://{server.addr}{path}", timeout=WAIT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


def test_metrics_parse_with_the_prometheus_parser_and_move_with_traffic(server):
    content_type, before = scrape(server)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    for name, kind in CONTRACT.items():
        assert name in before, f"missing family {name}"
        assert before[name].type == kind, (name, before[name].type)
    for family in before.values():
        assert family.documentation, f"{family.name} has no HELP"
    transports = {s.labels["transport"] for s in before["mcp_stream_connections"].samples}
    assert transports == {"http", "sse", "websocket", "mcp"}
    reasons = {s.labels["reason"] for s in before["mcp_stream_dropped"].samples}
    assert reasons == {"slow_consumer", "queue_overflow", "rate_limit"}
    assert sample(before, "mcp_stream_delivery_latency_seconds_count") == 0

    async def traffic():
        async with connect(f"ws://{server.addr}/stream/ws", open_timeout=WAIT) as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "metrics"}))
            assert await recv_json(ws) == {"type": "joined", "room": "metrics"}
            ids = server.publish([{"topic": "metrics", "data": i} for i in range(5)])
            for event_id in ids:
                assert (await recv_json(ws))["id"] == event_id
            _, during = scrape(server)
            assert sample(during, "mcp_stream_connections", {"transport": "websocket"}) == 1

    run(traffic())
    assert get(server, "/no/such/path")[0] == 404
    _, after = scrape(server)
    assert sample(after, "mcp_stream_messages_received_total") == 6  # a join, 5 events
    assert sample(after, "mcp_stream_messages_sent_total") == 7  # welcome, joined, 5 copies
    assert sample(after, "mcp_stream_errors_total", {"kind": "not_found"}) == 1
    assert sample(after, "mcp_stream_connections", {"transport": "websocket"}) == 0

    latency = after["mcp_stream_delivery_latency_seconds"]
    buckets = [(s.labels["le"], s.value) for s in latency.samples if s.name.endswith("_bucket")]
    assert buckets[-1][0] == "+Inf"
    bounds = [float(le) for le, _ in buckets]
    counts = [n for _, n in buckets]
    assert bounds == sorted(bounds) and counts == sorted(counts), buckets
    assert counts[-1] == sample(after, "mcp_stream_delivery_latency_seconds_count") == 5
    assert 0 < sample(after, "mcp_stream_delivery_latency_seconds_sum") < 5 * WAIT


def test_stats_carry_the_same_figures_as_json(server):
    server.publish({"topic": "stats", "data": 1})
    status, body = get(server, "/stats")
    assert status == 200
    stats = json.loads(body)
    _, families = scrape(server)
    assert stats["messages"]["published"] == 1
    assert stats["history"] == {"topics": 1, "events": 1}
    assert stats["health"] == {"status": "ok"}
    assert set(stats["connections"]) == {"total", "http", "sse", "websocket", "mcp"}
    # The scrape came after the stats: a figure that only grows is at least as large there.
    assert sample(families, "mcp_stream_events_published_total") == 1
    assert sample(families, "mcp_stream_http_requests_total") >= stats["requests_total"] + 1
