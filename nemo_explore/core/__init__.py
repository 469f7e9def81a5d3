"""The words every other part speaks, and the hook mechanism: layer kinds, run options, dtypes, labels,
token text (foundations); the one table of hook points, their names, the one hook mechanism and its write
rule; Mamba-2's state-space math (``ssd``). Nothing here knows transformers' module layout."""
