"""Every shell command in the README works as pasted (issue 25): each fenced ``bash`` block's commands run, in
README order, in a subprocess from a clean environment (no HF_* variables, PATH without the venv) after the
README's set-up line, in a fresh folder with ``../shared`` beside it, with no network. Training commands are
scaled down by extra overrides (a few steps on a few rows); a single run also gets ``run_dir=`` set to the
folder the README's own command would have made, so the later commands that name that folder (``ptune eval
run=...``, ``ptune predict run=...``) test the README's paths. A command that cannot run here (it installs,
needs GPUs, SLURM, the hub's T5 weights or a server) is listed in NOT_RUN with its reason; a README command
that is neither run nor listed fails the test, and so does a NOT_RUN entry that no longer matches."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, SHARED_DATA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED / "models" / "hub").is_dir() or not SHARED_DATA.is_dir(),
                       reason="needs ../shared (models and data)"),
]

# what a README command needs that this machine has not: (regex on the command, reason)
NOT_RUN = [
    (r"^make install && make train$", "CI's own first step (.ci/run runs make install; tests/test_makefile.py "
                                      "checks make train's offline resolution)"),
    (r"^make test$", "the command that runs this test"),
    (r"^source \.venv/bin/activate$", "the set-up line: every command here runs after it"),
    (r"model=t5-base\b|model=t5-", "T5 weights come from the hub (../shared has T5's config and tokenizer only)"),
    (r"\+experiment=(lester2021|ptv2_|spot_)", "a paper preset on a hub model (T5 / RoBERTa weights)"),
    (r"^ptune table multirun/lester2021", "reads the lester2021 sweep, which needs the hub's T5 weights"),
    (r"hydra/launcher=submitit_slurm", "needs a SLURM cluster (tests/test_launchers.py runs submitit_local)"),
    (r"^pip install", "installs packages (make install brings every extra, through .[dev])"),
    (r"^tensorboard ", "starts a server that runs until stopped"),
    (r"^ptune serve ", "starts a server that runs until stopped (tests/test_serve.py runs one on a free port)"),
    (r"^curl ", "talks to that server"),
    (r"logger\.tracking_uri=http", "a placeholder (`...`) and an MLflow server"),
    (r"--nproc_per_node=4", "four GPUs and the hub's T5 weights"),
]
# extra overrides that shrink a training command (replacing the README's value of the same key)
SCALE = {"trainer.max_steps": "4", "trainer.eval_every": "2", "trainer.batch_size": "4",
         "data.train_limit": "32", "data.eval_limit": "16"}
# a preset's grid, cut to one point per other swept key
PRESET_CUT = {"small_glue_minilm": ["task=rte", "seed=1"]}


def readme_commands() -> list[str]:
    """The commands of every fenced bash block, continuation lines joined, comments dropped, ``&&`` kept."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"^([ \t]*)```bash\n(.*?)^\1```", text, re.S | re.M):
        body = re.sub(r"\\\n\s*", " ", textwrap.dedent(block[1]))
        for line in body.splitlines():
            line = re.sub(r"(^|\s)#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


def scaled(command: str) -> str:
    """A training command with SCALE's overrides (and a single run's README folder as run_dir=); others as is."""
    tokens = shlex.split(command)
    if "train" not in tokens or tokens[tokens.index("train") - 1] not in ("ptune", "-m") or "&&" in tokens:
        return command
    at = tokens.index("train") + 1
    head, overrides = tokens[:at], tokens[at:]
    keys = {o.split("=", 1)[0] for o in overrides}
    overrides = [o for o in overrides if o.split("=", 1)[0] not in SCALE]
    extra = [f"{k}={v}" for k, v in SCALE.items()]
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), None)
    extra += PRESET_CUT.get(preset, [])
    if "-m" not in overrides and preset is None and "run_dir" not in keys:
        # quoted for Hydra's grammar: the folder name holds '=' (trainer.max_steps=300)
        extra.append(f"run_dir='outputs/{readme_folder([o for o in tokens[at:] if o != '-m'])}'")
    return shlex.join(head + overrides + extra)


def readme_folder(overrides: list[str]) -> str:
    """The folder the README's own (unscaled) single-run command makes: ptune's naming rule, in process."""
    from ptune.config import compose_config, to_config
    from ptune.sweep import plain_folder_name

    return plain_folder_name(to_config(compose_config(overrides)), overrides)


def test_not_run_entries_each_match_a_readme_command():
    commands = readme_commands()
    stale = [pattern for pattern, _ in NOT_RUN if not any(re.search(pattern, c) for c in commands)]
    assert not stale, f"NOT_RUN entries that match no README command: {stale}"


def test_readme_blocks_parse_into_commands():
    commands = readme_commands()
    assert "ptune --help" in commands and any(c.startswith("ptune predict run=") for c in commands)
    assert not any(c.endswith("\\") for c in commands)  # continuation lines were joined
    tokens = shlex.split(scaled("ptune train method=prompt_tuning trainer.max_steps=300 seed=1"))
    assert [t for t in tokens if t.startswith("trainer.max_steps=")] == ["trainer.max_steps=4"]
    assert "run_dir='outputs/prompt_tuning-sst2-minilm-s1-trainer.max_steps=300'" in tokens  # the README's folder


def test_every_readme_command_runs_as_pasted(tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED.resolve())
    (work / ".venv").symlink_to(Path(sys.prefix))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "default"}
    ran, skipped = [], []
    for command in readme_commands():
        why = not_run(command)
        if why:
            skipped.append((command, why))
            continue
        line = scaled(command)
        done = subprocess.run(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed ({done.returncode}): {command}\nran: {line}\n" \
                                     f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{command}\n{done.stderr[-3000:]}"
        ran.append(command)
    # the README's folders exist where its commands said they would
    assert (work / "outputs" / "p_tuning_v2-rte-minilm-s42-trainer.max_steps=300" / "results.json").exists()
    assert (work / "multirun" / "grid" / "table.md").exists() and (work / "multirun" / "grid" / "curves.png").exists()
    assert any((work / "outputs").rglob("predictions/*.jsonl")) and (work / "sst2-test.csv").exists()
    assert len(ran) >= 15, ran
    print("\n".join([f"ran: {c}" for c in ran] + [f"not run ({why}): {c}" for c, why in skipped]))


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("ptune ")])
def test_readme_ptune_commands_parse(command):
    """Cheap and exhaustive: every ptune command's first word after `ptune` is a real subcommand."""
    from ptune.cli import COMMANDS

    word = shlex.split(command)[1]
    assert word in COMMANDS or word in ("--help", "--version"), command


if __name__ == "__main__":  # print what would run and how
    for c in readme_commands():
        print(("SKIP " + not_run(c)) if not_run(c) else "RUN  " + scaled(c))
    os._exit(0)
