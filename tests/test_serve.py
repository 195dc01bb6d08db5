"""Many runs over one frozen backbone (ptune/pool.py): a mixed-task batch gives every row what its own run gives
alone; ``ptune predict run=[...]``, ``ptune.load_many``; which runs may share a backbone; then the HTTP server (ptune/serve.py) on a free port, talked
to with a real HTTP client."""

from __future__ import annotations

import json
import shutil

import pytest

import ptune
from ptune import predict, run_folder, tasks
from ptune.cli import main
from ptune.errors import PtuneError
from ptune.pool import Pool
from tests.tasks.conftest import root_for
from tests.test_predict import read_jsonl, train, write_jsonl

SENTENCES = ["a charming and often affecting journey", "boring", "the acting is superb and the story moving , " * 4,
             "a dull , lifeless mess", "ok"]
PAIRS = [("it rains", "it pours"), ("a man plays a guitar", "a man plays music on a guitar loudly"),
         ("the cat sat", "no")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: on BERT two sst2 runs (prompt tuning, P-Tuning: one prompt shape), a two-task prefix-tuning run
    (deep prompts: another shape; a regression and a pair task), COPA (multiple choice: an encoder row per
    choice); on T5 an sst2 run and a two-task run (2 against 26 candidates); a model-tuning run."""
    base = tmp_path_factory.mktemp("serve")
    return {
        "pt": train(base / "pt-sst2", "tiny-bert", "sst2"),
        "ptun": train(base / "ptun-sst2", "tiny-bert", "sst2", method="p_tuning"),
        "prefix": train(base / "prefix-mix", "tiny-bert", "mrpc,stsb", method="prefix_tuning"),
        "copa": train(base / "pt-copa", "tiny-bert", "copa"),
        "t5": train(base / "t5-sst2", "tiny-t5", "sst2"),
        "t5mix": train(base / "t5-mix", "tiny-t5", "mrpc,stsb"),
        "body": train(base / "mt-sst2", "tiny-bert", "sst2", method="model_tuning"),
    }


def copa_rows(n: int = 3) -> list[dict]:
    task = tasks.get("copa")
    rows = tasks.load_rows(task.hub_id, task.hub_config, task.splits["validation"], root=root_for(task), limit=n)
    return [{c: r[c] for c in task.input_columns} for r in rows]


def mixed_rows(family: str) -> list[dict]:
    """Rows of every entry of the family's pool, interleaved."""
    pairs = [{"sentence1": a, "sentence2": b} for a, b in PAIRS]
    if family == "t5":
        groups = [[{"task": "sst2", "sentence": s} for s in SENTENCES],
                  [{"task": "mrpc", **p} for p in pairs], [{"task": "stsb", **p} for p in pairs]]
    else:
        groups = [[{"task": "pt-sst2:sst2", "sentence": s} for s in SENTENCES],
                  [{"task": "ptun-sst2:sst2", "sentence": s} for s in reversed(SENTENCES)],
                  [{"task": "mrpc", **p} for p in pairs], [{"task": "stsb", **p} for p in pairs],
                  [{"task": "copa", **r} for r in copa_rows()]]
    width = max(len(g) for g in groups)
    return [g[i] for i in range(width) for g in groups if i < len(g)]


def pool_dirs(runs, family: str) -> list:
    return [runs["t5"], runs["t5mix"]] if family == "t5" else [runs["pt"], runs["ptun"], runs["prefix"], runs["copa"]]


def alone(runs, family: str, row: dict) -> dict:
    """The row through its own run, as ``ptune predict`` predicts it."""
    name = row["task"].split(":")[-1]
    run_dir = next(d for d in pool_dirs(runs, family) if name in predict.run_config(d).task_names
                   and (":" not in row["task"] or d.name == row["task"].split(":")[0]))
    if run_dir not in LOADED:
        LOADED[run_dir] = predict.load(run_dir, predict.run_config(run_dir))
    loaded = LOADED[run_dir]
    tid = loaded.parts.cfg.task_names.index(name)
    return loaded.predict(tid, [{k: v for k, v in row.items() if k != "task"}], "one row")[0]


LOADED: dict = {}  # run folder -> its run loaded alone, as ptune predict loads it


def outputs(row: dict) -> dict:
    return {k: v for k, v in row.items() if k == "prediction" or k.startswith("score")}


def assert_same(got: dict, want: dict) -> None:
    got, want = outputs(got), outputs(want)
    assert set(got) == set(want) and len(want) >= 2 or isinstance(want["prediction"], float)
    assert got["prediction"] == pytest.approx(want["prediction"], abs=1e-5)
    for k, v in want.items():
        if k != "prediction":
            assert got[k] == pytest.approx(v, abs=1e-5), k


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("batch_size", [64, 3])
def test_a_mixed_batch_gives_each_row_what_its_own_run_gives_alone(runs, family, batch_size, monkeypatch):
    """Rows of every loaded (run, task), interleaved, in one call: each row's prediction and probabilities equal
    (within 1e-5) those of its own run predicting it alone. With batches larger than the rows, each prompt group is
    one forward pass (BERT: two groups, soft tokens and deep prompts; T5: one); with 3, batches mix entries too."""
    pool = Pool.open(pool_dirs(runs, family), batch_size=batch_size).load()
    rows = mixed_rows(family)
    passes = []
    forward_many = type(pool.backbone).forward_many
    monkeypatch.setattr(type(pool.backbone), "forward_many",
                        lambda self, batches, prompt: passes.append(len(batches)) or forward_many(self, batches, prompt))
    got = pool.predict(rows)
    groups = 2 if family == "bert" else 1
    if batch_size >= len(rows):
        assert len(passes) == groups and sum(passes) >= len({r["task"] for r in rows})
    assert max(passes) > 1  # a pass held batches of several entries
    for row, (entry, out, _) in zip(rows, got, strict=True):
        assert entry.name == row["task"]
        assert_same(out, alone(runs, family, row))


def test_a_run_without_its_folded_prompt_is_folded_from_its_checkpoint(runs, tmp_path):
    """A run folder whose folded.safetensors is gone (an older run, a copy) is rebuilt from prompt.safetensors and
    folded: the pool gives what the run gives alone."""
    copy = tmp_path / "prefix-mix"
    shutil.copytree(runs["prefix"], copy)
    run_folder.open(copy).folded.unlink()
    pool = Pool.open([copy]).load()
    rows = [{"task": "mrpc", "sentence1": a, "sentence2": b} for a, b in PAIRS]
    for row, (_, out, _) in zip(rows, pool.predict(rows), strict=True):
        assert_same(out, alone(runs, "bert", row))


def test_entries_are_named_by_task_or_run_and_task(runs):
    pool = Pool.open([runs["pt"], runs["ptun"], runs["prefix"]])
    assert pool.names == ["pt-sst2:sst2", "ptun-sst2:sst2", "mrpc", "stsb"]
    assert pool.by_name["prefix-mix:stsb"] is pool.by_name["stsb"]  # RUN:TASK always works
    one = Pool.open([runs["pt"], runs["prefix"]])
    assert one.names == ["sst2", "mrpc", "stsb"]
    assert [e.describe()["metrics"] != {} for e in one.entries] == [True, True, True]
    assert one.entries[1].describe()["labels"] == ["not_equivalent", "equivalent"]


@pytest.mark.parametrize("case, words", [
    ("model_tuning", ["trains the model's body (method=model_tuning", "predict it alone"]),
    ("other_body", ["t5-sst2 has model.hf_id='google-t5/t5-small', but", "share one frozen backbone"]),
    ("twice", ["is given twice"]),
    ("nothing", ["neither a run folder nor a folder holding runs"]),
])
def test_runs_that_cannot_share_the_backbone_are_refused_naming_the_odd_one(runs, tmp_path, case, words):
    paths = {"model_tuning": [runs["pt"], runs["body"]], "other_body": [runs["pt"], runs["t5"]],
             "twice": [runs["pt"], runs["pt"]], "nothing": [runs["pt"], tmp_path]}[case]
    with pytest.raises(PtuneError) as err:
        Pool.open(paths)
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)


