"""RewardModel: raw head logits ``(B, H)`` from any sequence-classification reward model.

It loads a Hugging Face ``*ForSequenceClassification`` folder (safetensors only, no remote code
unless asked), tokenises (prompt, response) pairs or conversations, and pools the head output at
the last real token of every row, whatever the padding side. The logits it returns are *raw*:
turning them into the reward PPO optimises is the job of `rewardlab.reward.pipeline`.

Example::

    rm = RewardModel.from_pretrained("./runs/rm", batch_size=16)
    logits = rm.score_texts(["Q: 2+2?"], [" A: 4"])          # (1, H) float32 on CPU

Pooling. Most HF classifiers pool at the rightmost token that is not ``pad_token_id``, which is
wrong when a real token equals the pad id (pad = eos is common) and ignores the attention mask.
We instead run the backbone with the mask and position ids ``cumsum(mask) - 1`` (so a left-padded
row sees the same positions as the unpadded one), apply the score head to every position
``(B, T, D) -> (B, T, H)`` and gather at the last position whose mask is 1. Models without a
``score`` head are called whole on left-padded (right-aligned) rows; per-token outputs
``(B, T, H)`` are pooled the same way, already-pooled ``(B, H)`` outputs are taken as they are.

Batching. Rows are sorted by length and scored in micro-batches of ``batch_size`` trimmed to
their own longest row, under ``torch.inference_mode``; results come back in the caller's order.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.ops.masked import last_true_index
from rewardlab.reward.metadata import RewardModelMetadata, check_semantics, read_metadata

__all__ = ["RewardModel", "pool_last_token", "last_token_index"]

logger = logging.getLogger("rewardlab.scoring")

NanPolicy = Literal["error", "drop"]
# |mean correlation between heads| beyond which declared semantics count as contradicted; also
# `rewardlab inspect`'s "high" level (rewardlab.reward_model.inspect.HIGH_CORR). BT heads correlate strongly positively, a
# 2-class classifier's logits strongly negatively.
CONTRADICTION_CORR = 0.8
MIN_EVIDENCE_ROWS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last position whose mask is 1, for any padding side.

    Shapes: attention_mask (B, T) -> (B,) int64.
    """
    idx = last_true_index(attention_mask)
    if bool((idx < 0).any()):
        rows = (idx < 0).nonzero().flatten().tolist()
        raise RewardlabError(
            f"rows {rows} have an all-zero attention mask: nothing to score; drop empty rows"
        )
    return idx


