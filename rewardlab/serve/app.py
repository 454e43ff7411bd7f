"""The reward service: an ASGI app whose routes are thin over one object built at start, `RewardService`.

`RewardService` holds the reward side (reward models, rule terms, pipeline), the dynamic batcher,
the reference rewards of ``server.references`` and the metrics. A request's samples go through
the reward models in a batch gathered with other requests; its rule terms, centring and pipeline
run on its own rows, so a score never depends on what other clients sent, and one request's bad
input fails that request only.

Routes: ``POST /score`` (native), ``POST /get_reward`` (OpenRLHF), ``POST /slime`` (slime),
``GET /health``, ``GET /metrics`` (Prometheus). With an API key every route but ``/health`` needs
``Authorization: Bearer <key>`` (401 otherwise). Bodies over ``server.max_body_bytes`` and
requests over ``server.max_samples_per_request`` get 413; malformed JSON 400; a wrong field 422
naming it; a request not answered within ``server.request_timeout_s`` 504. Logs at info level hold
counts and timings, never texts.

Example::

    service = RewardService(cfg, side, references=cache)
    app = build_app(service)          # serve with uvicorn (rewardlab.serve.commands)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import AlarmConfig
from rewardlab.reward.baselines import ReferenceRewards, prompt_key_of
from rewardlab.reward.side import RewardOutput, RewardSide, Samples
from rewardlab.serve.batching import Batcher
from rewardlab.serve.config import ServeConfig
from rewardlab.serve.metrics import ServerMetrics
from rewardlab.serve.protocols import (
    OpenRLHFRequest,
    ScoreRequest,
    SlimeRequest,
    check_lengths,
    finite_or_none,
    strip_special_edges,
)

logger = logging.getLogger("rewardlab.serve")


class HTTPError(Exception):
    """A request refused with a status code and a one-line message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RewardService:
    """The reward side as a service: batching, centring, metrics.

    Args:
        cfg: the server's config.
        side: the reward side (models loaded).
        references: reference rewards per prompt (`prompt_key_of`), `RewardSide.reference_view` columns.
        api_key: the bearer key (None: no authentication; only on loopback).
    """

    def __init__(self, cfg: ServeConfig, side: RewardSide, *, references: ReferenceRewards | None = None,
                 api_key: str | None = None) -> None:
        self.cfg, self.side, self.references, self.api_key = cfg, side, references, api_key
        s = cfg.server
        self.metrics = ServerMetrics(AlarmConfig(), window=s.alarm_window)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardlab-score")
        self.batcher: Batcher | None = None
        self.started = time.time()
        tokenizers = [getattr(m, "tokenizer", None) for m in side.reward_models]
        self._specials = sorted({t for tok in tokenizers if tok is not None for t in tok.all_special_tokens})
        self._pads = sorted({t for tok in tokenizers if tok is not None for t in (tok.pad_token, tok.eos_token) if t})
        self._bos = sorted({tok.bos_token for tok in tokenizers if tok is not None and _adds_bos(tok)})

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.cfg.server
        self.batcher = Batcher(self.side.score_models, _join, self.executor, max_batch=s.max_batch_size,
                               max_wait=s.max_wait_ms / 1000.0, on_batch=self.metrics.batch)
        self._task = asyncio.create_task(self.batcher.run())

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
            await self._task
        self.executor.shutdown(wait=True)

    # -- scoring -------------------------------------------------------------------------------
    async def score(self, samples: Samples, *, kl: list[float] | None = None, implicit_groups: bool = False) -> RewardOutput:
        """One request's samples through the reward side (models batched with other requests).

        Raises `HTTPError` (422 for input the reward side refuses, 504 on timeout, 500 otherwise).
        """
        try:
            return await asyncio.wait_for(self._score(samples, kl, implicit_groups), self.cfg.server.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"not answered within server.request_timeout_s={self.cfg.server.request_timeout_s} s "
                                 "(the server is overloaded, or the batch is too large for it)") from None
        except RewardlabError as err:
            raise HTTPError(422, str(err)) from None
        except HTTPError:
            raise
        except Exception as err:  # a rule function's own bug, a model failure: this request only
            logger.error("a request failed: %s (its message went to the client; logs hold no texts)", type(err).__name__)
            raise HTTPError(500, f"scoring failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}") from None

    async def _score(self, samples: Samples, kl: list[float] | None, implicit_groups: bool) -> RewardOutput:
        assert self.batcher is not None
        n = len(samples.prompts)
        for rule in self.side.reward_spec.functions.values():
            rule.check_columns(list(samples.columns))
        group_ids, ref = self._centring(samples, implicit_groups)

        def finish(model_raw: torch.Tensor) -> tuple[RewardOutput, torch.Tensor]:
            """Rule terms, centring, pipeline and penalties on this request's rows (in the scoring thread)."""
            raw = torch.cat([model_raw, self.side.score_rules(samples)], dim=1)
            return self.side.reward(raw, ref=ref, group_ids=group_ids, finished=samples.finished, update=False), raw

        if self.side.reward_models:
            out, raw = await self.batcher.submit(samples, size=n, kind="chat" if samples.chat else "text", finish=finish)
        else:
            out, raw = await asyncio.get_running_loop().run_in_executor(self.executor, finish, torch.zeros(n, 0))
        lengths = torch.tensor([float(len(r if isinstance(r, str) else json.dumps(r))) for r in samples.response_list()])
        self.metrics.scored(self.side.proxy(raw), out.scores, lengths, out.diagnostics,
                            None if kl is None else torch.tensor(kl, dtype=torch.float64))
        return out

    def _centring(self, samples: Samples, implicit_groups: bool) -> tuple[Any, torch.Tensor | None]:
        """Groups (given, or, for peers' single-prompt forms, identical prompts) or reference rewards for centred
        terms; a centred spec that can centre neither way refuses the request, saying which is missing."""
        if not self.side.needs_references:
            return None, None
        if samples.group_ids is not None:
            _check_groups(samples.group_ids)
            return samples.group_ids, None
        keys = [prompt_key_of(p) for p in samples.prompts]
        missing = [] if self.references is None else self.references.missing(keys)
        if self.references is not None and not missing:
            return None, self.references.gather(keys, k=self.cfg.server.num_references)
        if implicit_groups and min(Counter(keys).values()) >= 2:
            return keys, None
        have = ("no server.references file" if self.references is None
                else f"{len(missing)} of its {len(set(keys))} prompts have no reference samples in server.references")
        raise HTTPError(422, f"the reward spec {self.side.spec!r} centres each score on reference rewards of the same "
                             f"prompt; this request has no group_ids (several responses of one prompt) and the server "
                             f"has {have}. Send a group, or start the server with reference samples of these prompts")

    # -- the peers' forms ----------------------------------------------------------------------------
    def openrlhf_samples(self, body: OpenRLHFRequest) -> Samples:
        """OpenRLHF's queries as samples: the prompt split off with ``prompts[i]``, padding and end-of-sequence
        tokens removed as whole tokens of the reward model's tokenizer, a leading BOS that the tokenizer adds
        itself dropped; ``labels`` become the ``label`` column."""
        n = len(body.query)
        wrong = check_lengths({"prompts": body.prompts, "labels": body.labels}, n)
        if wrong:
            raise HTTPError(422, wrong)
        prompts, responses = [], []
        for i, query in enumerate(body.query):
            query = strip_special_edges(query, self._pads, lead=True, trail=False)
            prompt = "" if body.prompts is None else strip_special_edges(body.prompts[i], self._pads, lead=True, trail=False)
            if not query.startswith(prompt):
                raise HTTPError(422, f"query[{i}] does not start with prompts[{i}] (after padding): send the prompt as "
                                     "the policy saw it, with its chat template")
            prompts.append(strip_special_edges(prompt, self._bos, lead=True, trail=False))
            responses.append(strip_special_edges(query[len(prompt):], self._specials, lead=False, trail=True))
        columns = {} if body.labels is None else {"label": list(body.labels)}
        return Samples(prompts, responses, columns=columns)

    def slime_samples(self, body: SlimeRequest) -> Samples:
        """slime's sample: the prompt as given (text with its template, or messages), the response without
        its end-of-sequence tokens (slime keeps them: ``no_stop_trim``), ``label`` as a column."""
        prompt = body.prompt if not isinstance(body.prompt, str) else \
            strip_special_edges(strip_special_edges(body.prompt, self._pads, lead=True, trail=False), self._bos,
                                lead=True, trail=False)
        response = strip_special_edges(body.response, self._specials, lead=False, trail=True)
        return Samples([prompt], [response], columns={"label": [body.label]})

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "spec": self.side.spec, "terms": self.side.term_names,
                "reward_models": len(self.side.reward_models), "references": 0 if self.references is None
                else len(self.references), "uptime_s": round(time.time() - self.started, 1),
                "alarm": self.metrics.alarm_state()}


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front of a text by itself."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def _join(parts: list[Samples]) -> Samples:
    """Several requests' rows as one batch for the reward models (which read prompts and responses only)."""
    if len(parts) == 1:
        return parts[0]
    return Samples([p for s in parts for p in s.prompts], [r for s in parts for r in s.response_list()])


