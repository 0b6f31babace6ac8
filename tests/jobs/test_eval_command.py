"""The figure tier during a run (SPEC S14.7) and `param-decomp eval RUN_DIR` (S14.8) on short
tiny-TMS and micro-LM runs: figures every N steps, the eval command reproducing the run's own
numbers from its checkpoints, and its errors."""

import html
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from figure_checks import png_text

from param_decomp.cli import main
from param_decomp.eval.token_text import token_strings, visible_html_text
from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.text.tokenizers import ByteTokenizer
from param_decomp.train.checkpoint import restore_json

pytestmark = pytest.mark.runs_long(seconds=40)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
COMMON = ("ci_histogram", "ci_pre_activation_histogram", "activation_density", "mean_ci")
TOY_PNGS = {*COMMON, "causal_importance"}
LM_PNGS = {*TOY_PNGS, "token_ci"}


@pytest.fixture(scope="module")
def runs_dir(
    tmp_path_factory: pytest.TempPathFactory, trained_targets: Callable[..., Path]
) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the fixtures name their targets relative to the repository
        yield trained_targets(
            tmp_path_factory.mktemp("runs"),
            FIXTURES / "tms_tiny_target.yaml",
            FIXTURES / "llama_micro_target.yaml",
        )


def _run(name: str, runs_dir: Path, steps: int, every: int, **train: object) -> Path:
    """The fixture run for `steps` steps; every `every` steps (0: only at the end) a log
    line, the fast tier, the figure tier and a checkpoint."""
    cfg = load_decompose_config(FIXTURES / f"{name}.yaml")
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"steps": steps, "log_every": every or steps, **train}
            ),
            "eval": cfg.eval.model_copy(
                update={"figures": True, "figures_every": every, "every": every}
            ),
            "checkpointing": cfg.checkpointing.model_copy(update={"every": every, "keep": 5}),
        }
    )
    run_decompose(cfg, name, runs_dir, show_progress=False)
    return runs_dir / name


@pytest.fixture(scope="module")
def tms_run(runs_dir: Path) -> Path:
    warmup = load_decompose_config(FIXTURES / "tms_tiny.yaml").train.faithfulness_warmup
    return _run(
        "tms_tiny", runs_dir, 20, 10, faithfulness_warmup=warmup.model_copy(update={"steps": 5})
    )


@pytest.fixture(scope="module")
def lm_run(runs_dir: Path) -> Path:
    return _run("llama_micro", runs_dir, 4, 0)  # the figure tier at the end only


def _step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "figures").iterdir() if p.is_dir())


def test_s14_7_toy_figures_every_n_steps_and_at_the_end(tms_run: Path) -> None:
    assert _step_dirs(tms_run) == ["step_10", "step_20"]
    for step in (10, 20):
        folder = tms_run / "figures" / f"step_{step}"
        assert {p.stem for p in folder.iterdir()} == TOY_PNGS  # no token view for toys
        for name in TOY_PNGS:
            title, desc = png_text(folder / f"{name}.png")
            assert title.endswith(f"step {step}"), (name, title)
        title, desc = png_text(folder / "activation_density.png")
        assert "linear1: 8 components on 256 samples" in desc
        assert "y: fraction of samples with ci_lower > 0.1, log" in desc
        title, _ = png_text(folder / "causal_importance.png")
        assert "single-feature inputs" in title
    for name in ("causal_importance.png", "components.png"):  # the end-of-run figures stay
        png_text(tms_run / "figures" / name)


