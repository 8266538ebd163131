"""How a library's exception is quoted inside loraboost's one-sentence error messages:
its first line, without its own closing full stop, cut to a readable length."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    return (str(error).strip().splitlines() or [""])[0].rstrip(".")[:limit]
