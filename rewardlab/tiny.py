"""Tiny, fully local models and tokenizers — for tests, examples, benchmarks and the study.

Nothing here touches a model hub: the tokenizer is a `tokenizers` WordLevel model wrapped in a
`PreTrainedTokenizerFast`, and models are built from GPT-2, Llama, Qwen2 or Mistral configs under a seed.

Example::

    from rewardlab.tiny import build_tokenizer, tiny_config, build_model
    tok = build_tokenizer(64)
    rm = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

Arch = Literal["gpt2", "llama", "qwen2", "mistral"]
ARCHS: tuple[str, ...] = ("gpt2", "llama", "qwen2", "mistral")

# A deliberately simple chat template: role markers are plain words of the vocabulary.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_tokenizer(
    vocab_size: int = 64,
    *,
    words: list[str] | None = None,
    padding_side: Literal["left", "right"] = "right",
    chat_template: bool = True,
    model_max_length: int = 4096,
    pad_is_eos: bool = False,
):
    """A whitespace WordLevel tokenizer: specials, then `words` (default ``t0 t1 …``), then role words.

    Text ↔ ids round-trips exactly (no post-processor adds BOS/EOS). ``pad_is_eos`` makes the pad
    token the EOS token, as Llama/Qwen/Mistral users often set ``tokenizer.pad_token = tokenizer.eos_token``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    extra = ["system", "user", "assistant", ":"] if chat_template else []
    if words is None:
        n_words = vocab_size - len(SPECIAL_TOKENS) - len(extra)
        if n_words < 4:
            raise ValueError(f"vocab_size={vocab_size} is too small; use at least {len(SPECIAL_TOKENS) + len(extra) + 4}")
        words = [f"t{i}" for i in range(n_words)]
    for w in list(words) + extra:
        if w not in vocab:
            vocab[w] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[EOS]" if pad_is_eos else "[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        padding_side=padding_side,
        model_max_length=model_max_length,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(
    arch: Arch,
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 512,
    num_labels: int | None = None,
    tie_word_embeddings: bool = True,
):
    """A GPT-2, Llama, Qwen2 or Mistral config sized for CPU tests, with dropout off and pad/eos ids set.

    Llama, Qwen2 and Mistral use rotary positions; Qwen2 adds biases to q/k/v and Mistral its
    sliding-window attention (window = ``max_positions``), so the three exercise different code.
    """
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if num_labels is not None:
        common["num_labels"] = num_labels
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, n_inner=4 * hidden,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
            tie_word_embeddings=tie_word_embeddings, **common,
        )
    rotary = dict(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=max_positions, tie_word_embeddings=tie_word_embeddings,
        **common,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**rotary)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**rotary)
    if arch == "mistral":
        from transformers import MistralConfig

        return MistralConfig(sliding_window=max_positions, **rotary)
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def build_model(kind: Literal["causal_lm", "sequence_classification"], config, *, seed: int = 0) -> torch.nn.Module:
    """Instantiate a model from `config` under `seed`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config)
    if kind == "causal_lm":
        model.generation_config.pad_token_id = config.pad_token_id
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.bos_token_id = config.bos_token_id
    return model.eval()


def hub_cache(cache_dir: str | os.PathLike[str], repo_id: str, folder: str | os.PathLike[str], *,
              commit: str | None = None, refs: tuple[str, ...] = ("main",),
              repo_type: Literal["model", "dataset"] = "model") -> str:
    """Put a saved model folder into a Hugging Face cache as a Hub download would: huggingface_hub's own layout.

    ``<cache_dir>/models--ORG--NAME/blobs/<sha256>`` holds each file once, ``snapshots/<commit>/<file>``
    links to it, and ``refs/<ref>`` names the commit (``main``, a tag, a branch). With
    ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, transformers, huggingface_hub and rewardlab resolve
    ``repo_id`` (``@ref`` or ``@commit``) from it without any network: how tests use Hub names.
    ``repo_type="dataset"`` files a dataset repository (a folder of data files and its README.md) under
    ``datasets--ORG--NAME`` instead.

    Returns the snapshot folder. ``commit``: 40 hex digits (default: a hash of the files).
    """
    import hashlib

    folder, root = Path(folder), Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if commit is None:
        digest = hashlib.sha1()
        for p in files:
            digest.update(str(p.relative_to(folder)).encode() + p.read_bytes())
        commit = digest.hexdigest()
    snapshot = root / "snapshots" / commit
    for p in files:
        data = p.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return str(snapshot)
