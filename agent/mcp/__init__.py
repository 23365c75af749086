"""recagent over the Model Context Protocol: the server (tools, resources, prompts) that
assistants connect to. ``recagent mcp`` serves it over stdio; ``recagent serve`` mounts it over
streamable HTTP at ``/mcp`` (``agent.service.mcp_http``)."""
