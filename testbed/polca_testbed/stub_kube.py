"""A stand-in for the daemon's `KubeClient` in one-process daemon tests (no API server)."""

from __future__ import annotations

from typing import Any

__all__ = ["StubKube"]


class StubKube:
    """Records API requests (Events) and answers them with an empty object."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests.append((method, path, kwargs.get("body")))
        return {}

    def close(self) -> None:
        pass

    def events(self) -> list[tuple[str, str]]:
        return [
            (body["reason"], body["type"])
            for method, path, body in self.requests
            if method == "POST" and path.endswith("/events")
        ]
