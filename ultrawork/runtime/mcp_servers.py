"""The MCP servers a run offers its agents' CLIs, started before the agents and stopped after them.

For each agent whose profile lists ``ultrawork`` in ``mcp_servers``, a bridge
(``ultrawork.sandbox.mcp_bridge``) serves ultrawork's MCP server bound to that
agent of the run through a socket its sandbox sees at ``/mcp``. A server that
dies mid-step fails the step with ``McpError``; the recovery table restarts it
and retries the step.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from ultrawork.agents.profiles import AgentProfile
from ultrawork.runtime.logs import get_logger
from ultrawork.sandbox.mcp_bridge import start_bridge, stop_bridges
from ultrawork.workspace.superproject import ultrawork_home


@contextlib.asynccontextmanager
async def run_mcp_servers(run_id: str, profiles: dict[str, AgentProfile]) -> AsyncIterator[list[str]]:
    """The run's MCP bridges for the roles that ask for one; removed however the block ends."""
    roles = [role for role, profile in profiles.items() if "ultrawork" in profile.mcp_servers]
    if not roles:
        yield []
        return
    try:
        for role in roles:
            folder = ultrawork_home() / "runs" / run_id / "mcp" / role
            await asyncio.to_thread(start_bridge, run_id, role, folder)
        get_logger().info("MCP server 'ultrawork' offered to %s at /mcp", ", ".join(roles))
        yield roles
    finally:
        await asyncio.to_thread(stop_bridges, run_id)
        with contextlib.suppress(OSError):          # the run's record keeps no trace of the sockets
            (ultrawork_home() / "runs" / run_id / "mcp").rmdir()
