"""Conversation and content on top of the agent: chat turns, constraints, the tool definitions, personalized content, domain presets."""
