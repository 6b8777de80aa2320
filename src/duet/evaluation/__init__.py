"""Evaluation: run a trained model over files (``inference``), turn predictions into metrics
and the report (``report``), and the ``duet evaluate`` stage (``evaluate``).
"""
