"""recagent as a Model Context Protocol server (the official ``mcp`` SDK's ``MCPServer``).

* **Tools** are the chat ``Toolbox``'s (``agent.chat.tools``): ``recommend_items``,
  ``explain_recommendation``, ``record_feedback``, ``describe_item``, with the same argument
  models (so the same validation, hard filters and grounding). A failed call (invalid
  arguments, unknown item, model failure) is a tool error (``isError``) with the Toolbox's
  typed message, never a crashed server.
* **Resources**: ``recagent://profile/{version}`` (the user's stored profile, ``latest`` or a
  version number) and ``recagent://recommendations/{count}`` (the latest lists served to them).
* **Prompts**: ``recommend_for_me`` (ask for recommendations in the user's words) and
  ``explain_choice`` (ask why an item suits them), which steer an assistant to the tools.

**Whose data.** No tool, resource or prompt takes a user id. The user is fixed by the
``SessionSource``: over stdio, by the server's configuration (``recagent mcp --user``); over
HTTP, by the authenticated request (``agent.service.mcp_http``: the API key's tenant and the
``X-Recagent-User`` header the host sets when it connects). An argument a prompt-injected
model invents (``user_id``, ``tenant``...) is rejected as an unknown field.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from agent.chat.tools import TOOL_MODELS, Toolbox
from agent.profiles.store import Store

INSTRUCTIONS = (
    "recagent recommends items to the signed-in user from their behavior history and explains why. "
    "Call recommend_items for suggestions (hard filters are applied by code), explain_recommendation "
    "for the reason behind one, record_feedback when the user reacts, describe_item for a personalized "
    "description. The user is fixed by the connection; never ask for or pass a user id."
)

WRITING_TOOLS = frozenset({"record_feedback"})


@dataclass
class UserSession:
    """What one call may touch: a toolbox bound to the user, the user's store, and whether
    the caller may write (record feedback)."""

    toolbox: Toolbox
    store: Store | None
    can_write: bool = True


class SessionSource(Protocol):
    """Resolves the caller of one MCP request to its user session (never from arguments)."""

    def __call__(self, ctx: Context) -> UserSession: ...


def _tool_function(name: str, model: type, source: SessionSource) -> Callable[..., Any]:
    """An MCP tool taking ``args`` of the Toolbox's argument model for ``name``."""

    def call(args: Any, ctx: Context) -> dict[str, Any]:
        session = source(ctx)
        if name in WRITING_TOOLS and not session.can_write:
            raise ToolError("forbidden: this connection's key lacks the 'write' scope")
        message = session.toolbox.handle(
            {
                "id": f"mcp-{name}",
                "type": "function",
                "function": {"name": name, "arguments": args.model_dump_json()},
            }
        )
        payload = json.loads(str(message["content"]))
        if not payload.get("ok"):
            error = payload.get("error", {})
            details = f" {json.dumps(error['details'])}" if error.get("details") else ""
            raise ToolError(f"{error.get('type', 'error')}: {error.get('message', 'failed')}{details}")
        return dict(payload["result"])

    call.__name__ = name
    call.__doc__ = (
        (model.__doc__ or name)
        .replace("{items}", "items")
        .replace("{item}", "item")
        .replace("{user}", "user")
    )
    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("args", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model),
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context),
        ],
        return_annotation=dict[str, Any],
    )
    call.__annotations__ = {"args": model, "ctx": Context, "return": dict[str, Any]}
    return call


def build_server(source: SessionSource, *, name: str = "recagent") -> MCPServer:
    """The MCP server whose every request acts for ``source(ctx)``'s user."""
    server: MCPServer = MCPServer(name=name, instructions=INSTRUCTIONS)
    for tool_name, model in TOOL_MODELS.items():
        server.tool(name=tool_name)(_tool_function(tool_name, model, source))

    # Resources name no user: the session's user is implied. They are templates because the
    # SDK hands the request context (hence the caller) only to templated resources.
    @server.resource("recagent://profile/{version}", name="profile", mime_type="application/json")
    def profile(version: str, ctx: Context) -> str:
        """The signed-in user's stored behavior profile: ``latest`` or a version number."""
        session = source(ctx)
        store, user = session.store, session.toolbox.user_id
        if store is None:
            return json.dumps({"profile": None, "note": "this server keeps no profiles"})
        if version == "latest":
            chosen = store.latest_profile(user)
        elif version.isdigit():
            chosen = store.profile_version(user, int(version))
        else:
            raise ValueError("version must be 'latest' or a number")
        if chosen is None:
            return json.dumps({"profile": None, "note": "no stored profile (version) yet"})
        return json.dumps(
            {
                "version": chosen.version,
                "created_at": chosen.created_at.isoformat(),
                "profile": chosen.state.profile.model_dump(mode="json"),
                "blocked_items": chosen.state.blocked_ids(),
                "changes": [c.model_dump(mode="json") for c in chosen.changes],
            }
        )

    @server.resource(
        "recagent://recommendations/{count}", name="recent_recommendations", mime_type="application/json"
    )
    def recent(count: str, ctx: Context) -> str:
        """The latest ``count`` (1-20) recommendation lists served to the signed-in user, newest first."""
        if not count.isdigit() or not 1 <= int(count) <= 20:
            raise ValueError("count must be a number from 1 to 20")
        session = source(ctx)
        store = session.store
        served = (
            store.recent_recommendations(session.toolbox.user_id, int(count)) if store is not None else []
        )
        return json.dumps({"recommendations": [r.model_dump(mode="json") for r in served]})

    @server.prompt(name="recommend_for_me")
    def recommend_for_me(request: str = "") -> str:
        """Ask for recommendations for the signed-in user, optionally in their own words."""
        wish = f" I'm looking for: {request}." if request.strip() else ""
        return f"Recommend a few items for me.{wish} Use recommend_items and tell me briefly why each fits."

    @server.prompt(name="explain_choice")
    def explain_choice(item_id: str) -> str:
        """Ask why one recommended item suits the signed-in user."""
        return f"Why would item {item_id} suit me? Use explain_recommendation and answer from my history."

    return server