def pool_last_token(scores: Tensor, attention_mask: Tensor) -> Tensor:
    """Per-token scores pooled at each row's last real token.

    Shapes: scores (B, T, H), attention_mask (B, T) -> (B, H).
    """
    if scores.dim() != 3 or scores.shape[:2] != attention_mask.shape:
        raise RewardlabError(
            f"per-token scores must be (B, T, H) matching the mask (B, T); got {tuple(scores.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    idx = last_token_index(attention_mask).to(scores.device)
    return scores[torch.arange(scores.shape[0], device=scores.device), idx]


def _position_ids(attention_mask: Tensor) -> Tensor:
    # Left-padded rows must see positions 0, 1, ... from their first real token, as unpadded ones do.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _call_kwargs(forward: Any, attention_mask: Tensor) -> dict[str, Any]:
    """Keyword arguments for a forward pass: the mask, position ids from it, and no KV cache."""
    kwargs: dict[str, Any] = {"attention_mask": attention_mask}
    if _accepts(forward, "position_ids"):
        kwargs["position_ids"] = _position_ids(attention_mask)
    if _accepts(forward, "use_cache"):
        kwargs["use_cache"] = False  # scoring is one forward pass; a cache would only cost memory
    return kwargs


def semantics_contradiction(logits: Tensor, semantics: str | None) -> str | None:
    """Why the head logits contradict the semantics, or None (also when there is too little evidence).

    The statistic is `rewardlab inspect`'s: the mean Pearson correlation between heads over the rows.
    Bradley-Terry heads trained on one loss move together (correlation near +1); a 2-class
    cross-entropy classifier's logits get opposite gradients (near −1).

    Shapes: logits (N, H).
    """
    from rewardlab.reward.pipeline import head_correlation

    if semantics is None or logits.dim() != 2 or logits.shape[1] < 2 or logits.shape[0] < MIN_EVIDENCE_ROWS:
        return None
    corr = head_correlation(logits)
    if semantics == "bradley_terry" and corr <= -CONTRADICTION_CORR:
        return (f"its {logits.shape[1]} heads correlate {corr:+.4f} over {logits.shape[0]} sequences, as a cross-entropy "
                "classifier's logits do; Bradley-Terry heads correlate strongly positively")
    if semantics == "classifier" and logits.shape[1] == 2 and corr >= CONTRADICTION_CORR:
        return (f"its 2 heads correlate {corr:+.4f} over {logits.shape[0]} sequences, as Bradley-Terry heads do; a "
                "2-class classifier's logits correlate strongly negatively")
    return None


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map text to the same ids: same vocabulary and the same special tokens."""
    if a is b:
        return True
    specials = (
        "pad_token",
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    if any(getattr(a, s, None) != getattr(b, s, None) for s in specials):
        return False
    if type(a).__name__ != type(b).__name__:
        return False
    return a.get_vocab() == b.get_vocab()


def use_eos_as_pad(tokenizer: Any, what: str) -> None:
    """Give a tokenizer without a pad token its EOS as pad token, as TRL does, with one logged line.

    Safe here: rewardlab reads every row's last real token from the attention mask, never by
    searching for the pad id. A tokenizer without EOS either is refused with the fix.
    """
    if tokenizer.eos_token is None:
        raise RewardlabError(
            f"{what} has neither a pad token nor an EOS token to pad with; set one before scoring, e.g. add a "
            "'[PAD]' token (`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`) and resize the embeddings")
    tokenizer.pad_token = tokenizer.eos_token
    logger.warning("%s has no pad token; padding with its EOS token %r (id %s), as TRL does", what,
                   tokenizer.eos_token, tokenizer.eos_token_id)


class RewardModel:
    """A sequence-classification reward model that returns raw head logits ``(B, H)``.

    Args:
        model: any ``AutoModelForSequenceClassification`` (or a module whose output ``logits``
            are per-token ``(B, T, H)`` or pooled ``(B, H)``); put in eval mode.
        tokenizer: its tokenizer; without a pad token, its EOS pads (one logged line, as TRL).
        semantics: ``"bradley_terry"`` or ``"classifier"``; default: the model's rewardlab metadata,
            else None (undeclared).
        device, dtype: where and in which precision to run the model (default: left as they are).
        batch_size: rows per micro-batch.
        max_length: longest sequence fed to the model; default ``tokenizer.model_max_length``
            capped by the config's maximum positions.
        nan_policy: ``"error"`` (default) raises on NaN/inf logits naming the rows; ``"drop"``
            logs the count and leaves those rows in place, flagged False in `last_kept_mask`.

    After each ``score_*`` call, ``last_kept_mask`` (B,) bool marks the rows with finite logits
    (all True under ``nan_policy="error"``); with ``"drop"`` select ``logits[rm.last_kept_mask]``
    and the matching rows of your batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        semantics: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        nan_policy: NanPolicy = "error",
    ) -> None:
        if tokenizer.pad_token is None:
            use_eos_as_pad(tokenizer, "the reward model's tokenizer")
        if batch_size < 1:
            raise RewardlabError(f"batch_size must be >= 1; got {batch_size}")
        if nan_policy not in ("error", "drop"):
            raise RewardlabError(f"nan_policy must be 'error' or 'drop'; got {nan_policy!r}")
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.nan_policy: NanPolicy = nan_policy
        config = getattr(model, "config", None)
        self.num_heads: int = int(getattr(config, "num_labels", 1))
        self.metadata: RewardModelMetadata | None = read_metadata(config) if config is not None else None
        self.semantics_source: str | None = None  # "declared" by the caller, "metadata", or None (unknown)
        self.semantics = self._resolve_semantics(semantics)
        self.max_length: int | None = max_length if max_length is not None else self._default_max_length()
        if self.max_length is not None and self.max_length < 1:
            raise RewardlabError(f"max_length must be >= 1; got {self.max_length}")
        self.last_kept_mask: Tensor = torch.ones(0, dtype=torch.bool)
        self._same_tok: dict[int, tuple[Any, bool]] = {}  # id -> (tokenizer kept alive, same?)
        self._head, self._backbone = self._find_head()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        semantics: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        nan_policy: NanPolicy = "error",
        tokenizer_path: str | os.PathLike | None = None,
        allow_untrained_head: bool = False,
    ) -> RewardModel:
        """Load a reward model and its tokenizer from a local ``save_pretrained`` folder.

        Only safetensors weights are read; remote code runs only with ``trust_remote_code=True``.
        The tokenizer comes from `tokenizer_path` (default: the same folder). A folder whose weights
        lack some of the model's parameters (transformers reports them MISSING and initialises them
        at random — typically a causal-LM folder, whose score head was never trained) is refused
        unless ``allow_untrained_head=True``.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rewardlab.local import model_folder  # no config.json, pickle-only or truncated weights: named

        folder = Path(model_folder(path, "reward model path", trust_remote_code=trust_remote_code))
        if not folder.is_dir():
            raise RewardlabError(
                f"reward model path {str(path)!r} does not exist or is not a folder; pass a local folder "
                "written by `save_pretrained` (config.json + *.safetensors + tokenizer files)"
            )
        if not any(folder.glob("*.safetensors")):
            found = sorted(p.name for p in folder.iterdir())
            raise RewardlabError(
                f"no safetensors weights in {str(path)!r} (found {found}); rewardlab loads safetensors only. "
                "Re-save the model with `model.save_pretrained(folder)` (transformers writes safetensors)"
            )
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
        )
        missing = sorted(info.get("missing_keys") or [])
        if missing and not allow_untrained_head:
            shown = ", ".join(missing[:4]) + (" …" if len(missing) > 4 else "")
            raise RewardlabError(
                f"reward model {str(path)!r} is not a trained reward model: its weights have no {shown}, so "
                "transformers initialised them at random (MISSING), and every score would come from a random "
                "head. Is it a causal-LM or base-model folder? Train a reward model on it (`rewardlab train-rm`), "
                "or, to score with an untrained head on purpose, set allow_untrained_head "
                "(reward.allow_untrained_head: true in a PPO config, --allow-untrained-head for `rewardlab "
                "score`, allow_untrained_head=True in Python)"
            )
        if missing:
            logger.warning("reward model %s: %s initialised at random (allow_untrained_head)", path, ", ".join(missing))
        tok_folder = Path(tokenizer_path or folder)
        # transformers builds an empty tokenizer from config.json alone; refuse instead of scoring garbage.
        if not any((tok_folder / name).is_file() for name in TOKENIZER_FILES):
            raise RewardlabError(
                f"no tokenizer files in {str(tok_folder)!r} (looked for {', '.join(TOKENIZER_FILES)}); save the "
                "tokenizer beside the model with `tokenizer.save_pretrained(folder)` or pass tokenizer_path="
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_path or folder, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise RewardlabError(
                f"could not load a tokenizer from {str(tokenizer_path or folder)!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); save it beside the model with `tokenizer.save_pretrained(folder)` "
                "or pass tokenizer_path="
            ) from None
        return cls(
            model,
            tokenizer,
            semantics=semantics,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            nan_policy=nan_policy,
        )

    def _resolve_semantics(self, declared: str | None) -> str | None:
        try:
            declared = check_semantics(declared)
        except ValueError as err:
            raise RewardlabError(str(err)) from None
        meta = self.metadata
        if meta is not None and meta.num_heads != self.num_heads:
            raise RewardlabError(
                f"model metadata says {meta.num_heads} heads but config.num_labels = {self.num_heads}; "
                "fix the 'rewardlab' entry of config.json"
            )
        if declared is not None:
            if meta is not None and meta.semantics != declared:
                logger.warning("semantics=%r overrides the model's metadata (%r)", declared, meta.semantics)
            self.semantics_source = "metadata" if meta is not None and meta.semantics == declared else "declared"
            return declared
        self.semantics_source = "metadata" if meta is not None else None
        return meta.semantics if meta is not None else None

    def check_declared_semantics(
        self, logits: Tensor | None = None, *, semantics: str | None = None, declared_as: str = "semantics",
        override: str = "allow_semantics_mismatch=True",
    ) -> None:
        """Refuse declared semantics that the model's own outputs contradict.

        Only semantics declared by the caller are checked (the metadata rewardlab's trainer writes is a
        record of how the model was trained). The evidence is `logits` (e.g. the batch being scored)
        when it has at least 8 rows, else the outputs on 64 random token sequences, as `rewardlab
        inspect` measures them without preference data.

        Args:
            logits: (N, H) outputs already computed, or None.
            semantics: semantics the caller reads the model with instead of `self.semantics` (declared
                unless the metadata says the same).
            declared_as: how the caller declared them, for the message (``--semantics``,
                ``reward.reward_semantics`` …).
            override: how to proceed anyway, for the message.
        """
        if semantics is None:
            semantics = self.semantics if self.semantics_source == "declared" else None
        elif self.metadata is not None and self.metadata.semantics == semantics:
            semantics = None
        if self.num_heads < 2 or semantics is None:
            return
        if logits is None or logits.shape[0] < MIN_EVIDENCE_ROWS:
            from rewardlab.reward.readings import probe_sequences

            logits = self._score_rows(probe_sequences(self.tokenizer))
            where = "random token sequences"
        else:
            where = "the scored rows"
        why = semantics_contradiction(logits, semantics)
        if why is not None:
            raise RewardlabError(
                f"{declared_as}={semantics} is contradicted by the model's outputs on {where}: {why}. "
                f"Run `rewardlab inspect MODEL` to see the evidence and the reading it recommends; if you are sure "
                f"of the semantics, set {override}"
            )

    def _default_max_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        limits = [getattr(config, k, None) for k in ("n_positions", "max_position_embeddings")]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        # Tokenizers without a limit report a huge sentinel (int(1e30)).
        if tok_max is not None and tok_max < 1_000_000:
            limits.append(tok_max)
        limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
        return min(limits) if limits else None

    def _find_head(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        """The per-token score head and backbone of decoder classifiers (``model.score``), if present."""
        head = getattr(self.model, "score", None)
        prefix = getattr(self.model, "base_model_prefix", None)
        backbone = getattr(self.model, prefix, None) if isinstance(prefix, str) and prefix else None
        if (
            isinstance(head, torch.nn.Module)
            and isinstance(backbone, torch.nn.Module)
            and backbone is not self.model
        ):
            return head, backbone
        return None, None

    # ------------------------------------------------------------------ public scoring
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """Score ``prompt + response`` (plain text concatenation, the tokenizer's own special tokens).

        Shapes: returns (B, H) float32 on CPU.
        """
        if len(prompts) != len(responses):
            raise RewardlabError(
                f"got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per response"
            )
        rows = [
            self._encode_pair(p, r, add_special_tokens=True, row=i)
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
        ]
        return self._score_rows(rows)

    def score_messages(self, conversations: Sequence[Sequence[dict[str, str]]]) -> Tensor:
        """Score conversations rendered with the tokenizer's chat template; the last turn is the response.

        Shapes: returns (B, H) float32 on CPU.
        """
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise RewardlabError(
                "score_messages needs a tokenizer with a chat template; set `tokenizer.chat_template` "
                "or pass (prompt, response) text to score_texts"
            )
        rows = []
        for i, conv in enumerate(conversations):
            conv = list(conv)
            if not conv:
                raise RewardlabError(f"conversation {i} is empty; each needs at least one message")
            full = self.tokenizer.apply_chat_template(conv, tokenize=False)
            prompt = ""
            if len(conv) > 1:
                prompt = self.tokenizer.apply_chat_template(
                    conv[:-1], tokenize=False, add_generation_prompt=True
                )
                if not full.startswith(prompt):
                    # The template does not render the prompt as a prefix: treat it all as response,
                    # so truncation errors instead of cutting into an unknown boundary.
                    prompt = ""
            # Templates write their own special tokens into the text.
            rows.append(self._encode_pair(prompt, full[len(prompt) :], add_special_tokens=False, row=i))
        return self._score_rows(rows)

    def score_ids(
        self, input_ids: Tensor, attention_mask: Tensor, prompt_lengths: Tensor | None = None
    ) -> Tensor:
        """Score token ids already in the reward model's vocabulary; any padding side.

        Rows longer than `max_length` lose tokens from the left (the prompt side) with a warning;
        with `prompt_lengths` (real prompt tokens per row) a response longer than `max_length` errors.

        Shapes: input_ids (B, T), attention_mask (B, T), prompt_lengths (B,) -> (B, H) float32 CPU.
        """
        rows = self._real_rows(input_ids, attention_mask)
        out = []
        for i, ids in enumerate(rows):
            n_prompt = None if prompt_lengths is None else int(prompt_lengths[i])
            out.append(self._truncate(ids, n_prompt_tokens=n_prompt, row=i))
        return self._score_rows(out)

    def shares_tokenizer(self, policy_tokenizer: Any) -> bool:
        """Whether ``policy_tokenizer`` maps text to this model's ids (same vocabulary and special tokens).

        Checked once per tokenizer object; the first mismatch is logged.
        """
        key = id(policy_tokenizer)
        if key not in self._same_tok:
            same = same_tokenizer(policy_tokenizer, self.tokenizer)
            self._same_tok[key] = (policy_tokenizer, same)
            if not same:
                logger.warning(
                    "policy and reward model tokenizers differ (vocabulary or special tokens): "
                    "decoding policy tokens and re-tokenising with the reward model's tokenizer"
                )
        return self._same_tok[key][1]

    def score_policy_ids(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        policy_tokenizer: Any,
        prompt_lengths: Tensor | None = None,
        *,
        use_chat_template: bool | None = None,
    ) -> Tensor:
        """Score policy tokens: passed through when the tokenizers match, else decoded and re-tokenised.

        Tokenizers match when vocabulary and special tokens are equal (not object identity). Otherwise
        each row is decoded without the policy's special tokens (the reward tokenizer adds its own),
        split at `prompt_lengths` into prompt and response text, and scored as messages (prompt as
        the user turn) when `use_chat_template` (default: the reward tokenizer has a template and
        `prompt_lengths` is given), else as concatenated text.

        Shapes: input_ids (B, T), attention_mask (B, T), prompt_lengths (B,) real prompt tokens per
        row -> (B, H) float32 on CPU.
        """
        if self.shares_tokenizer(policy_tokenizer):
            return self.score_ids(input_ids, attention_mask, prompt_lengths)

        if use_chat_template is None:
            use_chat_template = (
                prompt_lengths is not None and getattr(self.tokenizer, "chat_template", None) is not None
            )
        rows = self._real_rows(input_ids, attention_mask)
        prompts, responses = [], []
        for i, ids in enumerate(rows):
            n = 0 if prompt_lengths is None else int(prompt_lengths[i])
            prompt = policy_tokenizer.decode(ids[:n], skip_special_tokens=True)
            response = policy_tokenizer.decode(ids[n:], skip_special_tokens=True)
            if not use_chat_template:
                # Decoding the whole row keeps the text between prompt and response (e.g. a space)
                # that decoding the two halves apart would lose.
                full = policy_tokenizer.decode(ids, skip_special_tokens=True)
                if full.startswith(prompt):
                    response = full[len(prompt) :]
            prompts.append(prompt)
            responses.append(response)
        if use_chat_template:
            return self.score_messages(
                [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                    for p, r in zip(prompts, responses, strict=True)
                ]
            )
        return self.score_texts(prompts, responses)

    # ------------------------------------------------------------------ tokenisation
    def _encode_pair(self, prompt: str, response: str, *, add_special_tokens: bool, row: int) -> list[int]:
        """Token ids of ``prompt + response``, prompt tokens dropped from the left if too long."""
        tok = self.tokenizer
        text = prompt + response
        try:
            enc = tok(
                text,
                add_special_tokens=add_special_tokens,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
            offsets = enc["offset_mapping"]
        except NotImplementedError:  # slow tokenizers have no offsets
            enc, offsets = (
                tok(text, add_special_tokens=add_special_tokens, return_special_tokens_mask=True),
                None,
            )
        ids: list[int] = list(enc["input_ids"])
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        special = enc["special_tokens_mask"]
        # Prompt tokens: non-special tokens lying entirely inside the prompt's characters. A token
        # straddling the boundary belongs to the response (it is kept).
        if offsets is not None:
            is_prompt = [
                not s and end <= len(prompt) and end > start
                for (start, end), s in zip(offsets, special, strict=True)
            ]
        else:
            n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
            plain = set([i for i, s in enumerate(special) if not s][:n_prompt])
            is_prompt = [i in plain for i in range(len(ids))]
        return self._drop_prompt_tokens(ids, is_prompt, row=row)

    def _truncate(self, ids: list[int], *, n_prompt_tokens: int | None, row: int) -> list[int]:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        if n_prompt_tokens is None:
            logger.warning(
                "row %d has %d tokens > max_length=%d: dropping %d tokens from the left (prompt side)",
                row,
                len(ids),
                self.max_length,
                len(ids) - self.max_length,
            )
            return ids[len(ids) - self.max_length :]
        is_prompt = [i < n_prompt_tokens for i in range(len(ids))]
        return self._drop_prompt_tokens(ids, is_prompt, row=row)

    def _drop_prompt_tokens(self, ids: list[int], is_prompt: list[bool], *, row: int) -> list[int]:
        assert self.max_length is not None
        excess = len(ids) - self.max_length
        n_prompt = sum(is_prompt)
        if excess > n_prompt:
            raise RewardlabError(
                f"row {row}: the response alone needs {len(ids) - n_prompt} tokens, more than max_length="
                f"{self.max_length}; rewardlab never cuts a response. Raise max_length (the model allows "
                f"{self._default_max_length()}) or shorten the responses"
            )
        logger.warning(
            "row %d has %d tokens > max_length=%d: dropping the first %d prompt tokens (the response is kept whole)",
            row,
            len(ids),
            self.max_length,
            excess,
        )
        drop = set([i for i, p in enumerate(is_prompt) if p][:excess])
        return [t for i, t in enumerate(ids) if i not in drop]

    @staticmethod
    def _real_rows(input_ids: Tensor, attention_mask: Tensor) -> list[list[int]]:
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise RewardlabError(
                f"input_ids and attention_mask must both be (B, T); got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        mask = attention_mask.bool().cpu()
        ids = input_ids.cpu()
        return [ids[i][mask[i]].tolist() for i in range(ids.shape[0])]

    # ------------------------------------------------------------------ inference
    def _score_rows(self, rows: list[list[int]]) -> Tensor:
        """Score token-id lists in length-sorted micro-batches; (B, H) float32 CPU in caller order."""
        empty = [i for i, r in enumerate(rows) if not r]
        if empty:
            raise RewardlabError(f"rows {empty} have no tokens to score; drop empty rows")
        out = torch.empty(len(rows), self.num_heads, dtype=torch.float32)
        # Longest first: an out-of-memory batch shows up at once, not at the end.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                ids, mask = self._pad([rows[i] for i in idx])
                out[idx] = self.forward(ids, mask).float().cpu()
        self._check_finite(out)
        return out

    def _pad(self, rows: list[list[int]], side: str | None = None) -> tuple[Tensor, Tensor]:
        from rewardlab.ops.masked import pad_rows

        ids, mask = pad_rows(rows, self.tokenizer.pad_token_id, side or getattr(self.tokenizer, "padding_side", "right"))
        device = self._device()
        return ids.to(device), mask.to(device)

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Head logits at each row's last real token, for one padded batch (any padding side).

        No truncation, sorting or inference mode here: gradients flow, so the reward-model trainer
        reads the same token as scoring does.

        Shapes: input_ids (B, T), attention_mask (B, T) -> (B, H) in the model's dtype.
        """
        if self._head is not None:
            hidden = self._backbone(input_ids, **_call_kwargs(self._backbone.forward, attention_mask))
            hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
            return pool_last_token(self._head(hidden), attention_mask)  # (B, T, H) -> (B, H)
        return self._forward_whole(input_ids, attention_mask)

    def _forward_whole(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Fallback: call the whole model on right-aligned rows, pooling per-token outputs ourselves."""
        # Right-align every row so a model that pools itself at the last position hits the last
        # real token; embeddings instead of ids stop HF's pad-id search (pad may equal a real token).
        rows = self._real_rows(input_ids, attention_mask)
        input_ids, attention_mask = self._pad(rows, side="left")
        forward = self.model.forward
        kwargs = _call_kwargs(forward, attention_mask)
        embed = getattr(self.model, "get_input_embeddings", None)
        if _accepts(forward, "inputs_embeds") and callable(embed) and embed() is not None:
            output = self.model(inputs_embeds=embed()(input_ids), **kwargs)
        else:
            output = self.model(input_ids=input_ids, **kwargs)
        logits = output.logits if hasattr(output, "logits") else output[0]
        if logits.dim() == 3:
            return pool_last_token(logits, attention_mask)
        if logits.dim() == 2 and logits.shape[0] == input_ids.shape[0]:
            return logits
        raise RewardlabError(
            f"model returned logits of shape {tuple(logits.shape)}; expected per-token (B, T, H) or pooled (B, H)"
        )

    def _check_finite(self, logits: Tensor) -> None:
        finite = torch.isfinite(logits).all(-1)
        self.last_kept_mask = finite
        if bool(finite.all()):
            return
        bad = (~finite).nonzero().flatten().tolist()
        shown = bad[:20] + (["..."] if len(bad) > 20 else [])
        if self.nan_policy == "drop":
            logger.warning(
                "dropping %d of %d rows with non-finite reward logits (rows %s)", len(bad), len(finite), shown
            )
            return
        raise RewardlabError(
            f"the reward model returned NaN/inf logits for {len(bad)} of {len(finite)} rows: {shown}. "
            "Check the weights and dtype (fp16 overflows: try dtype=torch.bfloat16 or float32), or pass "
            "nan_policy='drop' to drop those rows (see RewardModel.last_kept_mask)"
        )

    def __repr__(self) -> str:
        return (
            f"RewardModel({type(self.model).__name__}, heads={self.num_heads}, semantics={self.semantics}, "
            f"max_length={self.max_length}, batch_size={self.batch_size})"
        )
