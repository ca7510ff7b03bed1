"""scripts/bound_power.py: how wide the evaluate stage's interval is at given class counts."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bound_power", ROOT / "scripts" / "bound_power.py")
bound_power = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bound_power)


def test_lower_bound_tightens_with_more_healthy_scans():
    few = bound_power.lower_bounds(0.90, 217, 21, replicates=8, resamples=200, ci=0.95, seed=0)
    many = bound_power.lower_bounds(0.90, 217, 2000, replicates=8, resamples=200, ci=0.95, seed=0)
    # with 2,000 healthy scans the bound sits close under the truth; with 21 it is far below
    assert 0.84 < np.median(many) < 0.90
    assert np.median(few) < np.median(many) - 0.03


def test_bad_true_auc_is_named():
    with pytest.raises(ValueError, match="true ROC-AUC"):
        bound_power.lower_bounds(1.0, 10, 10, replicates=1, resamples=10, ci=0.95, seed=0)


def test_main_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bound.json"
    counts = ["--positives", "30", "--negatives", "30", "--bar", "0.7", "--study", "demo"]
    bound_power.main([*counts, "--grid", "0.6", "0.95", "--replicates", "4", "--out", str(out)])
    table = json.loads(out.read_text())
    assert [r["true_auc"] for r in table["rows"]] == [0.6, 0.95]
    low, high = table["rows"]
    assert low["power"] == 0.0 and high["power"] == 1.0  # far below and far above the bar
    assert "lower bound > bar" in capsys.readouterr().out
