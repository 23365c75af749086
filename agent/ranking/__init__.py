"""Turning model replies into rankings: reply interpretation, grounding titles to catalog ids, fusion with the retriever, position-bias control."""
