"""Manifest commands (run, validate, retry-failed, demo, serve): registered on the `stylize` parser."""


def register(commands) -> None:
    pass
