"""``brainad compare`` and the CI metric gate, on a tiny git + DVC repository in tmp_path with the
real dvc.yaml and params.yaml (the ``demo`` study is deterministic, ``brain-tumor-mri`` is not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainad.cli import main as cli_main
from brainad.evaluation.compare import compare, study_metric_files, to_markdown

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"vqgan": {"kind": "model", "real": {"roc_auc": 0.8, "f1": 0.6}, "threshold": 1.5}}
CI = {"roc_auc": {"low": 0.75, "high": 0.85, "value": 0.8}, "f1": {"low": 0.5, "high": 0.7}}
EVALUATION = {"methods": {"vqgan": {"real": {"ci": CI}}}}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
        capture_output=True,
    )  # fmt: skip


def _write(repo: Path, study: str, metrics: dict, evaluation: dict = EVALUATION) -> Path:
    folder = repo / "reports" / study / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    return folder / "metrics.json"


def _changed(path: Path, **real: float) -> None:
    metrics = json.loads(path.read_text())
    metrics["vqgan"]["real"].update(real)
    path.write_text(json.dumps(metrics))


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    _git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    for study in ("demo", "brain-tumor-mri"):
        _write(tmp_path, study, METRICS)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "results")
    return tmp_path


def _verdicts(result: dict) -> dict[str, str]:
    return {row["metric"]: row["verdict"] for row in result["rows"]}


def test_metric_files_of_a_study_come_from_dvc_yaml() -> None:
    assert study_metric_files(ROOT, "demo") == ["reports/demo/evaluate/metrics.json"]
    assert study_metric_files(ROOT, "brats") == ["reports/brats/voxels/metrics.json"]


def test_unchanged_workspace_passes_the_check(repo: Path, capsys) -> None:
    assert cli_main(["compare", "HEAD", "--study", "demo", "--check", "--root", str(repo)]) == 0
    assert "Every metric is unchanged" in capsys.readouterr().out


def test_deterministic_study_fails_on_any_change_even_within_noise(repo: Path) -> None:
    """The gate of CI: a commit that changed a result without committing it fails."""
    _changed(repo / "reports/demo/evaluate/metrics.json", roc_auc=0.8001)
    out = repo / "diff.json"
    code = cli_main(
        ["compare", "--study", "demo", "--check", "--root", str(repo), "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 1 and result["failed"] and result["deterministic"]
    assert _verdicts(result)["vqgan.real.roc_auc"] == "within noise"
    assert _verdicts(result)["vqgan.real.f1"] == "unchanged"
    assert {"unchanged": 3, "within noise": 1} == result["counts"]  # kind, f1, threshold


def test_fast_study_fails_only_beyond_the_bootstrap_interval(repo: Path) -> None:
    path = repo / "reports/brain-tumor-mri/evaluate/metrics.json"
    _changed(path, roc_auc=0.84)
    within = compare(repo, "HEAD", None, "brain-tumor-mri")
    assert not within["deterministic"] and not within["failed"]
    assert _verdicts(within)["vqgan.real.roc_auc"] == "within noise"
    _changed(path, roc_auc=0.9)
    beyond = compare(repo, "HEAD", None, "brain-tumor-mri")
    assert beyond["failed"] and _verdicts(beyond)["vqgan.real.roc_auc"] == "beyond noise"
    row = next(r for r in beyond["rows"] if r["metric"] == "vqgan.real.roc_auc")
    assert row["noise_source"] == "bootstrap CI" and row["noise"] == pytest.approx(0.05)
    assert row["diff"] == pytest.approx(0.1)
    line = "| vqgan.real.roc_auc | 0.8 | 0.9 | +0.1 | [0.75, 0.85] | 0.05 | bootstrap CI |"
    assert f"{line} **beyond noise** |" in to_markdown(beyond)


def test_seed_spread_is_the_noise_scale_where_measured(repo: Path) -> None:
    path = repo / "reports/brain-tumor-mri/evaluate/metrics.json"
    spread = repo / "reports/brain-tumor-mri/seeds/spread.json"
    spread.parent.mkdir(parents=True)
    values = [0.78, 0.8, 0.82]
    metrics = {"vqgan.real.roc_auc": {"sd": 0.02, "values": values}, "vqgan.real.f1": {"sd": 0.0}}
    spread.write_text(json.dumps({"seeds": [0, 1, 2], "metrics": metrics}))
    _changed(path, roc_auc=0.84)  # 0.04 <= 1.96 * sqrt(2) * 0.02 = 0.0554: within seed noise
    result = compare(repo, "HEAD", None, "brain-tumor-mri")
    row = next(r for r in result["rows"] if r["metric"] == "vqgan.real.roc_auc")
    assert row["noise_source"] == "seeds (3)" and row["noise"] == pytest.approx(0.05544, abs=1e-4)
    assert row["verdict"] == "within noise"
    _changed(path, roc_auc=0.86)  # inside no longer: 0.06 > 0.0554
    result = compare(repo, "HEAD", None, "brain-tumor-mri")
    assert _verdicts(result)["vqgan.real.roc_auc"] == "beyond noise"
    assert "3 training seeds" in to_markdown(result)
    _changed(path, f1=0.65)  # sd 0 over seeds is no noise estimate: the bootstrap CI decides
    row = next(
        r
        for r in compare(repo, "HEAD", None, "brain-tumor-mri")["rows"]
        if r["metric"] == "vqgan.real.f1"
    )
    assert (row["noise_source"], row["verdict"]) == ("bootstrap CI", "within noise")


def test_two_commits_and_added_or_removed_metrics(repo: Path) -> None:
    path = repo / "reports/brain-tumor-mri/evaluate/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["vqgan"]["real"]["recall"] = 0.5
    del metrics["vqgan"]["threshold"]
    path.write_text(json.dumps(metrics))
    _git(repo, "commit", "-q", "-am", "new metric")
    result = compare(repo, "HEAD~1", "HEAD", "brain-tumor-mri")
    assert result["b_rev"] == "HEAD" and result["failed"]
    assert _verdicts(result)["vqgan.real.recall"] == "added"
    assert _verdicts(result)["vqgan.threshold"] == "removed"


def test_cli_registers_compare_and_reports_errors(repo: Path, capsys) -> None:
    assert cli_main(["compare", "--study", "demo", "--root", str(repo)]) == 0
    assert "## Metrics: study `demo`" in capsys.readouterr().out
    assert cli_main(["compare", "no-such-rev", "--study", "demo", "--root", str(repo)]) == 2


def test_ci_gate_script_fails_on_a_deliberately_changed_metric(repo: Path) -> None:
    """scripts/metrics_gate.sh (what .ci/run runs after the demo): exit 0 on the committed
    metrics, exit 1 once one metric is changed, with the table printed and left in ci-artifacts/."""
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
    }

    def gate() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/metrics_gate.sh", "demo"], cwd=repo, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip

    passed = gate()
    assert passed.returncode == 0, passed.stderr[-2000:]
    _changed(repo / "reports/demo/evaluate/metrics.json", f1=0.61)
    failed = gate()
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "| vqgan.real.f1 | 0.6 | 0.61 |" in failed.stdout
    table = (repo / "ci-artifacts/demo/metrics-diff.md").read_text()
    assert "— FAIL" in table and "vqgan.real.f1" in table
    assert json.loads((repo / "ci-artifacts/demo/metrics-diff.json").read_text())["failed"]
