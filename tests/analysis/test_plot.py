"""`ptune plot` on hand-made run folders: a PNG of the expected size, with the lines and bands drawn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from ptune.analysis import plot
from ptune.cli import main
from ptune.errors import ConfigError
from tests.analysis.conftest import make_run

mpimg = pytest.importorskip("matplotlib.image")
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # tab10's first two colors: the two methods


def share_of(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> float:
    return float((np.abs(pixels[..., :3] * 255 - np.array(rgb)) <= tol).all(axis=-1).mean())


@pytest.fixture
def runs(tmp_path):
    for seed, shift in ((1, 0.0), (2, 4.0)):  # two seeds apart: a band between them
        make_run(tmp_path, "prompt_tuning", "rte", seed, 60 + shift,
                 curve=[(2, 50 + shift, 0.9), (4, 55 + shift, 0.7), (6, 60 + shift, 0.6)])
        make_run(tmp_path, "p_tuning_v2", "rte", seed, 70 + shift,
                 curve=[(2, 60 + shift, 0.8), (4, 65 + shift, 0.5), (6, 70 + shift, 0.4)])
        make_run(tmp_path, "prompt_tuning", "stsb", seed, 80 + shift, metric="pearson",
                 curve=[(2, 70 + shift, 1.5), (4, 80 + shift, 1.0)])
    make_run(tmp_path, "p_tuning_v2", "stsb", 1, None, step=2, metric="pearson", curve=[(2, 40.0, 2.0)])  # unfinished: drawn so far
    return tmp_path


def test_the_png_has_a_panel_pair_per_task_and_the_lines_and_bands(runs):
    buf = io.StringIO()
    assert plot.main([runs], None, Console(file=buf)) == 0
    assert f"wrote {runs / 'curves.png'}" in " ".join(buf.getvalue().split())
    pixels = mpimg.imread(runs / "curves.png")
    height, width = pixels.shape[:2]
    assert (width, height) == (int(4.8 * 2 * 110), int(7.0 * 110))  # two tasks side by side, two rows
    assert (pixels[..., :3] < 0.95).any(axis=-1).mean() > 0.05  # not blank
    assert share_of(pixels, BLUE) > 0.001 and share_of(pixels, ORANGE) > 0.001  # one line per method
    light_blue = tuple(int(255 - 0.2 * (255 - c)) for c in BLUE)  # the alpha-0.2 band over white
    assert share_of(pixels, light_blue, tol=6) > 0.005


def test_the_curves_are_means_over_seeds_with_their_spread(runs):
    from ptune.analysis.runs import find

    found = find([runs])
    val = plot.curves(found, lambda r: plot.main_metric(r))
    steps, mean, std = plot.band(val["rte"]["prompt_tuning"])
    assert steps == [2, 4, 6] and mean == [52.0, 57.0, 62.0] and std == pytest.approx([2 * 2 ** 0.5] * 3)
    assert plot.band(val["stsb"]["p_tuning_v2"]) == ([2], [40.0], [0.0])  # the unfinished run, from tasks' main metric


def test_the_cli_command_and_its_one_line_errors(runs, tmp_path, capsys):
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(runs), "--out", str(out)]) == 0 and out.is_file()
    assert str(out) in capsys.readouterr().out
    empty = tmp_path / "empty"
    make_run(empty, "prompt_tuning", "rte", 1, 50.0)  # finished, but no evaluations recorded
    with pytest.raises(ConfigError, match="no evaluations to plot"):
        plot.main([empty], None, Console(file=io.StringIO()))


def lr_runs(root):
    """Structured (two hypernetworks) and prompt tuning over three learning rates, two seeds at 0.1."""
    from omegaconf import OmegaConf

    for lr, score in ((0.01, 60.0), (0.1, 70.0), (0.3, 65.0)):
        for seed in (1, 2) if lr == 0.1 else (1,):
            for kind, shift in (("low_rank", 0.0), ("mlp", -10.0)):
                folder = make_run(root, "structured", "sst2", seed, score + shift + seed, variant=f"{kind}-lr{lr}")
                cfg = OmegaConf.load(folder / "config.yaml")
                cfg.method.hypernetwork, cfg.optimizer = kind, {"lr": lr}
                OmegaConf.save(cfg, folder / "config.yaml")
        folder = make_run(root, "prompt_tuning", "sst2", 1, score, variant=f"lr{lr}")
        cfg = OmegaConf.load(folder / "config.yaml")
        cfg.method.lr, cfg.optimizer = lr, {"lr": None}  # the method's own lr: what --against lr reads then
        OmegaConf.save(cfg, folder / "config.yaml")
    return root


def test_against_lr_draws_best_score_per_variant_and_reads_the_method_lr(tmp_path):
    from ptune.analysis.runs import find

    root = lr_runs(tmp_path / "grid")
    found = find([root])
    labels = {plot.variant_label(r) for r in found}
    assert labels == {"structured hypernetwork=low_rank", "structured hypernetwork=mlp", "prompt_tuning"}
    assert sorted({plot.setting(r, "lr") for r in found}) == [0.01, 0.1, 0.3]
    out = tmp_path / "lr.png"
    assert main(["plot", str(root), "--against", "lr", "-o", str(out)]) == 0
    pixels = mpimg.imread(out)
    assert pixels.shape[1] == int(9.6 * 110)  # one task panel, with its legend beside it
    assert share_of(pixels, BLUE) > 0.0005  # lines drawn (tab20's first color is tab10's blue)
    with pytest.raises(ConfigError, match="no finished run has a number for 'trainer.nope'"):
        plot.main([root], tmp_path / "x.png", Console(file=io.StringIO()), against="trainer.nope")


def test_damaged_metrics_lines_are_skipped_not_a_traceback(tmp_path):
    from ptune.run_folder import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "accuracy": 50.0}\n42\n["a"]\n{"accuracy": 3}\n{"step": "x"}\n{"step": 2, "accuracy": 60')
    assert read_metrics(tmp_path) == [{"step": 1, "accuracy": 50.0}]