def test_s14_7_lm_figures_and_token_view(lm_run: Path, runs_dir: Path) -> None:
    assert _step_dirs(lm_run) == ["step_4"]
    folder = lm_run / "figures" / "step_4"
    assert {p.name for p in folder.iterdir()} == {f"{n}.png" for n in LM_PNGS} | {"token_ci.html"}
    _, desc = png_text(folder / "ci_histogram.png")
    assert "layers.0.mlp.up: 256 tokens x 8 components" in desc  # 2 batches x 8 x 16 tokens
    title, _ = png_text(folder / "token_ci.png")
    assert title == "Causal importance per token of one val sequence, step 4"
    page = (folder / "token_ci.html").read_text(encoding="utf-8")
    ids = json.loads(re.search(r'id="pd-data">(.*?)</script>', page, re.S).group(1))["ids"]
    assert len(ids) == 16  # one val window of seq_len tokens
    shown = re.findall(r'<span class="tok[^"]*" data-i="\d+"[^>]*>([^<]*)</span>', page)
    tokens = token_strings(ByteTokenizer(), np.asarray(ids))
    assert [html.unescape(s) for s in shown] == [visible_html_text(t) for t in tokens]
    n_options = len(re.findall(r"<option ", page))
    assert n_options == 3 * 8  # three sites, the top 8 of C = 8 each


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("which", ["tms_run", "lm_run"])
def test_s14_8_eval_reproduces_the_runs_eval_json(
    which: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last checkpoint is the state finish_run evaluated: the same numbers, exactly."""
    run: Path = request.getfixturevalue(which)
    final = json.loads((run / "eval.json").read_text())["steps"]
    code, out, err = _eval(capsys, str(run))
    assert code == 0, err
    again = json.loads((run / f"eval_step_{final}.json").read_text())
    original = json.loads((run / "eval.json").read_text())
    assert again["fast_tier"] == original["fast_tier"]
    assert again["losses"] == original["losses"] and again["alive"] == original["alive"]
    assert again["steps"] == final and again["checkpoint"].endswith(f"checkpoints/{final}")
    expected = LM_PNGS if which == "lm_run" else TOY_PNGS
    assert set(again["figures"]) == expected
    for rel in again["figures"].values():
        png_text(run / rel)
    assert f"checkpoint step {final}" in out and "eval/alive_frac/all" in out
    assert f"eval_step_{final}.json" in out
    assert ("per-token view:" in out) == (which == "lm_run")


def test_s14_8_eval_of_an_earlier_step_matches_its_logged_fast_tier(
    tms_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--step 10: the fast tier logged at step 10 (eval.every = 10) from the step-10
    checkpoint, and that step's figures rewritten."""
    figure = tms_run / "figures" / "step_10" / "mean_ci.png"
    figure.unlink()
    code, _, err = _eval(capsys, str(tms_run), "--step", "10")
    assert code == 0, err
    result = json.loads((tms_run / "eval_step_10.json").read_text())
    logged = next(
        json.loads(line)
        for line in (tms_run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["step"] == 10
    )
    assert result["fast_tier"] == {k: v for k, v in logged.items() if k.startswith("eval/")}
    assert result["steps"] == 10 and figure.is_file()


def test_s14_8_eval_errors_name_the_path(
    tms_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_such_run"
    code, _, err = _eval(capsys, str(missing))
    assert code == 2 and f"run folder {missing} not found" in err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    code, _, err = _eval(capsys, str(empty))
    assert code == 2 and f"{empty / 'checkpoints'} holds no checkpoint" in err
    code, _, err = _eval(capsys, str(tms_run), "--step", "7")
    assert code == 2 and f"{tms_run / 'checkpoints' / '7'} does not exist" in err
    assert "steps [10, 20]" in err
    code, _, err = _eval(capsys, str(tms_run), "--runs-dir", str(tmp_path))
    target = tmp_path / "targets" / "tms_tiny_target"
    assert code == 2 and f"{target} has no finished target" in err
    assert "Traceback" not in err


def test_s14_8_checkpoint_keeps_the_resolved_config(tms_run: Path) -> None:
    """What eval rebuilds from: the run's config, saved with every checkpoint step."""
    saved = restore_json(tms_run / "checkpoints", 20, "config")
    assert saved["run_name"] == "tms_tiny" and saved["eval"]["figures_every"] == 10
    assert Path(saved["target"]).is_absolute()
