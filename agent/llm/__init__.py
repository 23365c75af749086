"""Talking to an OpenAI-compatible chat API: the sync and async clients, retries, rate limits, cassettes (record/replay)."""
