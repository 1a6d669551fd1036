"""Range queries against the Prometheus HTTP API, with the standard library's urllib.

The one module of the ``polca`` package that talks to the network (the layer contract in
pyproject.toml allows it here and nowhere else in ``polca``): the replay reads a history once,
synchronously, so a blocking client is all it needs. Long ranges are split into chunks of at
most :data:`MAX_POINTS` steps (Prometheus refuses more than 11,000 points per series).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from polca.tooling.history import Series

__all__ = ["MAX_POINTS", "PrometheusError", "query_range"]

MAX_POINTS = 10_000
DEFAULT_TIMEOUT_S = 60.0


class PrometheusError(Exception):
    """Prometheus could not be reached, or answered with an error."""


def _post(url: str, form: dict[str, str], timeout_s: float) -> Any:
    if not url.startswith(("http://", "https://")):
        raise PrometheusError(f"{url}: not an http(s) URL")
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as exc:
        # Prometheus explains a bad query in the body of a 400/422.
        try:
            detail = json.load(exc).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        raise PrometheusError(f"{url}: HTTP {exc.code}: {detail or exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrometheusError(f"{url}: cannot reach Prometheus: {exc}") from exc


def query_range(
    base_url: str,
    expr: str,
    *,
    start_s: float,
    steps: int,
    step_s: float,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> list[Series]:
    """Series of `expr` on the grid start_s + i·step_s, i < steps; NaN where no value."""
    url = base_url.rstrip("/") + "/api/v1/query_range"
    merged: dict[tuple[tuple[str, str], ...], np.ndarray[Any, np.dtype[np.float64]]] = {}
    for first in range(0, steps, MAX_POINTS):
        last = min(steps, first + MAX_POINTS) - 1
        payload = _post(
            url,
            {
                "query": expr,
                "start": f"{start_s + first * step_s:.3f}",
                "end": f"{start_s + last * step_s:.3f}",
                "step": f"{step_s:g}",
            },
            timeout_s,
        )
        if not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error") if isinstance(payload, dict) else payload
            raise PrometheusError(f"{url}: query {expr!r} failed: {error}")
        for series in payload["data"]["result"]:
            key = tuple(sorted(series["metric"].items()))
            values = merged.setdefault(key, np.full(steps, np.nan))
            # [[t, "value"], …] → floats in one go ("NaN" parses too).
            points = np.asarray(series["values"], dtype=np.float64).reshape(-1, 2)
            index = np.rint((points[:, 0] - start_s) / step_s).astype(np.int64)
            inside = (index >= 0) & (index < steps)
            values[index[inside]] = points[inside, 1]
        if progress is not None:
            progress(last + 1)
    return [Series(dict(k), v) for k, v in merged.items() if not np.all(np.isnan(v))]


def steps_between(start_s: float, end_s: float, step_s: float) -> int:
    """Grid points from start to end inclusive."""
    if step_s <= 0 or end_s <= start_s:
        raise ValueError("need step > 0 and end after start")
    return math.floor((end_s - start_s) / step_s + 1e-9) + 1
