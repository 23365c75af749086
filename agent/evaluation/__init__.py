"""Offline evaluation: splits and protocols, ranking metrics, method wrappers, reports, and fitting fusion weights."""
