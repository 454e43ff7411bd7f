"""`rewardlab serve` over real loopback HTTP: the server runs as a subprocess (`rewardlab serve`),
clients are threads with the standard library's http.client. Tiny local models, CPU.

Covers: 64 concurrent clients (every request answered, scores equal to in-process scoring, requests
batched together), clients that disconnect, 1,000 malformed requests among good ones, SIGTERM under
load (in-flight requests answered, exit 0), the API key, OpenRLHF's request as its client sends it,
slime's, the veRL / OpenRLHF / TRL adapters, centring in a server, /metrics, and logs without texts.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [" ".join(f"t{(i * 5 + j) % 28}" for j in range(2 + i % 3)) for i in range(8)]
RULES = '''
import time


def says(prompts, completions, label, **kwargs):
    """1 when the completion holds the label word; None without a label."""
    return [None if a is None else float(a in c.split()) for c, a in zip(completions, label)]


def slow(prompts, completions, **kwargs):
    """A rule that takes 0.25 s a call: requests stay in flight long enough to signal the server."""
    time.sleep(0.25)
    return [0.0] * len(completions)
'''
SECRET = "t29 t28 t27 t26 t25 t24"  # a prompt no log line may hold


def _tiny(folder: Path) -> None:
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(36)
    config = tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=2)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    build_model("sequence_classification", config, seed=5).save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "rm")
    (folder / "rules.py").write_text(RULES)
    refs = [{"prompt": p, "response": f" t{(k * 7 + i) % 28} t{(k + i) % 28}"} for i, p in enumerate(PROMPTS) for k in range(3)]
    (folder / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    (folder / "serve.yaml").write_text(
        "models: {reward_model_path: rm}\n"
        "reward:\n  reward_pipeline: '0.5*[rm:mean|lsc(q=0.5)] + [fn:rules.py:says]'\n"
        "server: {port: 0, references: refs.jsonl, max_samples_per_request: 256, max_body_bytes: 65536,"
        " max_wait_ms: 20, alarm_window: 64}\n")
    (folder / "serve_slow.yaml").write_text(
        "models: {reward_model_path: rm}\nreward: {reward_pipeline: '[rm:mean] + [fn:rules.py:slow]'}\nserver: {port: 0}\n")


class Server:
    """`rewardlab serve` in a subprocess; its address read from its first line."""

    def __init__(self, folder: Path, *extra: str, env: dict | None = None, config: str = "serve.yaml") -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "rewardlab.cli", "serve", "--config", config, *extra],
                                     cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise AssertionError("the server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read()
        conn.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text.decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    _tiny(folder)
    return folder


@pytest.fixture(scope="module")
def server(folder):
    s = Server(folder)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local(folder):
    """The same reward side in this process (loaded from the same config and files) with its references."""
    from rewardlab.serve.commands import build_service
    from rewardlab.serve.config import load_serve_config

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        service = build_service(load_serve_config("serve.yaml"))
    finally:
        os.chdir(cwd)
    return service


def in_process(local, prompts, responses, labels):
    from rewardlab.reward.baselines import prompt_key_of
    from rewardlab.reward.side import Samples

    ref = local.references.gather([prompt_key_of(p) for p in prompts])
    return local.side(Samples(prompts, responses, columns={"label": labels}), ref=ref, update=False)


def sample(rng: random.Random) -> tuple[str, str, str | None]:
    prompt = rng.choice(PROMPTS)
    words = [f"t{rng.randrange(28)}" for _ in range(rng.randint(1, 6))]
    return prompt, " " + " ".join(words), rng.choice([None, words[0], "t27"])


def test_64_concurrent_clients_are_batched_and_score_as_in_process(server, local):
    rng = random.Random(0)
    work = [[sample(rng) for _ in range(6)] for _ in range(64)]

    def client(items):
        out = []
        for prompt, response, label in items:
            out.append(server.request("POST", "/score", {"prompts": [prompt], "responses": [response],
                                                         "columns": {"label": [label]}}))
        return out

    start = time.time()
    with ThreadPoolExecutor(64) as pool:
        answers = [a for chunk in pool.map(client, work) for a in chunk]
    assert time.time() - start < 20
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    flat = [s for items in work for s in items]
    expected = in_process(local, [p for p, _, _ in flat], [r for _, r, _ in flat], [a for _, _, a in flat])
    got = torch.tensor([body["scores"][0] for _, body in answers])
    torch.testing.assert_close(got, expected.scores, atol=1e-5, rtol=1e-5)
    for name in ("rm", "says"):
        want = expected.terms[name].tolist()
        have = [body["terms"][name][0] for _, body in answers]
        assert all((w != w and h is None) or abs(w - h) < 1e-5 for w, h in zip(want, have, strict=True)), name
    metrics = server.request("GET", "/metrics")[1]
    counts = {float(m.group(1)): int(m.group(2)) for m in re.finditer(r'rewardlab_batch_samples_bucket\{le="([\d.]+)"\} (\d+)', metrics)}
    assert counts[1.0] < sum(1 for _ in flat), "no batch held more than one request"  # dynamic batching happened
    assert re.search(r"rewardlab_alarm_windows_total [1-9]", metrics) and "rewardlab_alarm_score" in metrics
    assert re.search(r'rewardlab_requests_total\{endpoint="/score",code="200"\} \d+', metrics)


def test_clients_that_disconnect_mid_request_leave_the_server_serving(server):
    for partial in (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"prompts\": [",
                    b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n"
                    b'{"prompts": ["t1 t2"], "responses": [" t3"], "columns":'):
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(partial)
        sock.close()
    body = json.dumps({"prompts": [PROMPTS[0]] * 64, "responses": [" t3 t4"] * 64,
                       "columns": {"label": [None] * 64}}).encode()
    sock = socket.create_connection((server.host, server.port))  # a whole request, then gone before the answer
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    sock.close()
    status, out = server.request("POST", "/score", {"prompts": [PROMPTS[1]], "responses": [" t5"],
                                                    "columns": {"label": ["t5"]}})
    assert status == 200 and out["terms"]["says"] == [1.0]
    assert server.request("GET", "/health")[1]["status"] == "ok"


MALFORMED = [
    (b"{not json", 400), (b"", 400), (b"[1, 2]", 422), (b'{"prompts": "t1", "responses": ["x"]}', 422),
    (b'{"prompts": [], "responses": []}', 422), (b'{"prompts": ["t1"], "responses": ["a", "b"]}', 422),
    (b'{"prompts": ["t1"], "responses": [3]}', 422), (b'{"prompts": ["t1"]}', 422),
    (b'{"prompts": ["t1"], "responses": ["x"], "surprise": 1}', 422),
    (b'{"prompts": ["t1"], "responses": ["x"], "columns": {"label": [1, 2]}}', 422),
    (b'{"prompts": ["t1"], "responses": ["x"], "columns": {"label": ["a"]}, "group_ids": [1]}', 422),
    (b'{"prompts": ["t1 t2 t3 never seen"], "responses": ["x"], "columns": {"label": ["a"]}}', 422),  # no references
    (b'{"prompts": ["t1"], "responses": ["x"], "columns": {}}', 422),  # the rule needs `label`
    (json.dumps({"prompts": ["t1"] * 300, "responses": ["x"] * 300}).encode(), 413),
    (b'{"prompts": ["' + b"t1 " * 30000 + b'"], "responses": ["x"]}', 413),
]


def test_a_thousand_malformed_requests_among_good_ones(server, local):
    rng = random.Random(1)
    plan = []
    for i in range(1100):
        if i % 11 == 0:
            plan.append(("good", sample(rng)))
        else:
            plan.append(("bad", MALFORMED[i % len(MALFORMED)]))

    def send(item):
        kind, what = item
        if kind == "good":
            prompt, response, label = what
            return kind, what, server.request("POST", "/score", {"prompts": [prompt], "responses": [response],
                                                                 "columns": {"label": [label]}})
        return kind, what, server.request("POST", "/score", raw=what[0])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, plan))
    bad = [(what[1], status, out) for kind, what, (status, out) in results if kind == "bad"]
    assert len(bad) == 1000
    for want, status, out in bad:
        assert status == want, (want, status, out)
        assert isinstance(out, dict) and out["error"], out  # one message, naming the problem
    good = [(what, out) for kind, what, (status, out) in results if kind == "good" and status == 200]
    assert len(good) == 100
    expected = in_process(local, *map(list, zip(*[w for w, _ in good], strict=True)))
    torch.testing.assert_close(torch.tensor([o["scores"][0] for _, o in good]), expected.scores, atol=1e-5, rtol=1e-5)
    assert server.request("GET", "/health")[0] == 200


def test_error_messages_name_the_field(server):
    status, out = server.request("POST", "/score", {"prompts": ["t1"], "responses": [3]})
    assert status == 422 and out["error"].startswith("field 'responses.0':")
    status, out = server.request("POST", "/score", {"prompts": ["t1"], "responses": ["x"], "columns": {"label": [1, 2]}})
    assert out["error"] == "field 'columns.label' has 2 values for 1 samples; give one per sample"
    status, out = server.request("POST", "/score", {"prompts": ["t1 t2 t3 never seen"], "responses": ["x"],
                                                    "columns": {"label": ["a"]}})
    assert status == 422 and "has no group_ids" in out["error"] and "have no reference samples" in out["error"]
    status, out = server.request("POST", "/score", {"prompts": ["t1"], "responses": ["x"]})
    assert status == 422 and "rule term fn:rules.py:says needs the dataset column(s) ['label']" in out["error"]


def test_openrlhf_request_as_its_client_sends_it_scores_as_the_native_endpoint(server, folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "rm")
    prompt_ids = tok(PROMPTS[2])["input_ids"]
    response_ids = tok("t5 t6 t7")["input_ids"] + [tok.eos_token_id]
    # OpenRLHF: the sequence decoded with its special tokens (older versions kept the left padding too)
    query = tok.decode([tok.pad_token_id] * 3 + prompt_ids + response_ids + [tok.pad_token_id], skip_special_tokens=False)
    prompt = tok.decode(prompt_ids, skip_special_tokens=False)
    status, out = server.request("POST", "/get_reward", {"query": [query], "prompts": [prompt], "labels": ["t6"]})
    assert status == 200 and set(out) == {"rewards", "scores", "extra_logs"}
    response = query[len("[PAD] [PAD] [PAD] ") + len(prompt):].replace(" [EOS] [PAD]", "")
    assert response == " t5 t6 t7"
    _, native = server.request("POST", "/score", {"prompts": [prompt], "responses": [response], "columns": {"label": ["t6"]}})
    assert out["rewards"] == out["scores"] == native["scores"]
    assert out["extra_logs"]["reward/term/says"] == [1.0]
    # OpenRLHF sends empty lists to all but one of several servers
    assert server.request("POST", "/get_reward", {"query": [], "prompts": [], "labels": []}) == \
        (200, {"rewards": [], "scores": [], "extra_logs": {}})
    status, out = server.request("POST", "/get_reward", {"query": ["t1 t2 t3"], "prompts": ["t9"], "labels": [None]})
    assert status == 422 and "query[0] does not start with prompts[0]" in out["error"]


def test_slime_request(server):
    status, out = server.request("POST", "/slime", {"prompt": PROMPTS[3], "response": " t5 t6 [EOS]", "label": "t6"})
    _, native = server.request("POST", "/score", {"prompts": [PROMPTS[3]], "responses": [" t5 t6"],
                                                  "columns": {"label": ["t6"]}})
    assert status == 200 and out == native["scores"][0]


def test_adapters_against_the_server(server, monkeypatch):
    """veRL's compute_score (and its batch form), OpenRLHF's .py reward_func and TRL's remote function."""
    url = f"http://{server.host}:{server.port}"
    monkeypatch.setenv("REWARDLAB_URL", url)
    from rewardlab.integrations import openrlhf, verl
    from rewardlab.integrations.trl import remote_reward_function

    _, native = server.request("POST", "/score", {"prompts": [PROMPTS[4]] * 2, "responses": [" t1 t2", " t3"],
                                                  "columns": {"label": ["t2", "t9"]}})
    one = verl.compute_score("gsm8k", " t1 t2", "t2", {"prompt": PROMPTS[4], "index": 3}, url=url)
    assert one["score"] == pytest.approx(native["scores"][0], abs=1e-6)
    assert one["rewardlab/says"] == 1.0 and set(one) == {"score", "rewardlab/rm", "rewardlab/says"}
    batch = verl.compute_score_batch(["gsm8k"] * 2, [" t1 t2", " t3"], ["t2", "t9"],
                                     [{"question": PROMPTS[4]}, {"question": PROMPTS[4]}])
    # the two responses of one prompt form a group: the reward model's term is centred on each other
    _, grouped = server.request("POST", "/score", {"prompts": [PROMPTS[4]] * 2, "responses": [" t1 t2", " t3"],
                                                   "columns": {"label": ["t2", "t9"]}, "group_ids": [0, 0]})
    assert [b["score"] for b in batch] == pytest.approx(grouped["scores"], abs=1e-6)
    assert grouped["scores"] != pytest.approx(native["scores"], abs=1e-6)
    with pytest.raises(Exception, match="extra_info has no prompt"):
        verl.compute_score("gsm8k", " t1", "t1", {"index": 1})

    out = openrlhf.reward_func([PROMPTS[4] + " t1 t2 [EOS]"], [PROMPTS[4]], ["t2"])
    assert out["rewards"].tolist() == pytest.approx([native["scores"][0]], abs=1e-6)
    assert set(out["extra_logs"]) >= {"reward/term/rm", "reward/term/says"}

    fn = remote_reward_function(url, separator="")
    scores = fn([PROMPTS[4]] * 2, [" t1 t2", " t3"], label=["t2", "t9"], trainer_state=object(),
                log_metric=lambda k, v: None)
    assert scores == pytest.approx(grouped["scores"], abs=1e-6)  # identical prompts: one group


