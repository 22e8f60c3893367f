"""The error a distributed run raises when a collective fails or the ranks
disagree, and the wording its messages share."""

from __future__ import annotations


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree; names the rank at fault."""


def first_line(e: BaseException) -> str:
    """The first line of an error: torch's store and gloo errors carry long C++ traces."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def rank_list(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))
