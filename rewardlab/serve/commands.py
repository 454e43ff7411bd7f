"""Serve the reward calculation over HTTP, for OpenRLHF, veRL, slime and TRL runs.

    rewardlab serve --config serve.yaml                              # 127.0.0.1:8000
    rewardlab serve --config serve.yaml --set server.port=9000 --set server.max_batch_size=128
    REWARDLAB_API_KEY=$(openssl rand -hex 32) rewardlab serve --config serve.yaml --set server.host=0.0.0.0

``serve.yaml`` has a PPO config's ``models:`` and ``reward:`` sections, as they are, plus ``server:``
(host, port, key, limits, batching, reference samples). The reward side — reward models, rule
terms, the pipeline — loads once; then it answers ``POST /score`` (native), ``POST /get_reward``
(OpenRLHF's ``--remote_rm_url``), ``POST /slime`` (slime's ``--rm-url``), ``GET /health`` and
``GET /metrics`` (Prometheus). It binds loopback unless given an API key. SIGTERM answers the
requests in flight, then exits 0; Ctrl-C likewise, exit 130. See docs/serve.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.serve.config import field_docs

    parser.add_argument("--config", help="YAML: a PPO config's models: and reward: sections, plus server:")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a field, e.g. --set server.port=9000 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the rule functions, print the resolved config, exit (no model loads)")
    group = parser.add_argument_group("config: server (set with --set server.KEY=VALUE)")
    for _, name, default, help_ in field_docs():
        group.add_argument(f"--server.{name}", dest=f"_doc_{name}", help=f"{help_} (default: {default!r})",
                           default=argparse.SUPPRESS, metavar="V")


def run(args: argparse.Namespace) -> int:
    import json

    from rewardlab.ppo.config import reward_spec
    from rewardlab.serve.config import load_serve_config

    overrides = list(args.set) + [f"server.{k[5:]}={v}" for k, v in vars(args).items() if k.startswith("_doc_")]
    cfg = load_serve_config(args.config, overrides)
    cfg.check_security()
    reward_spec(cfg.models, cfg.reward, unnamed_models=0)  # the rule functions import and take the completions
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    return serve(cfg)


def build_service(cfg):
    """Load the reward side and score the reference samples: the `RewardService` a server runs."""
    from rewardlab.devices import resolve_device
    from rewardlab.ppo.models import build_reward_side
    from rewardlab.reward.baselines import ReferenceRewards, prompt_key_of
    from rewardlab.reward.commands import _samples, read_jsonl, score_rows
    from rewardlab.serve.app import RewardService

    s = cfg.server
    device = resolve_device(s.device, "server.device")
    side = build_reward_side(cfg.models, cfg.reward, columns=None, device=device, dtype=s.dtype)
    references = None
    if s.references is not None:
        rows = read_jsonl(s.references, "server.references")
        references = ReferenceRewards()
        references.add([prompt_key_of(p) for p in _samples(rows).prompts], score_rows(rows, side.reference_scores))
    return RewardService(cfg, side, references=references, api_key=cfg.api_key())


def serve(cfg, service=None) -> int:
    """Run the server until SIGTERM (exit 0) or Ctrl-C (exit 130), answering what is in flight first.

    ``service``: a `RewardService` built in Python (e.g. over reward models loaded with their own
    tokenizer folder); default: built from ``cfg`` (`build_service`).
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        from rewardlab.errors import RewardlabError

        raise RewardlabError("rewardlab serve needs fastapi and uvicorn: pip install 'rewardlab[serve]'") from None

    from rewardlab.serve.app import build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = service if service is not None else build_service(cfg)
    s = cfg.server
    config = uvicorn.Config(build_app(service), host=s.host, port=s.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=s.graceful_shutdown_s, lifespan="on")
    server = _Server(config, describe=f"{len(service.side.reward_models)} reward model(s), spec {service.side.spec!r}")
    server.run()
    if server.interrupted:
        return 130
    return 0 if server.started else 1


class _Server:
    """uvicorn's server with the exits a service manager expects: SIGTERM drains and exits 0.

    (uvicorn re-raises the signal it shut down on, so the process would end *by* SIGTERM.)
    """

    def __new__(cls, config, describe: str):
        import uvicorn

        class Server(uvicorn.Server):
            interrupted = False

            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in handlers.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame) -> None:
                if sig == signal.SIGINT:
                    self.interrupted = True
                super().handle_exit(sig, frame)

            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=sockets)
                if self.started:
                    for server in self.servers:
                        for sock in server.sockets:
                            host, port = sock.getsockname()[:2]
                            print(f"rewardlab serve: listening on http://{host}:{port} ({describe})", flush=True)

        return Server(config)