def test_logs_hold_no_texts(server):
    server.request("POST", "/score", {"prompts": [PROMPTS[0]], "responses": [" " + SECRET], "columns": {"label": [None]}})
    server.request("POST", "/score", {"prompts": [SECRET], "responses": ["x"], "columns": {"label": [None]}})
    time.sleep(0.2)
    log = "".join(server.lines)
    assert "listening on" in log and SECRET not in log


def _cli_in(folder: Path, *argv: str) -> int:
    """`rewardlab …` in this process, run from ``folder``."""
    from rewardlab.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(list(argv))
    finally:
        os.chdir(cwd)


def test_off_loopback_needs_a_key(folder, capsys):
    code = _cli_in(folder, "serve", "--config", "serve.yaml", "--set", "server.host=0.0.0.0", "--dry-run")
    assert code == 2
    assert "binds beyond loopback, and no API key is set" in capsys.readouterr().err


def test_a_key_protected_server_and_sigterm_under_load(folder):
    server = Server(folder, "--set", "server.api_key_env=TEST_RL_KEY", env={"TEST_RL_KEY": "k3y"}, config="serve_slow.yaml")
    try:
        status, out = server.request("POST", "/score", {"prompts": [PROMPTS[0]], "responses": [" t1"]})
        assert status == 401 and "API key" in out["error"]
        assert server.request("GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert server.request("GET", "/health")[0] == 200
        auth = {"Authorization": "Bearer k3y"}
        body = {"prompts": [PROMPTS[i % 8] for i in range(200)],
                "responses": [" " + " ".join(f"t{(i + j) % 28}" for j in range(40)) for i in range(200)]}
        def timed():
            answer = server.request("POST", "/score", body, auth)
            return answer, time.time()

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(timed) for _ in range(12)]
            time.sleep(0.5)  # every request is in flight: each takes ≥ 0.25 s in the one scoring thread
            assert server.proc.poll() is None
            sent = time.time()
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=120) for f in futures]
        assert all(status == 200 and len(out["scores"]) == 200 for (status, out), _ in answers)
        assert sum(done > sent for _, done in answers) >= 6, "the signal came after most answers: nothing was in flight"
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.stop()


def test_ctrl_c_exits_130_and_stateful_transforms_are_refused(folder, capsys):
    server = Server(folder)
    assert server.request("GET", "/health")[0] == 200
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=60) == 130
    code = _cli_in(folder, "serve", "--config", "serve.yaml", "--set", "reward.reward_pipeline=mean|running_norm",
                   "--dry-run")
    assert code == 2 and "running_norm keeps statistics of the data it has seen" in capsys.readouterr().err
