"""Small helpers shared by the interop tests."""

from __future__ import annotations

# Longest any single wait may take: a 10 MiB echo through a debug build on a busy 2-core
# machine stays well below it, and a server that never answers fails instead of hanging.
TIMEOUT = 60.0

MIB = 1024 * 1024


def assert_same(got, expected) -> None:
    """Assert that an echoed message equals what was sent, type (text/binary) included.

    Reports the first difference instead of printing megabytes of payload.
    """
    kind = {str: "text", bytes: "binary"}
    assert type(got) is type(expected), (
        f"sent a {kind.get(type(expected))} message, got back a {kind.get(type(got), type(got))}"
    )
    if got == expected:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
        min(len(got), len(expected)),
    )
    lo = max(0, first - 16)
    raise AssertionError(
        f"echo differs: sent {len(expected)} {'chars' if isinstance(expected, str) else 'bytes'}, "
        f"got {len(got)}; first difference at {first}: "
        f"sent ...{expected[lo:first + 16]!r}..., got ...{got[lo:first + 16]!r}..."
    )
