"""The ``duet`` command: one module per command group, all registered on one typer app
(``duet.cli.main``). Only this package prints and exits.
"""
