"""The ``recagent`` command line. ``agent.cli.main`` parses and dispatches; each command family has its own module.

Entry-point layer: nothing else in the package imports from here."""