@pytest.mark.parametrize("row, words", [
    ({"task": "rte", "sentence1": "a", "sentence2": "b"}, ["row 2 names task 'rte', which is not loaded",
                                                            "choose one of: pt-sst2:sst2, ptun-sst2:sst2"]),
    ({"sentence": "no task"}, ["row 2 names no task (a 'task' column)"]),
    ({"task": "pt-sst2:sst2", "text": "x"}, ["row 2: column 'sentence' is empty (null or missing)"]),
    ({"task": "pt-sst2:sst2", "sentence": 3}, ["row 2: column 'sentence' holds 3, not text"]),
])
def test_a_bad_row_is_one_line_naming_it(runs, row, words):
    pool = Pool.open([runs["pt"], runs["ptun"]])
    with pytest.raises(PtuneError) as err:
        pool.check([{"task": "pt-sst2:sst2", "sentence": "fine"}, row], "rows")
    assert pool.backbone is None and "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_extra_columns_are_refused_when_asked(runs):
    pool = Pool.open([runs["pt"]])
    rows = [{"task": "sst2", "sentence": "fine", "id": 3}]
    assert len(pool.check(rows, "rows")) == 1  # files may carry ids along
    with pytest.raises(PtuneError, match="row 1: task 'sst2' reads no column 'id'; its columns: task, sentence"):
        pool.check(rows, "rows", extra=False)


