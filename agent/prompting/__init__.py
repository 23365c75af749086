"""Prompts: Jinja templates and their input models, history lines, fitting a prompt into a token budget, reply schemas, token counting and prices."""
