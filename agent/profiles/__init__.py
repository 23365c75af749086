"""Behavior profiles over time: feedback events, refinement (model delta + deterministic merge), and the versioned store."""
