"""pytest fixtures of the interop suites: `server`, the real mcp-stream binary (server.py)."""

import pytest

from server import Server


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()
