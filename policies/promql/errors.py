"""The one error a query can raise, with where in the text it went wrong."""

from __future__ import annotations

MAX_MESSAGE = 200


class PromQLError(ValueError):
    """A query Prometheus would refuse; ``position`` is a character offset into ``query``."""

    def __init__(self, message: str, query: str, position: int) -> None:
        if len(message) > MAX_MESSAGE:  # a hostile query must not make a 1 MB status annotation
            message = message[: MAX_MESSAGE - 3] + "..."
        self.message = message
        self.query = query
        self.position = max(0, min(position, len(query)))
        super().__init__(str(self))

    @property
    def line(self) -> int:
        return self.query.count("\n", 0, self.position) + 1

    @property
    def column(self) -> int:
        return self.position - (self.query.rfind("\n", 0, self.position) + 1) + 1

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"
