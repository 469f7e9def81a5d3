"""The mirror of transformers' private Nemotron-H code: the one reader of HF's module layout
(``hf_layout``), the instrumented mixer forwards (``mixers/``), how they are swapped in (``instrument``),
and their run-time check against the installed release (``guard``, ``versions``). The only part of the
package that names HF's private attributes (``tests/test_layout.py``)."""