def test_predict_takes_several_runs_and_rows_that_name_their_task(runs, tmp_path, capsys):
    rows = [{"id": i, **r} for i, r in enumerate(mixed_rows("bert"))]
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    run_list = ",".join(str(d) for d in pool_dirs(runs, "bert"))
    assert main(["predict", f"run=[{run_list}]", f"input={source}"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "mixed-predictions.jsonl"
    assert done["out"] == str(out) and done["rows"] == len(rows) and "copa" in done["tasks"]
    written = read_jsonl(out)
    assert [(r["id"], r["task"]) for r in written] == [(r["id"], r["task"]) for r in rows]
    for row in written[:6]:
        assert_same(row, alone(runs, "bert", {k: v for k, v in row.items() if k != "id" and k not in outputs(row)}))


def test_predict_reads_a_sweep_folder_as_its_runs(runs, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for key in ("pt", "prefix"):
        shutil.copytree(runs[key], sweep / runs[key].name)
    source = write_jsonl(tmp_path / "in.jsonl", [{"task": "stsb", "sentence1": "a", "sentence2": "b"},
                                                 {"task": "sst2", "sentence": "fine"}])
    assert main(["predict", f"run={sweep}", f"input={source}", f"out={tmp_path / 'o.csv'}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == ["mrpc", "stsb", "sst2"]  # path order


@pytest.mark.parametrize("extra, words", [
    (["task=sst2"], ["task= picks a task of one run"]),
    ([], ["in.jsonl, line 2 names task 'cola', which is not loaded; choose one of: sst2, mrpc, stsb"]),
])
def test_predict_with_several_runs_fails_in_one_line_before_the_model_loads(runs, tmp_path, capsys, monkeypatch,
                                                                            extra, words):
    monkeypatch.setattr(Pool, "load", lambda self: pytest.fail("the model was loaded"))
    source = write_jsonl(tmp_path / "in.jsonl", [{"task": "sst2", "sentence": "fine"},
                                                 {"task": "cola", "sentence": "fine"}])
    assert main(["predict", f"run=[{runs['pt']},{runs['prefix']}]", f"input={source}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error: ") and "\n" not in err
    for w in words:
        assert w in err, err


def test_load_many_predicts_a_mixed_dataframe(runs):
    import pandas as pd

    many = ptune.load_many([runs["pt"], runs["prefix"]])
    assert many.tasks == ["sst2", "mrpc", "stsb"] and "2 runs" in repr(many)
    frame = pd.DataFrame([{"task": "mrpc", "sentence1": "a", "sentence2": "b", "sentence": None},
                          {"task": "sst2", "sentence": "a charming film", "sentence1": None, "sentence2": None}])
    out = many.predict(frame)
    assert list(out["task"]) == ["mrpc", "sst2"]
    assert out.loc[0, "prediction"] in ("not_equivalent", "equivalent")
    assert out.loc[1, "score_negative"] + out.loc[1, "score_positive"] == pytest.approx(1.0)
    one = ptune.load(runs["pt"]).predict(["a charming film"])
    assert out.loc[1, "score_positive"] == pytest.approx(one.loc[0, "score_positive"], abs=1e-5)
    with pytest.raises(PtuneError, match="takes a dict, a list of dicts or a pandas DataFrame"):
        many.predict("a charming film")


# --- the HTTP server (ptune serve) -------------------------------------------------------------------
def test_serve_without_the_extra_is_one_line(runs, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it raises ImportError
    assert main(["serve", str(runs["pt"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ptune: error: ptune serve needs the serve extra (uvicorn is not installed): pip install -e '.[serve]'"


@pytest.mark.parametrize("args, words", [
    (["port=eighty"], ["port='eighty' is not a number"]),
    (["max_batch=0"], ["max_batch=0 must be >= 1"]),
    (["workers=2"], ["ptune serve takes host=, port=, max_batch=", "'workers' is not one of them"]),
    (["port=1", "port=2"], ["port"]),
])
def test_serve_settings_are_checked_in_one_line(runs, capsys, args, words):
    pytest.importorskip("uvicorn")
    assert main(["serve", str(runs["pt"]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    for w in words:
        assert w in err, err


def test_the_batcher_gathers_waiting_requests_into_one_batch():
    """Requests queued together run as one batch of their rows (up to max_batch), each answered with its own."""
    import asyncio

    from ptune.serve import Batcher, Settings

    class Recorder:
        def __init__(self):
            self.calls = []

        def run(self, checked, n):
            self.calls.append(n)
            return [(None, {"row": i}, None) for i in range(n)]

    async def go():
        pool = Recorder()
        batcher = Batcher(pool, Settings(max_batch=5, max_wait_ms=50))
        sizes = [2, 2, 1, 3]
        jobs = [asyncio.ensure_future(batcher.submit([(None, list(range(n)), [])], n)) for n in sizes]
        await asyncio.sleep(0)  # all four are queued before the batcher starts
        task = asyncio.create_task(batcher.serve())
        answers = await asyncio.gather(*jobs)
        task.cancel()
        return pool.calls, answers

    calls, answers = asyncio.run(go())
    assert calls == [5, 3]  # 2 + 2 + 1 rows fill max_batch=5; the 3-row request runs next
    assert [[o["row"] for _, o, _ in a] for a in answers] == [[0, 1], [2, 3], [4], [0, 1, 2]]


@pytest.fixture(scope="module")
def server(runs):
    """``ptune serve`` on the four BERT runs, on a free port, as a subprocess; its URL from its ready line."""
    import os
    import subprocess
    import sys
    import time

    for name in ("fastapi", "uvicorn", "httpx"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install -e '.[serve]')")
    log = open(runs["pt"].parent / "serve.log", "w+")  # noqa: SIM115  (read at the end)
    proc = subprocess.Popen([sys.executable, "-m", "ptune", "serve", *map(str, pool_dirs(runs, "bert")), "port=0",
                             "max_batch=16", "max_wait_ms=100", "max_rows=50", "max_bytes=20000", "max_chars=500"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=dict(os.environ))
    start = time.monotonic()
    line = proc.stdout.readline()
    assert " at http://127.0.0.1:" in line, f"no ready line after {time.monotonic() - start:.0f}s: {line!r}"
    url = line.split(" at ")[1].split()[0]
    yield {"url": url, "proc": proc, "log": log}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def post(server, body, **kw):
    import httpx

    if isinstance(body, (bytes, str)) or hasattr(body, "__iter__") and not isinstance(body, (dict, list)):
        return httpx.post(server["url"] + "/predict", content=body, timeout=120, **kw)
    return httpx.post(server["url"] + "/predict", json=body, timeout=120, **kw)


def test_health_runs_and_docs(server):
    import httpx

    health = httpx.get(server["url"] + "/health").json()
    assert health["status"] == "ok" and health["runs"] == 4 and health["tasks"] == 5
    entries = {e["name"]: e for e in httpx.get(server["url"] + "/runs").json()["entries"]}
    assert list(entries) == ["pt-sst2:sst2", "ptun-sst2:sst2", "mrpc", "stsb", "copa"]
    assert entries["ptun-sst2:sst2"]["method"] == "p_tuning" and entries["copa"]["labels"] == ["choice1", "choice2"]
    assert "pearson" in entries["stsb"]["metrics"] and entries["mrpc"]["run"] == "prefix-mix"
    assert httpx.get(server["url"] + "/docs").status_code == 200
    spec = httpx.get(server["url"] + "/openapi.json").json()
    assert "rows" in json.dumps(spec["paths"]["/predict"]["post"]["requestBody"])


def test_concurrent_mixed_requests_get_what_each_run_gives_alone(runs, server):
    """Six requests at once, each mixing tasks; every row's prediction and probabilities are its own run's."""
    import asyncio

    import httpx

    rows = mixed_rows("bert")
    requests = [rows[i::6] for i in range(6)]

    async def send():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(server["url"] + "/predict", json={"rows": r})
                                          for r in requests))

    for sent, reply in zip(requests, asyncio.run(send()), strict=True):
        assert reply.status_code == 200, reply.text
        got = reply.json()["predictions"]
        assert [p["task"] for p in got] == [r["task"] for r in sent]
        for row, p in zip(sent, got, strict=True):
            want = alone(runs, "bert", row)
            assert p["prediction"] == pytest.approx(want["prediction"], abs=1e-5)
            if p["scores"] is None:
                assert isinstance(want["prediction"], float)
            else:
                assert p["scores"] == pytest.approx({k[6:]: v for k, v in want.items() if k.startswith("score_")},
                                                    abs=1e-5)


def good(server) -> None:
    reply = post(server, {"rows": [{"task": "copa", **copa_rows(1)[0]}, {"task": "mrpc", "sentence1": "a",
                                                                           "sentence2": "b"}]})
    assert reply.status_code == 200 and [p["task"] for p in reply.json()["predictions"]] == ["copa", "mrpc"]


def chunks():
    yield b'{"rows": ['
    for _ in range(400):
        yield b'{"task": "mrpc", "sentence1": "a", "sentence2": "b"}, '
    yield b"]}"


@pytest.mark.parametrize("body, status, words", [
    (b'{"rows": [{"task": "mrpc"', 400, ["the body is not valid JSON"]),
    ([1, 2], 422, ['the body must be a JSON object {"rows"']),
    ({"rows": [], "x": 1}, 422, ["the body holds 'x'; it takes only \"rows\""]),
    ({"rows": []}, 422, ['"rows" must be a non-empty list']),
    ({"rows": [{"task": "cola", "sentence": "x"}]}, 422,
     ["rows[0] names task 'cola', which is not loaded; choose one of: pt-sst2:sst2, ptun-sst2:sst2, mrpc"]),
    ({"rows": [{"task": "sst2", "sentence": "x"}]}, 422,
     ["names task 'sst2', which several loaded runs have; choose one of: pt-sst2:sst2, ptun-sst2:sst2"]),
    ({"rows": [{"task": "copa", "premise": "x"}]}, 422, ["lacks column(s) choice1, choice2, question"]),
    ({"rows": [{"task": "mrpc", "sentence1": "a", "sentence2": "b", "label": 1}]}, 422,
     ["rows[0]: task 'mrpc' reads no column 'label'; its columns: task, sentence1, sentence2"]),
    ({"rows": [{"task": "mrpc", "sentence1": "a", "sentence2": 7}]}, 422, ["column 'sentence2' holds 7, not text"]),
    ({"rows": [{"task": "stsb", "sentence1": "a", "sentence2": "b " * 300}]}, 413,
     ["rows[0]: column 'sentence2' holds 600 characters; at most 500 (max_chars=)"]),
    ({"rows": [{"task": "stsb", "sentence1": "a", "sentence2": "b"}] * 51}, 413,
     ["the request holds 51 rows; at most 50 (max_rows=)"]),
    (b"{" + b" " * 30000 + b"}", 413, ["the body is 30002 bytes; at most 20000 (max_bytes=)"]),
    (chunks(), 413, ["the body is over 20000 bytes (max_bytes=)"]),
])
def test_bad_input_is_a_4xx_in_one_line_and_the_server_goes_on(server, body, status, words):
    reply = post(server, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert "\n" not in error
    for w in words:
        assert w in error, error
    good(server)


def test_a_long_text_is_truncated_to_the_models_max_length(runs, server):
    """Under max_chars but far over tiny-bert's 64 tokens: predicted on its first tokens, as ptune predict does."""
    row = {"task": "pt-sst2:sst2", "sentence": "the acting is superb , " * 20}
    reply = post(server, {"rows": [row]})
    assert reply.status_code == 200
    want = alone(runs, "bert", row)
    assert reply.json()["predictions"][0]["scores"]["positive"] == pytest.approx(want["score_positive"], abs=1e-5)


def test_a_client_that_disconnects_mid_request_leaves_the_server_answering(server):
    import socket

    host, port = server["url"].removeprefix("http://").split(":")
    for sent in (b'{"rows": [{"task": "mr', b'{"rows": [{"task": "mrpc", "sentence1": "a", "sentence2": "b"}]}'):
        with socket.create_connection((host, int(port))) as sock:  # closed mid-body, or before the answer
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(sent) + 100 * (sent[-1:] != b'}')}\r\n\r\n".encode() + sent)
        good(server)


def test_sigterm_finishes_the_request_in_flight_then_exits_cleanly(server):
    """A request whose body is half sent when SIGTERM arrives is still answered; then the server exits 0 and no
    longer listens. (Last: it stops the module's server.)"""
    import signal
    import socket
    import time

    import httpx

    host, port = server["url"].removeprefix("http://").split(":")
    body = json.dumps({"rows": [{"task": "mrpc", "sentence1": "it rains", "sentence2": "it pours"}]}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(1.0)  # the server has read the headers: the request is in flight
        server["proc"].send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[10:])
        sock.settimeout(120)
        reply = b""
        while b"}]}" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["predictions"][0]["task"] == "mrpc"
    assert server["proc"].wait(timeout=60) == 0
    server["log"].seek(0)
    assert "ptune serve: stopped (SIGTERM)" in server["log"].read()
    with pytest.raises(httpx.TransportError):
        httpx.get(server["url"] + "/health", timeout=5)
