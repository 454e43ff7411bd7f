"""`rewardlab serve`'s config: a PPO config's ``models:`` and ``reward:`` sections, as they are, plus ``server:``.

A run's reward part copies over unchanged; the PPO config's other sections (``data``, ``kl`` …) are
accepted and ignored, so a whole run config can be served. Every field is checked before any
model loads, naming the field, the value and what is allowed.

Example::

    models: {reward_model_path: runs/rm}
    reward: {reward_pipeline: "0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:rules.py:correct]"}
    server: {port: 8000, max_batch_size: 64, max_wait_ms: 5}

    cfg = load_serve_config("serve.yaml", overrides=["server.port=9000"])
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import SECTIONS, ModelsConfig, RewardConfig, reward_spec
from rewardlab.yamlconf import check_type

API_KEY_ENV = "REWARDLAB_API_KEY"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    host: str = _f("127.0.0.1", "address to bind; any address off loopback needs an API key (api_key_env)")
    port: int = _f(8000, "TCP port (0: any free port, printed at start)")
    api_key_env: str | None = _f(
        None, f"name of the environment variable holding the API key clients send as 'Authorization: Bearer KEY' "
              f"(also read from {API_KEY_ENV} when unset); required to bind off loopback")
    max_batch_size: int = _f(64, "dynamic batching: the most samples gathered from concurrent requests into one "
                                 "reward-model batch")
    max_wait_ms: float = _f(5.0, "dynamic batching: how long the first request of a batch waits for others (ms)")
    max_body_bytes: int = _f(8 * 2**20, "largest request body accepted (413 beyond)")
    max_samples_per_request: int = _f(2048, "most samples in one request (413 beyond)")
    request_timeout_s: float = _f(120.0, "a request not answered within this many seconds gets 504")
    device: str = _f("auto", "where the reward models run: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1' …")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = _f(
        None, "reward models' dtype (None: models.dtype; frozen models may use float16)")
    references: str | None = _f(
        None, "JSONL of reference-policy responses (prompt/response or messages rows, K per prompt), scored once at "
              "start: centred terms centre single samples on them")
    num_references: int | None = _f(None, "use the first K references of each prompt (None: all; prompts must agree)")
    alarm_window: int = _f(256, "samples per window of the over-optimisation alarm computed over the scored stream")
    graceful_shutdown_s: float = _f(60.0, "on SIGTERM, how long in-flight requests may take to finish")


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(ServerConfig)


def _check_server(s: ServerConfig) -> ServerConfig:
    values = {f.name: check_type(f"server.{f.name}", getattr(s, f.name), _hints()[f.name]) for f in fields(s)}
    s = ServerConfig(**values)

    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise RewardlabError(f"server.{name}={getattr(s, name)!r} is invalid: {allowed}")

    need(0 <= s.port <= 65535, "port", "must be in 0..65535")
    need(s.max_batch_size >= 1, "max_batch_size", "must be ≥ 1")
    need(math.isfinite(s.max_wait_ms) and s.max_wait_ms >= 0, "max_wait_ms", "must be ≥ 0")
    need(s.max_body_bytes >= 1024, "max_body_bytes", "must be ≥ 1024")
    need(s.max_samples_per_request >= 1, "max_samples_per_request", "must be ≥ 1")
    need(math.isfinite(s.request_timeout_s) and s.request_timeout_s > 0, "request_timeout_s", "must be > 0")
    need(math.isfinite(s.graceful_shutdown_s) and s.graceful_shutdown_s > 0, "graceful_shutdown_s", "must be > 0")
    need(s.alarm_window >= 2, "alarm_window", "must be ≥ 2 (a standard deviation needs two samples)")
    need(s.num_references is None or s.num_references >= 1, "num_references", "must be ≥ 1 or null")
    need(s.num_references is None or s.references is not None, "num_references", "is read with server.references only")
    need(bool(s.host.strip()), "host", "give an address, e.g. 127.0.0.1")
    return s


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds loopback only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """The whole server config: the reward part of a PPO config and the server's own section."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def api_key(self) -> str | None:
        """The API key from the environment (``server.api_key_env``, else ``REWARDLAB_API_KEY``), or None."""
        name = self.server.api_key_env or API_KEY_ENV
        key = os.environ.get(name)
        if self.server.api_key_env and not key:
            raise RewardlabError(f"server.api_key_env={name!r}, but the environment variable {name} is not set; "
                                 f"export {name}=<a long random key> (e.g. `openssl rand -hex 32`)")
        return key or None

    def check_security(self) -> None:
        """A server off loopback needs a key: no unauthenticated reward endpoint on a network."""
        if not is_loopback(self.server.host) and self.api_key() is None:
            raise RewardlabError(
                f"server.host={self.server.host!r} binds beyond loopback, and no API key is set; export "
                f"{self.server.api_key_env or API_KEY_ENV}=<key> (clients send 'Authorization: Bearer <key>'), or bind "
                "127.0.0.1 and reach it through an SSH tunnel")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["models"]["lora_target_modules"] = list(self.models.lora_target_modules)
        out["models"]["reward_model_paths"] = list(self.models.reward_model_paths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServeConfig:
        """From nested sections (``models``, ``reward``, ``server``); a PPO config's other sections are ignored."""
        data = dict(data or {})
        sections: dict[str, dict[str, Any]] = {"models": {}, "reward": {}, "server": {}}
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise RewardlabError(f"{key}: must be a mapping of fields, got {type(value).__name__}")
                sections[key].update(value)
            elif key not in SECTIONS:
                raise RewardlabError(f"unknown section {key!r} in a serve config; its sections are models, reward and "
                                     f"server (a PPO config's {', '.join(s for s in SECTIONS if s not in sections)} "
                                     "are accepted and ignored)")
        server_fields = {f.name for f in fields(ServerConfig)}
        unknown = sorted(set(sections["server"]) - server_fields)
        if unknown:
            raise RewardlabError(f"unknown server field(s) {unknown}; server fields: {', '.join(sorted(server_fields))}")
        cfg = cls(models=_section(ModelsConfig, "models", sections["models"]),
                  reward=_section(RewardConfig, "reward", sections["reward"]),
                  server=_check_server(ServerConfig(**sections["server"])))
        cfg.check_reward()
        return cfg

    def check_reward(self) -> None:
        """What a server cannot do with a reward spec, refused before any model loads.

        Requests arrive concurrently and in no fixed order, so a transform whose state moves with the
        data (``running_norm``, a ``standardize`` fitted on its first batch) would make a score depend
        on other clients' requests; ``whiten`` normalises over each request's own samples.
        """
        r = self.reward
        try:
            spec = reward_spec(self.models, r, resolve=False, unnamed_models=0)
        except RewardlabError as err:
            raise RewardlabError(f"reward.reward_pipeline={r.reward_pipeline!r} is invalid: {err}") from None
        for term in spec.terms:
            for t in term.chain:
                if t.name == "running_norm" or (t.name == "standardize" and not t.params):
                    raise RewardlabError(
                        f"reward.reward_pipeline={r.reward_pipeline!r}: {t.spec} keeps statistics of the data it has seen, "
                        "and a server's requests arrive in no fixed order, so a sample's score would depend on other "
                        "clients' requests; use whiten (per request), standardize(mean=…, std=…) with fixed values, or "
                        "no normaliser")
        if r.overlong_buffer_len is not None:
            raise RewardlabError("reward.overlong_buffer_len is a PPO penalty on response lengths in the policy's tokens, "
                                 "which a server does not know; unset it (apply it in the trainer)")


def _section(cls: type, name: str, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RewardlabError(f"unknown {name} field(s) {unknown}; {name} fields: {', '.join(sorted(known))}")
    return cls(**values)


def load_serve_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> ServeConfig:
    """Read a YAML serve config (nested sections), apply ``section.key=value`` overrides, validate."""
    from rewardlab.yamlconf import load_yaml, load_yaml_mapping

    data = load_yaml_mapping(path, "sections")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        section, dot, leaf = key.strip().partition(".")
        if not sep or not dot or section not in ("models", "reward", "server"):
            raise RewardlabError(f"override {item!r} is not section.key=value with a section of models, reward, server; "
                                 "e.g. --set server.port=9000")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise RewardlabError(f"{section}: must be a mapping of fields")
        data[section][leaf] = load_yaml(text) if text.strip() else None
    return ServeConfig.from_dict(data)


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(section, name, default, help) of the server section — for --help and docs."""
    return [("server", f.name, f.default, f.metadata.get("help", "")) for f in fields(ServerConfig)]
