"""User hooks the tests configure by dotted path."""


def always_fails(ctx) -> None:
    raise RuntimeError("injected hook failure")
