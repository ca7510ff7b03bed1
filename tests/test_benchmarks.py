"""Smoke test of ``python -m benchmarks.run --quick`` (JSON schema, consistency, markdown table)
and of the no-op ``dvc repro`` measurement against a stand-in ``dvc`` executable (real DVC is
never run here)."""

from __future__ import annotations

import importlib
import json
import os
import stat
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from brainad.models.registry import MODEL_NAMES

REPO = Path(__file__).resolve().parents[1]
TOP_KEYS = {
    "schema",
    "created",
    "quick",
    "study",
    "default_model",
    "sizes",
    "machine",
    "matmul",
    "training",
    "scoring",
    "dvc_noop_repro",
    "demo_end_to_end",
    "targets",
}
MACHINE_KEYS = {
    "cpu_model",
    "logical_cores",
    "usable_cores",
    "torch",
    "torch_threads",
    "cpu_bf16_supported",
    "device",
    "load_average_1m",
}
TRAINING_KEYS = {
    "model",
    "device",
    "precision",
    "image_size",
    "batch_size",
    "warmup_steps",
    "timed_steps",
    "step_seconds",
    "step_seconds_median",
    "images_per_s",
    "flops_per_step",
    "achieved_flops_per_s",
    "matmul_flops_per_s",
    "ratio_to_matmul",
}
SCORING_KEYS = {
    "image_size",
    "seconds",
    "images_per_s",
    "rss_peak_increase_mb",
    "memory_method",
    "cuda_peak_allocated_mb",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One ``--quick`` run (one torch thread: fast on a shared CPU); its JSON and stdout."""
    out = tmp_path_factory.mktemp("bench") / "benchmarks.json"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--skip-dvc", "--threads", "1"]
    proc = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """``benchmarks.run`` imported in this process (the repository root on ``sys.path``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("benchmarks.run")


def test_quick_run_top_level_and_machine(quick: tuple[dict, str]) -> None:
    result, _ = quick
    assert set(result) == TOP_KEYS
    assert result["schema"] == "brainad-benchmarks/1"
    assert result["quick"] is True
    assert result["sizes"]["image_size"] == 32 and result["sizes"]["steps"] == 2
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["machine"]["torch_threads"] == 1  # --threads was applied
    assert isinstance(result["machine"]["cpu_bf16_supported"], bool)


def test_quick_run_training_entries(quick: tuple[dict, str]) -> None:
    result, _ = quick
    training = result["training"]
    expected = {"fp32", "bf16"} if result["machine"]["cpu_bf16_supported"] else {"fp32"}
    cpu_cases = {(e["model"], e["precision"]) for e in training if e["device"] == "cpu"}
    models = MODEL_NAMES
    assert cpu_cases == {(m, p) for m in models for p in expected}
    matmul = {(m["device"], m["precision"]): m["flops_per_s"] for m in result["matmul"]}
    for e in training:
        assert TRAINING_KEYS <= set(e)
        assert e["image_size"] == 32 and len(e["step_seconds"]) == e["timed_steps"] == 2
        assert min(e["step_seconds"]) > 0 and e["flops_per_step"] > 0
        assert e["images_per_s"] == pytest.approx(e["batch_size"] / e["step_seconds_median"])
        assert e["matmul_flops_per_s"] == matmul[(e["device"], e["precision"])]
        assert e["ratio_to_matmul"] == pytest.approx(
            e["flops_per_step"] / e["step_seconds_median"] / e["matmul_flops_per_s"]
        )
    for model in models:  # nominal FLOPs do not depend on the precision
        assert len({e["flops_per_step"] for e in training if e["model"] == model}) == 1


def test_quick_run_scoring_entries(quick: tuple[dict, str]) -> None:
    result, _ = quick
    evaluate, cli = result["scoring"]["evaluate"], result["scoring"]["cli"]
    for entry in (evaluate, cli):
        assert SCORING_KEYS <= set(entry)
        assert entry["image_size"] == 32 and entry["images_per_s"] > 0
        assert entry["rss_peak_increase_mb"] >= 0
    assert evaluate["images"] == result["sizes"]["score_images"]
    assert evaluate["images_per_s"] == pytest.approx(evaluate["images"] / evaluate["seconds"])
    assert cli["files"] == result["sizes"]["cli_files"]
    assert cli["scored"] + cli["quarantined"] == cli["files"] and cli["scored"] > 0
    prior = result["scoring"]["evaluate_prior"]
    assert prior["model"] == "vqgan_prior" and prior["images"] == evaluate["images"]
    default = result["default_model"]  # the study's default detector has its own row and target
    if default not in ("vqgan", "vqgan_prior"):
        row = result["scoring"]["evaluate_default"]
        assert row["model"] == default and row["images"] == evaluate["images"]
    targets = [t["name"] for t in result["targets"]]
    assert any(f"the default detector {default}" in name for name in targets), targets
    for key, entry in result["scoring"].items():  # reduced-precision rows say how far they are
        assert ("agreement_with_fp32" in entry) == (entry["precision"] != "fp32"), key
        if entry["precision"] != "fp32":
            agreement = entry["agreement_with_fp32"]
            assert 0 <= agreement["median_relative_error"] <= agreement["max_relative_error"]
            assert -1 <= agreement["spearman"] <= 1


def test_agreement_measures_error_and_rank(bench: ModuleType) -> None:
    reference = np.array([1.0, 2.0, 4.0, 8.0])
    same = importlib.import_module("benchmarks.workloads").agreement(reference, reference.copy())
    assert same == {"max_relative_error": 0.0, "median_relative_error": 0.0, "spearman": 1.0}
    swapped = importlib.import_module("benchmarks.workloads").agreement(
        reference, np.array([1.0, 2.2, 2.0, 8.0])
    )
    assert swapped["max_relative_error"] == pytest.approx(0.5)
    assert swapped["median_relative_error"] == pytest.approx(0.05)
    assert swapped["spearman"] == pytest.approx(0.8)


def test_quick_run_targets_and_nulls(quick: tuple[dict, str]) -> None:
    result, _ = quick
    assert result["dvc_noop_repro"]["seconds"] is None and result["dvc_noop_repro"]["reason"]
    assert (
        result["demo_end_to_end"]["seconds"] is None
        and ".ci/run" in result["demo_end_to_end"]["note"]
    )
    targets = {t["name"]: t for t in result["targets"]}
    for name, target in targets.items():
        if name.startswith("scoring"):  # 32 px is not the 128 px of the target
            assert target["met"] is None and "128" in target["note"]
        elif "(the default detector)" in name:  # the detector issue's bar
            assert target["met"] == (target["value"] >= 0.6)
        elif name.startswith("training"):
            assert target["met"] == (target["value"] >= 0.8)
    bf16_rows = [e for e in result["training"] if e["precision"] == "bf16"]
    default_rows = [e for e in bf16_rows if e["model"] == result["default_model"]]
    assert sum(n.startswith("training") for n in targets) == len(bf16_rows) + len(default_rows)
    assert targets["no-op dvc repro (s)"]["met"] is None
    assert targets["demo end to end (s)"]["met"] is None


def test_quick_run_prints_markdown_table(quick: tuple[dict, str]) -> None:
    result, stdout = quick
    lines = stdout.splitlines()
    assert lines[0].startswith("| model | device | precision |")
    from brainad.models.registry import MODEL_NAMES

    rows = [ln for ln in lines if ln.startswith(tuple(f"| {name} |" for name in MODEL_NAMES))]
    assert len(rows) == len(result["training"])
    assert any(ln.startswith("| scoring images/s (evaluate path) |") for ln in lines)


# ----------------------------------------------------------------------------- no-op dvc repro
def fake_dvc(folder: Path, status_json: str, repro_out: str) -> tuple[Path, Path]:
    """An executable standing in for dvc: logs its arguments, prints canned output."""
    log = folder / "calls.log"
    (folder / "status.out").write_text(status_json + "\n", encoding="utf-8")
    (folder / "repro.out").write_text(repro_out + "\n", encoding="utf-8")
    script = folder / "dvc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        f'case "$1" in status) cat "{folder}/status.out";; repro) cat "{folder}/repro.out";; esac\n',
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


@pytest.mark.skipif(os.name != "posix", reason="the stand-in dvc is a POSIX shell script")
def test_dvc_noop_timed_when_up_to_date(bench: ModuleType, tmp_path: Path) -> None:
    dvc, log = fake_dvc(tmp_path, "{}", "Stage 'evaluate@demo' didn't change, skipping")
    result = bench.bench_dvc_noop(tmp_path, reps=2, dvc=dvc)
    assert result["reason"] is None and len(result["seconds_all"]) == 2
    assert result["seconds"] == pytest.approx(statistics.median(result["seconds_all"]))
    assert result["seconds"] > 0
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls == [
        "status --with-deps --json evaluate@demo",
        "repro evaluate@demo",
        "repro evaluate@demo",
    ]


@pytest.mark.skipif(os.name != "posix", reason="the stand-in dvc is a POSIX shell script")
def test_dvc_noop_null_when_not_up_to_date(bench: ModuleType, tmp_path: Path) -> None:
    status = json.dumps({"train@demo": [{"changed deps": {"params.yaml": "modified"}}]})
    dvc, log = fake_dvc(tmp_path, status, "")
    result = bench.bench_dvc_noop(tmp_path, reps=2, dvc=dvc)
    assert result["seconds"] is None and "train@demo" in result["reason"]
    assert "repro" not in log.read_text(encoding="utf-8")  # never reproduces a changed pipeline


@pytest.mark.skipif(os.name != "posix", reason="the stand-in dvc is a POSIX shell script")
def test_dvc_noop_null_when_repro_runs_a_stage(bench: ModuleType, tmp_path: Path) -> None:
    dvc, _ = fake_dvc(tmp_path, "{}", "Running stage 'evaluate@demo':")
    result = bench.bench_dvc_noop(tmp_path, reps=1, dvc=dvc)
    assert result["seconds"] is None and "not a no-op" in result["reason"]


def test_dvc_noop_null_when_dvc_missing(bench: ModuleType, tmp_path: Path) -> None:
    result = bench.bench_dvc_noop(tmp_path, reps=1, dvc=tmp_path / "no-dvc")
    assert result["seconds"] is None and "not found" in result["reason"]


# --------------------------------------------------------------- determinism and seed spread
@pytest.mark.slow
def test_determinism_quick_run_pins_only_the_deterministic_variant(tmp_path: Path) -> None:
    out = tmp_path / "determinism.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.determinism", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(out.read_text())
    modes = {v: document["variants"][v]["runtime"]["mode"] for v in document["variants"]}
    assert modes == {"fast": "fast", "fast-1-thread": "fast", "deterministic": "deterministic"}
    assert document["variants"]["fast-1-thread"]["runtime"]["threads"] == 1
    ratios = document["slowdown"]["vs fast-1-thread"]
    from brainad.models.registry import MODEL_NAMES

    trained = {f"train {name}" for name in MODEL_NAMES}  # every registered model's step
    assert set(ratios) == trained | {"score vqgan", "score vqgan_prior"}
    assert all(r > 0 for r in ratios.values())
    assert "| train vqgan |" in proc.stdout


def test_seed_spread_sets_every_fit_seed_and_measures_sd() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        seeds = importlib.import_module("benchmarks.seeds")
    from brainad.config import load_study

    config = seeds.seeded(load_study("demo", REPO / "params.yaml"), 7, 0.25)
    fits = [config.vqgan.fit, config.dcgan.fit, config.dcgan.encoder_fit, config.vqgan_prior.fit]
    assert {f.seed for f in fits} == {7}
    assert [f.epochs for f in fits] == [5, 15, 8, 6]  # 20, 60, 30, 25 x 0.25, rounded
    assert seeds.flatten({"m": {"kind": "model", "real": {"roc_auc": 0.8, "x": None}}}) == {
        "m.real.roc_auc": 0.8
    }
    spread = seeds.spread({0: {"a": 0.70, "b": 1.0}, 1: {"a": 0.74}, 2: {"a": 0.72}})
    assert list(spread) == ["a"]  # only metrics every seed has
    assert spread["a"]["sd"] == pytest.approx(0.02)
    assert spread["a"]["beyond_noise_above"] == pytest.approx(1.96 * 2**0.5 * 0.02)
