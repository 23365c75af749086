"""A public test kit: the deterministic stand-in model and loopback OpenAI-compatible servers (chat, files, batches).

For tests — ours and users' own (as httpx's MockTransport or respx are). Production code never imports it,
except the demo and recording paths that exist to use it."""
