"""veRL's ``custom_reward_function`` calling `rewardlab serve`: ``compute_score`` and a batch form.

veRL gives a reward function the response alone (``solution_str``), the ``ground_truth`` and the
sample's ``extra_info``; a reward model also needs the prompt, so the dataset's ``extra_info``
must carry it (``prompt``, or name the key with ``prompt_key``; veRL's GSM8K preprocessing stores
``question``, which is tried next)::

    custom_reward_function.path=$(python -c "import rewardlab.integrations.verl as m; print(m.__file__)")
    custom_reward_function.name=compute_score                       # one sample per call (naive manager)
    +custom_reward_function.reward_kwargs.url=http://127.0.0.1:8000  # or REWARDLAB_URL

    custom_reward_function.name=compute_score_batch                 # with reward_model.reward_manager=batch

(veRL's newer reward loop spells them ``reward.custom_reward_function.*``.) Rule terms of the
server's spec read ``label`` (= ``ground_truth``), ``ground_truth``, ``data_source`` and every key
of ``extra_info`` as columns. The answer is veRL's dict form: ``{"score": …}`` plus each reward
term's value, which veRL logs as extra reward info. In the batch form the responses of one prompt
are sent as a group, so centred terms centre within it (GRPO's groups are in one batch).
"""

from __future__ import annotations

from typing import Any

PROMPT_KEYS = ("prompt", "question")
_CLIENTS: dict[str | None, Any] = {}


def _client(url: str | None, api_key: str | None):
    from rewardlab.serve.client import RewardClient

    key = f"{url}|{api_key}"
    if key not in _CLIENTS:
        _CLIENTS[key] = RewardClient(url, api_key=api_key)
    return _CLIENTS[key]


def _prompt(extra_info: dict[str, Any] | None, prompt_key: str | None) -> Any:
    info = extra_info or {}
    keys = (prompt_key,) if prompt_key else PROMPT_KEYS
    for key in keys:
        if info.get(key) is not None:
            return info[key]
    from rewardlab.errors import RewardlabError

    raise RewardlabError(f"the sample's extra_info has no prompt under {list(keys)} (keys: {sorted(info)}); a reward "
                         "model scores prompt + response, and veRL passes only the response: put the prompt into "
                         "extra_info when preparing the data, or name its key with reward_kwargs.prompt_key")


def _columns(data_sources: list[Any], ground_truths: list[Any], extra_infos: list[dict[str, Any] | None]) -> dict:
    from rewardlab.serve.client import jsonable_columns

    n = len(data_sources)
    columns: dict[str, list[Any]] = {"label": list(ground_truths), "ground_truth": list(ground_truths),
                                     "data_source": list(data_sources)}
    for key in sorted({k for info in extra_infos for k in (info or {})}):
        if key not in columns:
            columns[key] = [(info or {}).get(key) for info in extra_infos]
    return jsonable_columns(columns, n)


def _results(out: dict[str, Any]) -> list[dict[str, float]]:
    results = []
    for i, score in enumerate(out["scores"]):
        row = {"score": 0.0 if score is None else float(score)}
        for term, values in out["terms"].items():
            if len(out["terms"]) > 1:
                row[f"rewardlab/{term}"] = 0.0 if values[i] is None else float(values[i])
        results.append(row)
    return results


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None,
                  *, url: str | None = None, api_key: str | None = None, prompt_key: str | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """One sample (veRL's naive reward manager): ``{"score": …, "rewardlab/<term>": …}``."""
    out = _client(url, api_key).score([_prompt(extra_info, prompt_key)], [solution_str],
                                      columns=_columns([data_source], [ground_truth], [extra_info]))
    return _results(out)[0]


def compute_score_batch(data_sources: list[Any], solution_strs: list[str], ground_truths: list[Any],
                        extra_infos: list[dict[str, Any] | None], *, url: str | None = None, api_key: str | None = None,
                        prompt_key: str | None = None, **kwargs: Any) -> list[dict[str, float]]:
    """A batch (``reward_model.reward_manager=batch``): one request; the responses of one prompt as a group."""
    prompts = [_prompt(info, prompt_key) for info in extra_infos]
    keys = [repr(p) for p in prompts]
    counts = {k: keys.count(k) for k in set(keys)}
    groups = keys if len(set(counts.values())) == 1 and min(counts.values()) >= 2 else None
    out = _client(url, api_key).score(prompts, list(solution_strs), group_ids=groups,
                                      columns=_columns(list(data_sources), list(ground_truths), list(extra_infos)))
    return _results(out)
