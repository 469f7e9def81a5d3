"""A stream of documents that breaks off, for the corpus tests' interrupted runs."""


class Interrupted(Exception):
    pass


def failing(items, after):
    """``items``, until the ``after``-th one, where it raises ``Interrupted``."""
    for i, x in enumerate(items):
        if i == after:
            raise Interrupted
        yield x
