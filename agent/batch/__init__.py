"""Offline runs over many users: the async runner with its resumable ledger, and the provider's Batch API."""
