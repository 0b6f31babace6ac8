"""`param-decomp export` (S17.8): a pretrained Llama (sentencepiece tokenizer, grouped-query
attention, untied head) and GPT-2 (byte tokenizer, tied head) written as Hugging Face folders
read back bit for bit by `target: {hf}`, and give transformers' logits within 1e-4 (float32)
and its tokenizer the same ids; the exported Llama decomposes with its folder's tokenizer.

The transformers checks need the `hf-test` extra and skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from param_decomp.cli import main
from param_decomp.config.pretrain_schema import pretrain_config_from_data
from param_decomp.config.schema import GPT2Model, HFTarget, HFTokenizerSpec, LlamaModel
from param_decomp.data.token_store import build_tokenizer
from param_decomp.jobs.decompose import run_decompose
from param_decomp.jobs.export import export_run
from param_decomp.jobs.pretrain import pretrain
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.hf.config_map import hf_target_spec
from param_decomp.targets.hf.load import load_hf_target
from param_decomp.text.hf_tokenizer import HFTokenizer
from param_decomp.train.run_dir import target_run_dir

pytestmark = pytest.mark.runs_long(seconds=40)  # two pretrains and a decomposition

TOLERANCE = 1e-4  # max |logit difference| in float32 (acceptance)
TEXTS = ["naïve café, Ærøskøbing", "emoji 🙂 and\ttabs  ", "\n\nblank\n", "   leading", ""]
RUNS = {
    "llama": {
        "model": {
            "type": "llama",
            "vocab_size": 320,
            "d_model": 32,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_mlp": 48,
            "n_layers": 2,
            "seq_len": 32,
            "rope_theta": 5000.0,
            "rms_norm_eps": 1e-5,
        },
        "tokenizer": {"kind": "sentencepiece", "vocab_size": 320},
    },
    "gpt2": {
        "model": {
            "type": "gpt2",
            "vocab_size": 256,
            "d_model": 32,
            "n_heads": 4,
            "d_mlp": 64,
            "n_layers": 2,
            "seq_len": 32,
        },
        "tokenizer": "byte",
    },
}


def _config(name: str) -> dict:
    return {
        "run_name": f"{name}_export",
        "model": RUNS[name]["model"],
        "data": {"tokenizer": RUNS[name]["tokenizer"], "max_val_windows": 8},
        "train": {
            "steps": 4,
            "batch_size": 8,
            "optimizer": {"lr": 1e-2},
            "log_every": 4,
            "eval_every": 4,
        },
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """name -> (pretrain config, the pretrained model, runs dir, exported folder)."""
    root = tmp_path_factory.mktemp("export")
    out: dict[str, tuple] = {}
    for name in RUNS:
        cfg = pretrain_config_from_data(_config(name), f"{name}.yaml")
        model = pretrain(cfg, root, log=False)
        folder = export_run(target_run_dir(cfg.run_name, root), root / "hf" / name)
        out[name] = (cfg, model, root, folder)
    return out


def _logits(model: nnx.Module, tokens: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(tokens)))


def _tokens(vocab: int, seq_len: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(3, seq_len))


def _same_lm(a: LlamaModel | GPT2Model, b: LlamaModel | GPT2Model) -> bool:
    """The same model, whether the K/V heads and head size are spelled out or defaulted."""
    if isinstance(a, LlamaModel) and isinstance(b, LlamaModel):
        if (a.kv_heads, a.head_size) != (b.kv_heads, b.head_size):
            return False
        a, b = (m.model_copy(update={"n_kv_heads": None, "head_dim": None}) for m in (a, b))
    return a == b


@pytest.mark.parametrize("name", list(RUNS))
def test_export_reads_back_bit_exact(exported: dict, name: str) -> None:
    cfg, model, runs, folder = exported[name]
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    spec = hf_target_spec(HFTarget(hf=str(folder)), None)
    assert _same_lm(spec.model, cfg.model)
    assert spec.data.tokenizer == HFTokenizerSpec(kind="hf", path=str(folder))
    back = load_hf_target(spec)
    ours, theirs = nnx.state(model), nnx.state(back)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype == np.float32
        assert np.array_equal(np.asarray(a), np.asarray(b))
    tokens = _tokens(cfg.model.vocab_size, cfg.model.seq_len)
    assert np.array_equal(_logits(model, tokens), _logits(back, tokens))
    # the folder's tokenizer gives the run's ids and bytes table
    run_tok, hf_tok = build_tokenizer(cfg.data, runs), HFTokenizer.from_path(folder)
    assert hf_tok.eod_id == run_tok.eod_id
    assert np.array_equal(hf_tok.bytes_per_token(), run_tok.bytes_per_token())
    for text in TEXTS:
        assert hf_tok.encode(text).tolist() == run_tok.encode(text).tolist(), text


@pytest.mark.parametrize("name", list(RUNS))
def test_transformers_logits_and_tokenizer_match(exported: dict, name: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, model, runs, folder = exported[name]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf_model.eval()
    tokens = _tokens(cfg.model.vocab_size, cfg.model.seq_len)
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens)).logits.numpy()
    ours = _logits(model, tokens)
    assert ref.shape == ours.shape and ref.std() > 0.3
    assert float(np.abs(ours - ref).max()) <= TOLERANCE
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    run_tok = build_tokenizer(cfg.data, runs)
    assert hf_tok.eos_token_id == run_tok.eod_id == hf_model.config.eos_token_id
    for text in TEXTS:
        assert hf_tok.encode(text, add_special_tokens=False) == run_tok.encode(text).tolist()


def test_hf_target_decomposes_with_its_folder_tokenizer(exported: dict, tmp_path: Path) -> None:
    cfg, _, _, folder = exported["llama"]
    config = {
        "run_name": "exported_llama",
        "target": {"hf": str(folder)},
        "data": {"seq_len": 16, "max_val_windows": 8},
        "decomposition": {
            "C": 4,
            "sites": ["layers.0.mlp.up"],
            "ci_function": {"type": "global_mlp"},
        },
        "losses": [
            {"type": "faithfulness", "coeff": 1.0},
            {"type": "importance_minimality", "coeff": 1e-3, "pnorm": 1.0},
            {"type": "stochastic_recon", "coeff": 1.0, "distance": "kl"},
        ],
        "train": {"steps": 2, "batch_size": 8, "optimizer": {"lr": 1e-3}, "log_every": 1},
        "eval": {"n_batches": 1, "batch_size": 8, "figures": False, "pgd_steps": 0},
    }
    path = tmp_path / "decompose.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_decompose_config(path)
    assert loaded.data.tokenizer == HFTokenizerSpec(kind="hf", path=str(folder))
    run_decompose(loaded, str(path), tmp_path / "runs", show_progress=False)
    (meta,) = (tmp_path / "runs" / "tokens").glob("*/meta.json")
    store = json.loads(meta.read_text())
    assert store["tokenizer"] == f"hf:{HFTokenizer.from_path(folder).sha256()}"
    assert store["vocab_size"] == cfg.model.vocab_size and store["eod_id"] == 1
    lines = (tmp_path / "runs" / "exported_llama" / "metrics.jsonl").read_text().splitlines()
    assert sum("train/loss/total" in json.loads(line) for line in lines) == 2
    # the config can name another tokenizer instead of the folder's
    config["data"]["tokenizer"] = "byte"
    path.write_text(yaml.safe_dump(config))
    assert load_decompose_config(path).data.tokenizer == "byte"


def test_export_errors_exit_2(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, _, runs, folder = exported["gpt2"]
    run = target_run_dir("gpt2_export", runs)
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["export", str(run), str(folder)]) == 2  # exists and is not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "o"), "--step", "3"]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err
    capped = tmp_path / "capped"
    capped.mkdir()
    raw = _config("gpt2")
    raw["model"]["logit_soft_cap"] = 30.0
    (capped / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["export", str(capped), str(tmp_path / "o")]) == 2
    assert "model.logit_soft_cap" in capsys.readouterr().err
    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / "config.yaml").write_text(yaml.safe_dump({"model": {"type": "tms"}}))
    assert main(["export", str(toy), str(tmp_path / "o")]) == 2
    assert "model.type" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
