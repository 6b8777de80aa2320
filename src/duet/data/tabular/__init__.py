"""Tabular data (issue #18): one row per sample, one column per feature, a target column.

The contract every tabular module works to (``schema``): a table is a mapping
column name -> numpy array of one length, the column's kind says how its values
are held, and ``ColumnSchema`` is what scanning infers (and a config overrides),
what the preprocessing spec is fitted for, and what model.json will describe.
"""
