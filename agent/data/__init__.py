"""Behavior logs and catalogs in: loading, cleaning, per-user histories, public data sets, privacy (scrubbing, pseudonyms).

Bottom layer above ``agent.errors``: imports nothing else from the package."""
