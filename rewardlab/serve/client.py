"""A small client of `rewardlab serve`, for the peers' adapters: standard library only (no web stack).

One or several servers (replicas): ``url`` is a comma-separated list, used in turn, one request
each. Connection failures and 502/503/504 are retried with backoff; a 4xx or 500 answer is the
server refusing this request, raised at once with the server's message.

Example::

    client = RewardClient("http://127.0.0.1:8000")           # or REWARDLAB_URL; key: REWARDLAB_API_KEY
    out = client.score(["2+2="], [" 4"], columns={"answer": ["4"]})
    out["scores"], out["terms"]
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from rewardlab.errors import RewardlabError

URL_ENV, KEY_ENV = "REWARDLAB_URL", "REWARDLAB_API_KEY"
RETRY_STATUS = (502, 503, 504)


class RewardClient:
    """POSTs JSON to a reward server (or several, in turn).

    Args:
        url: base URL(s), comma-separated (default: ``$REWARDLAB_URL``).
        api_key: the server's key (default: ``$REWARDLAB_API_KEY``; none on loopback).
        timeout: seconds per attempt.
        retries: attempts after the first, on connection errors and 502/503/504.
        backoff: seconds before the first retry, doubled each time (at most 30).
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 180.0,
                 retries: int = 5, backoff: float = 0.5) -> None:
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise RewardlabError(f"no reward server URL: pass url= or set {URL_ENV}=http://HOST:PORT (several: "
                                 "comma-separated)")
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        self.api_key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()

    def post(self, path: str, body: Any) -> Any:
        """The JSON answer to ``body`` POSTed at ``path`` of the next server."""
        with self._lock:
            base = self.urls[next(self._next)]
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(base + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                detail = _error_text(err)
                if err.code not in RETRY_STATUS or attempt == self.retries:
                    raise RewardlabError(f"reward server {base}{path} answered {err.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.retries:
                    reason = getattr(err, "reason", err)
                    raise RewardlabError(f"reward server {base}{path} unreachable after {self.retries + 1} attempts "
                                         f"({reason}); is `rewardlab serve` running there?") from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def score(self, prompts: Sequence[Any], responses: Sequence[Any], *, columns: dict[str, list[Any]] | None = None,
              group_ids: Sequence[Any] | None = None, finished: Sequence[bool] | None = None) -> dict[str, Any]:
        """``POST /score``: scores, each term's values, raw outputs and diagnostics (None where nothing applied)."""
        body: dict[str, Any] = {"prompts": list(prompts), "responses": list(responses), "columns": columns or {}}
        if group_ids is not None:
            body["group_ids"] = list(group_ids)
        if finished is not None:
            body["finished"] = [bool(f) for f in finished]
        return self.post("/score", body)


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        return str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except (ValueError, OSError):
        return err.reason or "no detail"


def jsonable_columns(columns: dict[str, Any], n: int) -> dict[str, list[Any]]:
    """The columns a server can take: lists of n JSON values (others are left out: a callback, a tensor …)."""
    out = {}
    for name, values in columns.items():
        if not isinstance(values, (list, tuple)) or len(values) != n or not name.isidentifier():
            continue
        try:
            json.dumps(list(values))
        except (TypeError, ValueError):
            continue
        out[name] = list(values)
    return out
