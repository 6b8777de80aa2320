"""The ``duet`` command: one module per command group, all registered on one typer app
(``duet.cli.app``, which also maps every error to its exit code). Only this package prints and exits.
"""
