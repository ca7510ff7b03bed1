"""Deterministic mode (brainad.runtime): which studies, what is pinned, the record of it, and the
proof on one machine — weights trained under two different ISA caps are byte-identical when pinned
(and differ when not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainad import runtime
from brainad.config import load_study

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "isa_probe.py"
# An older CPU, as far as one machine can emulate it: oneDNN at SSE4.1, ATen without AVX2, MKL
# and glibc's libm without AVX/AVX2/FMA. The first two change unpinned weights; pinned mode never
# uses their dispatched paths (it sets both itself), the last two survive pinning.
OLD_CPU_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX",
}


def test_a_study_is_deterministic_when_every_fit_section_is() -> None:
    assert runtime.study_deterministic(load_study("demo", ROOT / "params.yaml"))
    assert not runtime.study_deterministic(load_study("brain-tumor-mri", ROOT / "params.yaml"))


def test_pinned_environment_is_baseline_and_single_threaded() -> None:
    env = runtime.deterministic_environment()
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(runtime.THREADS) == "2"
    assert env["MKL_DYNAMIC"] == env["OMP_DYNAMIC"] == "FALSE"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    flags = set(runtime.cpu_info()["flags"])
    wanted = {n for f, n in runtime._OPENCV_DISPATCH.items() if f in flags}
    assert set(filter(None, env["OPENCV_CPU_DISABLE"].split(","))) == wanted


def test_prepare_process_sets_the_environment_and_warns_when_torch_is_loaded(
    monkeypatch, caplog
) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in runtime.ENVIRONMENT}
    monkeypatch.setattr(os, "environ", environ)
    assert runtime.prepare_process(False, restart=False) is False
    assert "ATEN_CPU_CAPABILITY" not in environ  # fast mode touches nothing
    assert runtime.prepare_process(True, restart=False) is False  # torch is loaded: not pinned
    assert "reproducible on this machine only" in caplog.text
    assert environ["MKL_CBWR"] == "COMPATIBLE"
    assert runtime.prepare_process(True, restart=False) is True  # already in place: nothing to do


def test_a_stage_restarts_itself_when_numpy_was_loaded_first(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(
        "import os, sys\nimport numpy\nfrom brainad import runtime\n"
        "print(os.getpid(), runtime.prepare_process(True, restart=True),"
        " runtime.environment_pinned(), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in runtime.ENVIRONMENT}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[1:] == ["True", "True"]  # the re-executed process is pinned


def test_deterministic_kernels_turn_onednn_and_nnpack_off_and_restore() -> None:
    before = (torch.backends.mkldnn.enabled, torch.get_num_threads())
    with runtime.deterministic_kernels(True):
        assert not torch.backends.mkldnn.enabled and not torch._C._get_nnpack_enabled()
        assert torch.get_num_threads() == runtime.THREADS
    assert (torch.backends.mkldnn.enabled, torch.get_num_threads()) == before
    with runtime.deterministic_kernels(False):
        assert torch.backends.mkldnn.enabled == before[0]


def test_describe_records_cpu_kernels_threads_and_versions() -> None:
    with runtime.deterministic_kernels(True):
        record = runtime.describe(True)
    assert record["mode"] == "same-machine"  # pytest did not pin its environment
    assert (
        record["cpu_model"]
        and record["threads"] == runtime.THREADS
        and not record["onednn"]["enabled"]
    )
    assert record["versions"]["torch"] == str(torch.__version__) and record["onednn"]["version"]
    assert runtime.describe(False)["mode"] == "fast"
    json.dumps(record)  # checkpoint extras and evaluation.json hold it


def _probe(tmp_path: Path, name: str, pinned: bool, caps: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in runtime.deterministic_environment()}
    env.update(caps, PYTHONPATH=str(ROOT / "src"))
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(PROBE), "--out", str(out), "--images", "16", "--epochs", "1"]
    proc = subprocess.run(
        [*command, *(["--pinned"] if pinned else [])], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_pinned_training_gives_identical_weights_under_different_isa_caps(tmp_path: Path) -> None:
    """The one-machine proof of cross-CPU determinism: the demo models trained (and scored) in
    two processes whose ISA caps differ. Unpinned, the caps change the weights (the check has
    power); pinned, weights and scores are byte-identical and provenance says so."""
    if "avx2" not in runtime.cpu_info()["flags"]:
        pytest.skip("needs a CPU above the emulated one (AVX2)")
    free = [_probe(tmp_path, f"free{i}", False, caps) for i, caps in enumerate(({}, OLD_CPU_CAPS))]
    assert free[0]["weights"] != free[1]["weights"]
    pinned = [_probe(tmp_path, f"pin{i}", True, caps) for i, caps in enumerate(({}, OLD_CPU_CAPS))]
    assert pinned[0]["weights"] == pinned[1]["weights"]
    assert set(pinned[0]["weights"]) == {"vqgan", "vqgan_prior", "dcgan"}
    assert pinned[0]["scores"] == pinned[1]["scores"] is not None
    for run in pinned:
        assert run["runtime"]["mode"] == "deterministic"
        assert (
            run["runtime"]["aten_cpu_capability"] == "DEFAULT"
            and run["runtime"]["threads"] == runtime.THREADS
        )


def test_checkpoints_record_the_runtime_and_a_weights_checksum(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    from toy_gan import ToyGAN, toy_config, toy_data

    from brainad.models.checkpoint import load_checkpoint
    from brainad.training.fingerprint import state_checksum
    from brainad.training.loop import FitPaths, fit

    torch.manual_seed(0)
    module = ToyGAN()
    paths = FitPaths(tmp_path / "c", tmp_path / "f.pt", tmp_path / "b.pt", tmp_path / "s", None)
    fit(module, toy_data(n=8), toy_config(epochs=1), paths, device=torch.device("cpu"))
    extra = load_checkpoint(tmp_path / "f.pt")["extra"]
    assert extra["weights"] == state_checksum(module)
    assert extra["runtime"]["mode"] == "same-machine" and not extra["runtime"]["onednn"]["enabled"]
    fast = toy_config(epochs=1, deterministic=False)
    fit(
        ToyGAN(),
        toy_data(n=8),
        fast,
        paths._replace(checkpoint_dir=tmp_path / "c2"),
        device=torch.device("cpu"),
    )
    assert load_checkpoint(tmp_path / "f.pt")["extra"]["runtime"]["mode"] == "fast"
