"""Every bad input, through the real CLI in a subprocess: the exit code, one message naming the
field/file/row and the fix, and no traceback (docs/troubleshooting.md lists the classes).

Most cases stop at ``--dry-run`` or the earliest failing check, so each costs one interpreter
start (~1.5 s). Disk faults that cannot be produced portably (a full disk, a read-only or
forbidden folder: root ignores permissions, and mounting needs privileges) are injected into the
same CLI process: the subprocess patches ``open``/``os.makedirs`` to raise the real ``OSError``,
then calls ``rewardlab.cli.main``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "ppo_tiny.yaml")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("REWARDLAB_DEBUG", None)
    env.update(extra)
    return env


def cli(args: list[str], cwd: str, *, code: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``python -m rewardlab.cli ARGS`` (or ``python -c CODE ARGS``, for injected faults) in ``cwd``."""
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "rewardlab.cli"]
    return subprocess.run(head + args, cwd=cwd, capture_output=True, text=True, env=_env(**env), timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> str:
    """Tiny models, prompts and preference data, plus every broken variant the table uses."""
    from rewardlab.ppo.commands import make_tiny

    root = tmp_path_factory.mktemp("cli_errors")
    r = str(root)
    make_tiny(os.path.join(r, "tiny"), num_prompts=16)
    j = lambda *p: os.path.join(r, *p)  # noqa: E731

    def write(name: str, text: str) -> None:
        os.makedirs(os.path.dirname(j(name)) or r, exist_ok=True)
        with open(j(name), "w", encoding="utf-8") as fh:
            fh.write(text)

    # model folders: truncated weights, pickle only, no config.json, not a model, broken config.json
    shutil.copytree(j("tiny", "policy"), j("trunc"))
    size = os.path.getsize(j("trunc", "model.safetensors"))
    with open(j("trunc", "model.safetensors"), "r+b") as fh:
        fh.truncate(size // 2)
    shutil.copytree(j("tiny", "policy"), j("pickle_only"))
    os.remove(j("pickle_only", "model.safetensors"))
    write("pickle_only/pytorch_model.bin", "not really a pickle")
    shutil.copytree(j("tiny", "reward"), j("no_config"))
    os.remove(j("no_config", "config.json"))
    write("not_model/notes.txt", "hello")
    shutil.copytree(j("tiny", "policy"), j("bad_config"))
    write("bad_config/config.json", '{"model_type": "gpt2",\n "n_embd": 32\n')
    # prompt files
    write("empty.jsonl", "")
    write("null.jsonl", '{"prompt": "t1 t2"}\n{"prompt": null}\n')
    write("int.jsonl", '{"prompt": "t1 t2"}\n{"prompt": "t3"}\n{"prompt": 7}\n')
    write("garbage.jsonl", '{"prompt": "t1 t2"}\nthis is not json\n{"prompt": "t3"}\n')
    write("blank.jsonl", '{"prompt": "t1 t2"}\n{"prompt": "   "}\n')
    write("othercol.jsonl", '{"text": "t1 t2"}\n')
    # preference data for train-rm
    pairs = [{"prompt": f"t{i} ", "chosen": "t1 t1", "rejected": "t2"} for i in range(8)]
    write("prefs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    # config files
    write("ppo_bad.yaml", "models:\n  sft_model_path: tiny/policy\n  reward_model_path: [tiny/reward\nkl_coef: 0.1\n")
    write("ppo_tab.yaml", "kl:\n\tkl_coef: 0.1\n")
    write("trl.yaml", "model_name_or_path: EleutherAI/pythia-1b\nlearning_rate: 3e-6\nkl_coef: 0.05\n")
    write("ppo_quoted.yaml", 'per_device_train_batch_size: "16"\n')
    write("ppo_neg_lr.yaml", "learning_rate: -1e-4\n")
    write("ppo_rule_sig.yaml", "reward_model_path: tiny/reward\nreward_fn: 'os.path:getsize'\n")
    write("ppo_rule_import.yaml", "reward_model_path: tiny/reward\nreward_fn: 'no_such_module_xyz:correct'\n")
    write("ppo_rule_name.yaml", "reward_model_path: tiny/reward\nreward_pipeline: '[rm:mean] + [fn:correct]'\n")
    write("rm_bad.yaml", "model: tiny/policy\ntrain_file: prefs.jsonl\n  output_dir: out\n")
    write("rm_quoted.yaml", f"model: tiny/policy\ntrain_file: prefs.jsonl\noutput_dir: {j('rm_out')}\n"
                            'per_device_train_batch_size: "16"\n')
    write("rm_neg_lr.yaml", f"model: tiny/policy\ntrain_file: prefs.jsonl\noutput_dir: {j('rm_out')}\nlearning_rate: -1e-4\n")
    write("rm_unknown.yaml", "lerning_rate: 1e-4\n")
    write("a_file", "I am a file\n")
    return r


TINY = ["--config", EXAMPLE, "--set", "models.sft_model_path=tiny/policy", "--set",
        "models.reward_model_path=tiny/reward", "--set", "data.dataset_name=tiny/prompts.jsonl"]
RM = ["train-rm", "--model", "tiny/policy", "--train-file", "prefs.jsonl", "--no-progress", "--max-steps", "1"]

# (argv, exit code, words the message must hold); every case is a bad input of one class.
CASES = {
    # ---- config parsing
    "yaml-malformed-ppo": (["ppo", "--dry-run", "--config", "ppo_bad.yaml"], 2, ["ppo_bad.yaml", "line 4", "YAML"]),
    "yaml-tab-ppo": (["ppo", "--dry-run", "--config", "ppo_tab.yaml"], 2, ["ppo_tab.yaml", "line 2", "tab"]),
    "yaml-malformed-rm": (["train-rm", "--config", "rm_bad.yaml"], 2, ["rm_bad.yaml", "line 3", "YAML"]),
    "config-missing": (["ppo", "--dry-run", "--config", "nope.yaml"], 2, ["nope.yaml", "no such file"]),
    "trl-unconverted": (["ppo", "--dry-run", "--config", "trl.yaml"], 2, ["model_name_or_path", "migrate-trl-ppo"]),
    "ppo-quoted-int": (["ppo", "--dry-run", "--config", "ppo_quoted.yaml"], 2,
                       ["optim.per_device_train_batch_size='16'", "without quotes"]),
    "ppo-negative-lr": (["ppo", "--dry-run", "--config", "ppo_neg_lr.yaml"], 2, ["optim.learning_rate=-0.0001", "> 0"]),
    "ppo-flag-out-of-range": (["ppo", "--dry-run", "--adam_beta1", "1.5"], 2, ["optim.adam_beta1=1.5", "[0, 1)"]),
    "ppo-set-out-of-range": (["ppo", "--dry-run", "--set", "data.max_prompt_length=0"], 2,
                             ["data.max_prompt_length=0", "≥ 1"]),
    "ppo-rule-fn-signature": (["ppo", "--dry-run", "--config", "ppo_rule_sig.yaml"], 2,
                              ["rule term fn:os.path:getsize", "cannot be called as fn(prompts, completions"]),
    "ppo-rule-fn-not-importable": (["ppo", "--dry-run", "--config", "ppo_rule_import.yaml"], 2,
                                   ["rule term fn:no_such_module_xyz:correct", "cannot import module"]),
    "ppo-rule-fn-unknown-name": (["ppo", "--dry-run", "--config", "ppo_rule_name.yaml"], 2,
                                 ["rule term fn:correct", "no function named 'correct'", "fn:package.module:function"]),
    "rm-quoted-int": (["train-rm", "--config", "rm_quoted.yaml"], 2, ["per_device_train_batch_size='16'", "quotes"]),
    "rm-negative-lr": (["train-rm", "--config", "rm_neg_lr.yaml"], 2, ["learning_rate=-0.0001", "> 0"]),
    "rm-unknown-key": (["train-rm", "--config", "rm_unknown.yaml"], 2, ["lerning_rate", "did you mean learning_rate"]),
    # ---- Hub names resolve as transformers resolves them; offline, one line says why they cannot
    "ppo-policy-hub-name": (["ppo", "--dry-run", "--set", "sft_model_path=EleutherAI/pythia-14m"], 2,
                            ["models.sft_model_path='EleutherAI/pythia-14m'", "no local folder of that name",
                             "not in the Hugging Face cache", "HF_HUB_OFFLINE=1", "hf download EleutherAI/pythia-14m"]),
    "ppo-policy-hub-revision": (["ppo", "--dry-run", "--set", "sft_model_path=EleutherAI/pythia-14m@v0.9"], 2,
                                ["models.sft_model_path='EleutherAI/pythia-14m' (revision 'v0.9')",
                                 "hf download EleutherAI/pythia-14m --revision v0.9"]),
    "ppo-prompts-hub-name": (["ppo", "--dry-run", "--set", "dataset=trl-lib/tldr"], 2,
                             ["data.dataset_name='trl-lib/tldr'", "not in the Hugging Face cache", "HF_HUB_OFFLINE=1",
                              "hf download trl-lib/tldr --repo-type dataset"]),
    "ppo-prompts-missing-file": (["ppo", "--dry-run", "--set", "dataset=nope/prompts.jsonl"], 2,
                                 ["data.dataset_name='nope/prompts.jsonl'", "no such file or folder"]),
    "rm-model-missing": (RM + ["--output-dir", "rm_x", "--model", "no/such-model"], 2,
                         ["model='no/such-model'", "not in the Hugging Face cache"]),
    "rm-prefs-hub-name": (RM + ["--output-dir", "rm_x", "--train-file", "Anthropic/hh-rlhf"], 2,
                          ["train_file='Anthropic/hh-rlhf'", "not in the Hugging Face cache"]),
    "rm-train-file-and-dataset-name": (RM + ["--output-dir", "rm_x", "--dataset-name", "org/prefs"], 2,
                                       ["train_file='prefs.jsonl' and dataset_name='org/prefs'", "give one"]),
    "hub-opt-in-offline": (["study", "--policy", "hub:org/none", "--reward-model", "tiny/reward", "--prompts",
                            "tiny/prompts.jsonl", "--out", "study_x"], 2,
                           ["Hugging Face cache", "HF_HUB_OFFLINE", "local folder"]),  # hub: alias, offline
    # ---- model folders
    "policy-truncated": (["ppo", "--dry-run", "--set", "sft_model_path=trunc"], 2,
                         ["trunc/model.safetensors", "truncated"]),
    "policy-pickle-only": (["ppo", "--dry-run", "--set", "sft_model_path=pickle_only"], 2,
                           ["pytorch_model.bin", "safetensors", "save_pretrained"]),
    "reward-no-config": (["ppo", "--dry-run", "--set", "reward_model_path=no_config"], 2,
                         ["models.reward_model_path='no_config'", "config.json"]),
    "policy-not-a-model": (["ppo", "--dry-run", "--set", "sft_model_path=not_model"], 2,
                           ["not_model", "config.json", "notes.txt"]),
    "policy-parent-folder": (["ppo", "--dry-run", "--set", "sft_model_path=tiny"], 2, ["config.json", "tiny/policy"]),
    "policy-bad-config-json": (["ppo", "--dry-run", "--set", "sft_model_path=bad_config"], 2,
                               ["bad_config/config.json", "line 3", "JSON"]),
    "rm-model-truncated": (RM + ["--output-dir", "rm_x", "--model", "trunc"], 2, ["trunc/model.safetensors", "truncated"]),
    # ---- data files
    "prompts-empty": (["ppo", "--dry-run", "--set", "dataset=empty.jsonl"], 2, ["empty.jsonl", "empty"]),
    "prompts-null": (["ppo", "--dry-run", "--set", "dataset=null.jsonl"], 2, ["null.jsonl", "row 2", "null"]),
    "prompts-int": (["ppo", "--dry-run", "--set", "dataset=int.jsonl"], 2, ["int.jsonl", "row 3", "int"]),
    "prompts-garbage-line": (["ppo", "--dry-run", "--set", "dataset=garbage.jsonl"], 2,
                             ["garbage.jsonl", "row 2", "not valid JSON"]),
    "prompts-blank": (["ppo", "--dry-run", "--set", "dataset=blank.jsonl"], 2, ["blank.jsonl", "row 2", "empty"]),
    "prompts-column": (["ppo", "--dry-run", "--set", "dataset=othercol.jsonl"], 2,
                       ["data.prompt_column='prompt'", "text"]),
    # ---- output folders (real ones; faults that need privileges are injected below)
    "output-dir-is-file": (["ppo", "--dry-run", "--set", "output_dir=a_file"], 2, ["run.output_dir='a_file'", "file"]),
    "output-dir-under-file": (["ppo", "--dry-run", "--set", "output_dir=a_file/run"], 2,
                              ["run.output_dir='a_file/run'", "a_file is a file"]),
    "rm-output-dir-is-file": (RM + ["--output-dir", "a_file"], 2, ["output_dir='a_file'", "is a file"]),
}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("argv", [
    ["score", "--reward-model", "tiny/reward", "--pipeline", "mean", "--input", "in.jsonl", "--output", "o.jsonl"],
    ["evaluate-rm", "tiny/reward", "--preferences", "prefs.jsonl"],
    ["inspect", "tiny/reward"],
], ids=["score", "evaluate-rm", "inspect"])
def test_a_device_this_machine_lacks_is_refused_before_anything_loads(work, argv):
    out = cli(argv + ["--device", "cuda"], work)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "--device='cuda': no CUDA device is visible here" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_error(work, case):
    argv, code, words = CASES[case]
    out = cli(argv, work)
    assert out.returncode == code, f"{case}: exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for word in words:
        assert word in out.stderr, f"{case}: {word!r} not in\n{out.stderr[-2000:]}"


# ---- disk faults injected into the CLI process (see the module docstring)
_INJECT = textwrap.dedent("""
    import builtins, errno, os, sys
    TARGET, ERR = os.path.abspath(sys.argv[1]), getattr(errno, sys.argv[2])
    real_open, real_makedirs = builtins.open, os.makedirs

    class Full:  # a file on a full disk: opening works, writing fails (as write(2) does)
        def __init__(self, f): self.f = f
        def write(self, data): raise OSError(ERR, os.strerror(ERR))
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def __getattr__(self, name): return getattr(self.f, name)

    def fake_open(file, mode="r", *a, **k):
        under = isinstance(file, (str, os.PathLike)) and os.path.abspath(file).startswith(TARGET)
        if under and any(c in mode for c in "wax") and ERR == errno.ENOSPC:
            return Full(real_open(file, mode, *a, **k))
        return real_open(file, mode, *a, **k)

    def fake_makedirs(name, *a, **k):
        if ERR != errno.ENOSPC and os.path.abspath(name).startswith(TARGET):
            raise OSError(ERR, os.strerror(ERR), name)
        return real_makedirs(name, *a, **k)

    builtins.open, os.makedirs = fake_open, fake_makedirs
    from rewardlab.cli import main
    raise SystemExit(main(sys.argv[3:]))
""")


def test_full_disk_during_ppo(work):
    """The PPO run's first write fails with ENOSPC: exit 1, "no space left on device", the folder."""
    argv = ["ppo"] + TINY + ["--set", "output_dir=full_run", "--set", "total_episodes=8", "--progress_bar", "false"]
    out = cli(["full_run", "ENOSPC"] + argv, work, code=_INJECT)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "no space left on device writing to" in out.stderr and "full_run" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("errname,words", [("EROFS", ["read-only file system", "ro_dir"]),
                                           ("EACCES", ["permission denied", "ro_dir"])])
def test_unwritable_folder(work, errname, words):
    """A command's output in a folder that cannot be created: exit 2, the folder named."""
    with open(os.path.join(work, "trl_ok.yaml"), "w", encoding="utf-8") as fh:
        fh.write("sft_model_path: tiny/policy\nreward_model_path: tiny/reward\nlearning_rate: 3.0e-6\n")
    out = cli(["ro_dir", errname, "migrate-trl-ppo", "trl_ok.yaml", "-o", "ro_dir/ppo.yaml"], work, code=_INJECT)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for word in words:
        assert word in out.stderr, out.stderr[-2000:]


# ---- corrupt checkpoints: the file is named, and the previous checkpoint is the way out
@pytest.fixture(scope="module")
def checkpointed(work) -> str:
    out = cli(["ppo"] + TINY + ["--set", "output_dir=ck", "--set", "total_episodes=64", "--set", "save_steps=1",
                                "--progress_bar", "false"], work)
    assert out.returncode == 0, out.stderr[-3000:]
    return os.path.join(work, "ck")


@pytest.mark.parametrize("name", ["optimizer.pt"])
def test_truncated_checkpoint_file(work, checkpointed, name, tmp_path):
    run = str(tmp_path / "ck")
    shutil.copytree(checkpointed, run)
    newest = sorted(os.listdir(os.path.join(run, "checkpoints")))[-1]
    path = os.path.join(run, "checkpoints", newest, name)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    out = cli(["ppo"] + TINY + ["--set", f"output_dir={run}", "--set", "total_episodes=96", "--set", "save_steps=1",
                                "--progress_bar", "false", "--resume"], work)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert name in out.stderr and "previous" in out.stderr and newest in out.stderr, out.stderr[-2000:]


# ---- --debug shows what the boundary hides
def test_debug_flag_and_env_show_the_traceback(work):
    argv = ["ppo", "--dry-run", "--config", "ppo_bad.yaml"]
    for out in (cli(["--debug"] + argv, work), cli(argv, work, REWARDLAB_DEBUG="1")):
        assert out.returncode == 2 and "Traceback" in out.stderr and "line 4" in out.stderr, out.stderr[-2000:]


# ---- valid input accepted: YAML users' numbers, and the dry run reads back
def _dry(work: str, *args: str) -> dict:
    out = cli(["ppo", "--dry-run", *args], work)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_exponent_floats_accepted_in_yaml_flags_and_set(work):
    with open(os.path.join(work, "lr.yaml"), "w", encoding="utf-8") as fh:
        fh.write("learning_rate: 1e-4\ncliprange: .5\n")
    cfg = _dry(work, "--config", "lr.yaml", "--adam_epsilon", "1e-7", "--set", "kl.kl_coef=5e-2")
    assert (cfg["optim"]["learning_rate"], cfg["ppo"]["cliprange"]) == (1e-4, 0.5)  # YAML
    assert cfg["optim"]["adam_epsilon"] == 1e-7 and cfg["kl"]["kl_coef"] == 0.05  # a flag, --set


def test_dry_run_output_round_trips(work):
    first = cli(["ppo", "--dry-run"] + TINY + ["--learning_rate", "1e-4"], work)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "derived: world_size=1, batch_size=32" in first.stderr  # the sizes a null batch_size hides
    with open(os.path.join(work, "resolved.json"), "w", encoding="utf-8") as fh:
        fh.write(first.stdout)
    second = cli(["ppo", "--dry-run", "--config", "resolved.json"], work)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout) == json.loads(first.stdout)


# ---- the boundary in-process, on real exceptions of the classes that are costly to reach by a run
def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the point is to keep it
        return err
    raise AssertionError("nothing raised")


def test_truncated_checkpoint_json_names_file_and_previous_checkpoint(tmp_path):
    from rewardlab.boundary import explain

    folder = tmp_path / "run" / "checkpoints" / "update-3"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"update": 3, "kl": {"value": 0.')

    def resume() -> None:  # what a loader does: open the file, json.load the handle
        with open(folder / "trainer_state.json", encoding="utf-8") as fh:
            json.load(fh)

    code, message = explain(_raised(resume))
    assert code == 1 and "trainer_state.json" in message and "update-3" in message and "previous" in message


def test_unknown_errors_are_left_alone():
    from rewardlab.boundary import explain

    assert explain(_raised(lambda: [][1])) is None  # a bug keeps its traceback
    assert explain(_raised(lambda: int("x"))) is None