def _check_groups(group_ids: list[Any]) -> None:
    sizes = set(Counter(group_ids).values())
    if min(sizes) < 2 or len(sizes) > 1:
        raise HTTPError(422, f"group_ids: centring within groups needs every group to hold the same number (≥ 2) of "
                             f"responses; got group sizes {sorted(sizes)}")


def _where(loc: tuple) -> str:
    """A validation error's location as the client wrote it: ``responses.0`` (pydantic adds the union
    member it tried, ``responses.0.str``, which is not a field)."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _TYPE_NAMES or "[" in p))]
    return ".".join(parts) or "body"


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def _rows(out: RewardOutput) -> dict[str, Any]:
    """A `RewardOutput` as JSON: NaN (a term that did not apply) as null."""
    return {
        "scores": [s if ok else None for s, ok in zip(out.scores.tolist(), out.scorable.tolist(), strict=True)],
        "terms": {k: [finite_or_none(v) for v in t.tolist()] for k, t in out.terms.items()},
        "raw": {k: [[finite_or_none(v) for v in row] for row in t.tolist()] for k, t in out.raw.items()},
        "diagnostics": {k: finite_or_none(float(v)) for k, v in out.diagnostics.items()},
    }


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------
def build_app(service: RewardService) -> FastAPI:
    """The ASGI app over ``service``: routes, limits, authentication, error bodies."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="rewardlab reward service", lifespan=lifespan, docs_url=None, redoc_url=None)
    limits = service.cfg.server

    app.add_middleware(_Guard, service=service)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, err: HTTPError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()},
                                status_code=400)
        return JSONResponse({"error": f"field {_where(first.get('loc', ()))!r}: {first.get('msg', 'invalid')}"},
                            status_code=422)

    async def body_of(request: Request, model: type) -> Any:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise HTTPError(413, f"body is over server.max_body_bytes={limits.max_body_bytes}")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"the body is not valid JSON: {err}") from None
        try:
            return model.model_validate(data)
        except Exception as err:  # pydantic.ValidationError: name the first bad field
            errors = getattr(err, "errors", lambda: [])()
            first = errors[0] if errors else {}
            raise HTTPError(422, f"field {_where(first.get('loc', ()))!r}: {first.get('msg', str(err))}") from None

    def too_many(n: int) -> None:
        if n > limits.max_samples_per_request:
            raise HTTPError(413, f"{n} samples in one request; server.max_samples_per_request="
                                 f"{limits.max_samples_per_request}: split the batch")

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        """Native: prompts, responses, columns, optional group ids → scores, terms, raw outputs."""
        body: ScoreRequest = await body_of(request, ScoreRequest)
        n = len(body.prompts)
        if n == 0:
            raise HTTPError(422, "field 'prompts': empty; send at least one sample")
        too_many(n)
        wrong = check_lengths({"responses": body.responses, "group_ids": body.group_ids, "finished": body.finished,
                               "kl": body.kl, **{f"columns.{k}": v for k, v in body.columns.items()}}, n)
        if wrong:
            raise HTTPError(422, wrong)
        kinds = {isinstance(p, str) for p in body.prompts}
        if len(kinds) > 1:
            raise HTTPError(422, "field 'prompts': mixes text and chat conversations; send one kind per request")
        samples = Samples(body.prompts, body.responses, columns=body.columns, finished=body.finished,
                          group_ids=body.group_ids)
        out = await service.score(samples, kl=body.kl)
        return JSONResponse(_rows(out))

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        """OpenRLHF's remote reward model: ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores", "extra_logs"}``."""
        body: OpenRLHFRequest = await body_of(request, OpenRLHFRequest)
        too_many(len(body.query))
        if not body.query:  # OpenRLHF sends empty lists to all but one of several servers
            return JSONResponse({"rewards": [], "scores": [], "extra_logs": {}})
        out = await service.score(service.openrlhf_samples(body), implicit_groups=True)
        scores = [s if ok else 0.0 for s, ok in zip(out.scores.tolist(), out.scorable.tolist(), strict=True)]
        logs = {f"reward/term/{k}": [v if math.isfinite(v) else 0.0 for v in t.tolist()] for k, t in out.terms.items()}
        if len(out.terms) > 1:
            logs.update({f"reward/term/{k}/applied": [float(math.isfinite(v)) for v in t.tolist()]
                         for k, t in out.terms.items()})
        return JSONResponse({"rewards": scores, "scores": scores, "extra_logs": logs})

    @app.post("/slime")
    async def slime(request: Request) -> JSONResponse:
        """slime's remote reward model: ``{"prompt", "response", "label"}`` → the score (a JSON number)."""
        body: SlimeRequest = await body_of(request, SlimeRequest)
        out = await service.score(service.slime_samples(body))
        return JSONResponse(out.scores[0].item() if out.scorable[0] else None)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(service.health())

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class _Guard:
    """Pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs ~40 % of a small request's time): the
    API key, the declared body size, and each answer's status and latency into the metrics."""

    def __init__(self, app: Any, service: RewardService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path, service = time.perf_counter(), scope["path"], self.service
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = [500]
        if service.api_key is not None and path != "/health":
            header = headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), service.api_key.encode()):
                await _send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  {"www-authenticate": "Bearer"})
                service.metrics.request(path, 401, time.perf_counter() - start)
                return
        length = headers.get("content-length", "")
        limit = service.cfg.server.max_body_bytes
        if length.isdigit() and int(length) > limit:
            await _send_error(send, 413, f"body of {length} bytes is over server.max_body_bytes={limit}")
            service.metrics.request(path, 413, time.perf_counter() - start)
            return

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            service.metrics.request(path, status[0], time.perf_counter() - start)


async def _send_error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
