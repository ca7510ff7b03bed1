"""End to end: the real dvc.yaml and stages on a micro demo study, in a scratch repository.

Covers: the whole DAG runs offline; a second `dvc repro` is a no-op; every report exists; the
`brainad score` CLI gives the same scores as the evaluate stage for the same images; `brainad
audit` re-verifies the data; a `dvc push`/`dvc pull` round trip through a local-folder remote.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from brainad import runtime
from brainad.cli import lineage
from brainad.cli import main as cli_main
from brainad.models.registry import MODEL_NAMES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

MICRO_FIT = {
    "epochs": 2,
    "batch_size": 8,
    "checkpoint_every": 1,
    "sample_every": 1,
    "extra_sample_epochs": [],
    "deterministic": True,
}
MICRO = {
    "phantom": {"n_healthy": 48, "n_anomalous": 24, "image_size": 64},
    "preprocess": {"image_size": 32},
    "perceptual": {"channels": 4, "scales": 2},
    "vqgan": {
        "model": {
            "channels": 8,
            "channel_mult": [1, 2],
            "embedding_dim": 8,
            "codebook_size": 16,
            "disc_channels": 8,
            "disc_layers": 2,
        },
        "fit": MICRO_FIT,
    },
    "dcgan": {
        "model": {"latent_dim": 8, "channels": 8},
        "fit": MICRO_FIT,
        "encoder_fit": {**MICRO_FIT, "epochs": 1},
    },
    "vqgan_prior": {
        "model": {"dim": 16, "layers": 1, "heads": 2, "train_block_range": [1, 2]},
        "fit": MICRO_FIT,
    },
    "dae": {"model": {"channels": [8, 16], "noise_res": 4}, "fit": MICRO_FIT},
    "segmenter": {"model": {"channels": [8, 16]}, "fit": MICRO_FIT},
    "inpainter": {"model": {"channels": [8, 16], "cell": 4}, "fit": MICRO_FIT},
    "vqgan_denoise": {
        "model": {
            "channels": 8,
            "channel_mult": [1, 2],
            "embedding_dim": 8,
            "codebook_size": 16,
            "disc_channels": 8,
            "disc_layers": 2,
        },
        "noise": {"noise_res": 4},
        "fit": MICRO_FIT,
    },
    "score": {"batch_size": 16},
    "evaluate": {
        "bootstrap": 20,
        "pca_components": 4,
        "matched": {"healthy_sequences": ["T1"], "anomalous_sequences": ["T1"]},
    },
}


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def scratch_repo(repo: Path, studies: dict) -> dict:
    """A git + DVC repository at ``repo`` with this project's stages, src and dvc.yaml, and its
    params.yaml with ``studies`` (section overrides over ``{}`` for every section) as the only
    studies and no volume study; returns the environment to run DVC in."""
    shutil.copytree(ROOT / "stages", repo / "stages")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "annotations", repo / "annotations")  # a dep of prepare (the labeler)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["studies"] = {
        name: {**{section: {} for section in params["defaults"]}, **overrides}
        for name, overrides in studies.items()
    }
    params["volume_studies"] = {}  # no volume study: its cases are not in a scratch repo
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n/models/\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "DVC_NO_ANALYTICS": "1",
    }
    run(["git", "init", "-q"], repo, env)
    commit = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q"]
    run([*commit, "--allow-empty", "-m", "init"], repo, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    return env


@pytest.fixture(scope="module")
def micro_repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("micro")
    env = scratch_repo(repo, {"demo": MICRO})
    run([sys.executable, "-m", "dvc", "repro", "evaluate@demo"], repo, env)
    return repo, env


def test_pipeline_writes_every_report(micro_repo) -> None:
    repo, _ = micro_repo
    reports = repo / "reports" / "demo"
    metrics = json.loads((reports / "evaluate" / "metrics.json").read_text())
    methods = {"vqgan", "vqgan_prior", "dcgan", "pca_recon", "mean_intensity", "mirror_asymmetry"}
    assert methods <= set(metrics)
    ceiling = metrics.pop("confound_ceiling")  # trivial features fitted on validation
    assert ceiling["kind"] == "ceiling" and 0.0 <= ceiling["real"]["roc_auc"] <= 1.0
    for entry in metrics.values():
        assert 0.0 <= entry["real"]["roc_auc"] <= 1.0
        assert 0.0 <= entry["real"]["matched"]["roc_auc"] <= 1.0  # like with like: T1 phantoms
        assert 0.0 <= entry["lesion"]["roc_auc"] <= 1.0
        assert {"kind_blob", "kind_tissue"} <= set(entry["lesion"])  # per lesion kind
    split = json.loads((reports / "split" / "split.json").read_text())
    assert split["cross_split_near_duplicate_pairs"] == 0
    summary = (reports / "evaluate" / "summary.md").read_text()
    assert "vqgan" in summary and "dataset_fingerprint" in summary
    assert "confound ceiling" in summary and "Track 2 by lesion kind and size" in summary
    assert "Deterministic run: pinned kernels" in summary
    assert "Headline: track 1 like with like" in summary and "Track 1 per stratum" in summary
    assert "Default detector of this study: **`vqgan`**" in summary
    ablation = json.loads((reports / "ablation" / "validation.json").read_text())
    assert ablation["bake_off"]["winner"] in set(MODEL_NAMES)
    assert "lesion" in ablation["bake_off"]["bars"]  # matched too where val has both classes
    if ablation["bake_off"]["winner"] == "vqgan":  # does the score section run its variant?
        assert "the study's `score` section" in summary
    if len(ablation["bake_off"]["best_variant"]) > 1:  # how sure the ranking is, in the summary
        assert ablation["bake_off"]["uncertainty"]["winner"] == ablation["bake_off"]["winner"]
        assert f"Lead of `{ablation['bake_off']['winner']}`" in summary
    provenance = json.loads((reports / "evaluate" / "evaluation.json").read_text())["provenance"]
    assert provenance["runtime"]["mode"] == "deterministic"  # the stages pinned their kernels
    assert (
        provenance["runtime"]["threads"] == runtime.THREADS and provenance["runtime"]["cpu_model"]
    )
    for entry in provenance["training"].values():
        assert entry["runtime"]["mode"] == "deterministic" and len(entry["weights"]) == 32
    for fig in ("roc.png", "reconstructions.png", "heatmaps_vqgan.png", "lesion_pairs_dcgan.png"):
        assert (reports / "evaluate" / "figures" / fig).stat().st_size > 1000
    assert list((reports / "evaluate" / "plots" / "roc").glob("*.json"))
    assert (repo / "models" / "demo" / "scorers" / "vqgan.pt").is_file()
    assert (repo / "models" / "demo" / "scorers" / "vqgan_prior.pt").is_file()
    assert list((reports / "train" / "vqgan_prior" / "samples_main").glob("epoch_*.png"))


def test_second_repro_is_a_noop(micro_repo) -> None:
    repo, env = micro_repo
    out = run([sys.executable, "-m", "dvc", "status"], repo, env).stdout
    assert "up to date" in out, out
    out = run([sys.executable, "-m", "dvc", "repro", "evaluate@demo"], repo, env).stdout
    assert "Running stage" not in out, out


def test_cli_scores_equal_evaluate_scores(micro_repo, tmp_path: Path) -> None:
    repo, _ = micro_repo
    with open(repo / "reports" / "demo" / "evaluate" / "scores.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "vqgan"]
    raw = repo / "data" / "demo" / "raw"
    files = [str(raw / r["path"]) for r in rows]
    out = tmp_path / "cli"
    code = cli_main(
        ["score", "--model", str(repo / "models/demo/scorers/vqgan.pt"), *files, "--out", str(out)]
    )
    assert code == 0
    with open(out / "scores.csv") as handle:
        cli = {Path(r["path"]).resolve(): r for r in csv.DictReader(handle)}
    evaluate_scores = np.array([float(r["score"]) for r in rows])
    cli_scores = np.array([float(cli[(raw / r["path"]).resolve()]["score"]) for r in rows])
    np.testing.assert_allclose(cli_scores, evaluate_scores, rtol=1e-5, atol=1e-5)
    predictions = [int(cli[(raw / r["path"]).resolve()]["prediction"]) for r in rows]
    assert predictions == [int(r["prediction"]) for r in rows]
    assert len(list((out / "heatmaps").glob("*.png"))) == len(rows)


def test_audit_verifies_and_detects_a_changed_file(micro_repo, capsys) -> None:
    repo, _ = micro_repo
    assert cli_main(["audit", "demo", "--root", str(repo), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    data = record["data"]
    assert data["fingerprint_matches"] and data["files_verified"] > 0 and record["current"]
    assert "evaluate@demo" in [s["stage"] for s in record["stages"]]
    victim = next((repo / "data" / "demo" / "raw").rglob("*.jpg"))
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\0")
        assert cli_main(["audit", "demo", "--root", str(repo), "--json"]) == 1
        record = json.loads(capsys.readouterr().out)
        changed = record["data"]["files_changed"]
        assert str(victim.relative_to(repo / "data" / "demo" / "raw")) in changed
    finally:
        victim.write_bytes(original)


def test_audit_of_a_metric_lists_its_lineage_and_marks_changed_code(micro_repo, capsys) -> None:
    repo, _ = micro_repo
    metrics = json.loads((repo / "reports" / "demo" / "evaluate" / "metrics.json").read_text())
    model = next(k for k, v in metrics.items() if isinstance(v, dict) and "lesion" in v)
    key = f"{model}.lesion.roc_auc"
    assert cli_main(["audit", "demo", "--root", str(repo), "--metric", key]) == 0
    text = capsys.readouterr().out
    assert f"`{key}` = {metrics[model]['lesion']['roc_auc']}" in text
    order = [line.split("`")[1] for line in text.splitlines() if line.startswith("### ")]
    assert order[0] == "evaluate@demo" and order[-1] == "prepare@demo"  # nearest first
    assert f"train_{model}@demo" in order and "preprocess@demo" in order
    assert "weights: `models/demo/" in text and "dataset fingerprint" in text
    assert "every stage matches `dvc.lock`" in text
    code = repo / "src" / "brainad" / "evaluation" / "summary.py"
    original = code.read_text()
    try:
        code.write_text(original + "\n# an edit after the run\n")
        assert cli_main(["audit", "demo", "--root", str(repo), "--metric", key]) == 0
        text = capsys.readouterr().out
        assert "### `evaluate@demo` — **changed** since `dvc.lock`" in text
        assert "src/brainad/evaluation (modified)" in text and "**not current**" in text
        assert "### `prepare@demo` — matches `dvc.lock`" in text
    finally:
        code.write_text(original)
    assert cli_main(["audit", "demo", "--root", str(repo), "--metric", "nope"]) == 2
    with pytest.raises(ValueError, match="--metric nope: no metrics.json of study 'demo'"):
        lineage.find_metric(lineage.lock_stages(repo), repo, "demo", "nope")


def test_dvc_push_pull_round_trip_with_a_local_remote(tmp_path: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    run(["git", "init", "-q"], repo, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(remote)], repo, env)
    (repo / "data").mkdir()
    payload = os.urandom(4096)
    (repo / "data" / "blob.bin").write_bytes(payload)
    run([sys.executable, "-m", "dvc", "add", "data/blob.bin"], repo, env)
    run([sys.executable, "-m", "dvc", "push"], repo, env)
    assert any(p.is_file() for p in remote.rglob("*"))
    (repo / "data" / "blob.bin").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    run([sys.executable, "-m", "dvc", "pull"], repo, env)
    assert (repo / "data" / "blob.bin").read_bytes() == payload


def test_forced_rerun_under_other_isa_caps_reproduces_identical_results(micro_repo) -> None:
    """Deterministic mode: every stage re-run from scratch (checkpoints deleted, so the models
    are trained again) in processes whose ISA caps emulate an older CPU gives the same weights,
    metrics and scores, byte for byte."""
    repo, env = micro_repo
    evaluate = repo / "reports" / "demo" / "evaluate"
    files = [evaluate / "metrics.json", evaluate / "scores.csv"]
    before = [f.read_bytes() for f in files]
    weights = _weights(evaluate)
    shutil.rmtree(repo / "models" / "demo" / "checkpoints")
    old_cpu = {**env, "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}
    run([sys.executable, "-m", "dvc", "repro", "--force", "evaluate@demo"], repo, old_cpu)
    assert _weights(evaluate) == weights
    assert [f.read_bytes() for f in files] == before


def _weights(evaluate: Path) -> dict[str, str]:
    training = json.loads((evaluate / "evaluation.json").read_text())["provenance"]["training"]
    return {name: entry["weights"] for name, entry in training.items()}
