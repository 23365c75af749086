"""Candidate retrieval: the item-item/content retriever that proposes what the model ranks (and the fallback when no model answers)."""
