"""A stdio MCP server on the official Python SDK (mcp 2.x `MCPServer`), for the gateway tests.

Tools: `echo {text}`, `slow {steps, delay_ms}` reporting progress each step, `big {size}`
returning a text of `size` bytes, and `whoami {}` returning this process's pid (sessions must
be served by different processes).
"""

import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("gateway-fixture")


@server.tool()
def echo(text: str) -> str:
    """Returns the text."""
    return text


@server.tool()
async def slow(steps: int, ctx: Context, delay_ms: int = 20) -> str:
    """Reports progress `steps` times, `delay_ms` apart, then answers."""
    for i in range(1, steps + 1):
        await asyncio.sleep(delay_ms / 1000)
        await ctx.report_progress(i, steps)
    return f"done after {steps} steps"


@server.tool()
def big(size: int) -> str:
    """Returns `size` bytes of text."""
    return ("0123456789abcdef" * (size // 16 + 1))[:size]


@server.tool()
def whoami() -> str:
    """Returns the pid of the process serving this session."""
    return str(os.getpid())


if __name__ == "__main__":
    server.run("stdio")
