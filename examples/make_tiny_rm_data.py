"""Write a tiny preference data set and a tiny base model, for `examples/train_rm_tiny.yaml`.

The rule a reward model must learn: the chosen response holds more of the word ``t1`` than
the rejected one (both responses of a pair have the same length); by default 10% of the labels
are flipped, as annotators disagree, so accuracy tops out near 0.9 and the fitted temperature
means something. Nothing is downloaded.

    python examples/make_tiny_rm_data.py runs/tiny-data
    rewardlab train-rm --config examples/train_rm_tiny.yaml
    rewardlab inspect runs/tiny-rm --preferences runs/tiny-data/eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random


def make_pairs(
    n: int, seed: int, vocab: int = 20, length: tuple[int, int] = (6, 10), noise: float = 0.0
) -> list[dict]:
    """n preference rows {prompt, chosen, rejected}: chosen has more 't1' tokens than rejected.

    With `noise` > 0 each pair's label is flipped with that probability (annotator noise), so
    a perfect model reaches accuracy 1 − noise and its fitted temperature is informative.
    """
    rng = random.Random(seed)
    others = [f"t{i}" for i in range(2, vocab)]
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(others) for _ in range(rng.randint(2, 5))) + " "
        size = rng.randint(*length)
        k_rej = rng.randint(0, size - 2)
        k_cho = rng.randint(k_rej + 1, size)

        def response(k: int, size: int = size) -> str:
            words = ["t1"] * k + [rng.choice(others) for _ in range(size - k)]
            rng.shuffle(words)
            return " ".join(words)

        better, worse = response(k_cho), response(k_rej)
        if noise > 0 and rng.random() < noise:
            better, worse = worse, better
        rows.append({"prompt": prompt, "chosen": better, "rejected": worse})
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--train", type=int, default=2000, help="training pairs")
    parser.add_argument("--eval", type=int, default=300, help="held-out pairs")
    parser.add_argument("--noise", type=float, default=0.1, help="probability of a flipped label")
    args = parser.parse_args()

    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "train.jsonl"), make_pairs(args.train, seed=1, noise=args.noise))
    write_jsonl(os.path.join(args.out, "eval.jsonl"), make_pairs(args.eval, seed=2, noise=args.noise))
    tok = build_tokenizer(32)
    base = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=2), seed=0)
    base.save_pretrained(os.path.join(args.out, "base"))
    tok.save_pretrained(os.path.join(args.out, "base"))
    print(f"wrote {args.out}/train.jsonl, eval.jsonl and base/")


if __name__ == "__main__":
    main()
