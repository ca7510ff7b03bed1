"""The GPU check (``scripts/gpu_check.sh``, ``benchmarks/gpu_*.py``) on CPU: its arguments, the
no-CUDA exit and JSON, and the logic of its CUDA paths run where torch allows it (fp16 autocast
with the GradScaler through the library's loop, the scaler skipping a non-finite step, DDP over
gloo with the code NCCL runs). The real run on a GPU is ``bash scripts/gpu_check.sh OUTDIR``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
if str(REPO) not in sys.path:  # ``benchmarks`` is a top-level package of the repository
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_bench, gpu_check, gpu_ddp, gpu_micro, gpu_setup  # noqa: E402

CPU = torch.device("cpu")
BLOCKER = """import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"dvc", "dvclive", "nibabel", "pydicom"}:
            raise ImportError(f"{name} is blocked: the GPU check must not import it")
sys.meta_path.insert(0, _Blocked())
"""


def _env(**extra: str) -> dict[str, str]:
    paths = [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def _script(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=cwd,
        env=_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "missing OUTDIR"),
        (("--prepare",), "--prepare needs DIR"),
        (("--prepare", "a", "b"), "--prepare needs DIR"),
        (("--wheelhouse", "x"), "the first argument is OUTDIR or --prepare DIR"),
        (("out", "--wheelhouse"), "--wheelhouse needs DIR"),
        (("out", "--device", "cpu"), "the script checks CUDA"),
    ],
)
def test_script_usage_errors_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    done = _script(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "usage:" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_python_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in ([], [str(tmp_path), "--checks", "micro,bogus"], [str(tmp_path), "--nproc", "0"]):
        with pytest.raises(SystemExit) as info:
            gpu_check.parse_args(argv)
        assert info.value.code == 2
    args = gpu_check.parse_args([str(tmp_path), "--checks", "score,micro", "--models", "dae"])
    assert args.checks == ("score", "micro") and args.models == ("dae",) and args.device == "cuda"


# ------------------------------------------------------------------------------- no CUDA
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_script_without_cuda_exits_2_and_writes_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = _script("check", cwd=tmp_path)  # OUTDIR relative to the caller's folder
    assert done.returncode == 2, done.stdout + done.stderr
    first = done.stdout.splitlines()[:5]
    assert first[0] == "brainad GPU check"
    assert [line.split(":")[0].strip() for line in first[1:]] == [
        "device",
        "driver",
        "torch",
        "CUDA",
    ]
    assert "torch.cuda.is_available() is False" in first[1] and torch.__version__ in first[3]
    assert "CUDA is not available" in done.stdout  # the log, through tee into console.log
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["schema"] == "brainad-gpu-check/1" and doc["status"] == "no_cuda"
    assert doc["device"] == "cuda" and doc["failed"] == [] and "CUDA" in doc["message"]
    assert {c["status"] for c in doc["checks"].values()} == {"skipped"}
    assert set(doc["checks"]) == set(gpu_check.CHECKS)
    env = doc["environment"]
    assert env["cuda_available"] is False and env["torch"] == torch.__version__
    assert env["torch_cuda"] == torch.version.cuda and env["devices"] == []
    assert env["brainad"] == str(REPO / "src" / "brainad")  # the working tree, not an install
    assert "CUDA is not available" in (out / "gpu_check.log").read_text()
    assert (out / "console.log").read_text().startswith("brainad GPU check")


def test_facts_name_device_driver_torch_and_cuda() -> None:
    env = {
        "devices": [{"name": "NVIDIA H100", "capability": "9.0", "memory_gib": 79.2}],
        "nvidia_smi": {"driver_version": "570.1", "driver_cuda_version": "12.8"},
        "torch": "2.11.0",
        "python": "3.12.1",
        "torch_cuda": "13.0",
        "cudnn": 91000,
        "nccl": "2.27.3",
    }
    text = gpu_check.facts(env)
    assert "NVIDIA H100 (1 visible, capability 9.0, 79.2 GiB)" in text
    assert "570.1 (supports CUDA 12.8)" in text and "2.11.0" in text and "NCCL 2.27.3" in text


def test_json_keeps_non_finite_numbers_visible() -> None:
    assert gpu_check.jsonable({"a": [float("nan"), 1.0], "b": {"c": float("inf")}}) == {
        "a": ["nan", 1.0],
        "b": {"c": "inf"},
    }


def test_report_names_failed_and_unfinished_checks(tmp_path: Path) -> None:
    report = gpu_check.Report(tmp_path / "r.json", "cuda", {}, ("micro", "score", "ddp"))

    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access")

    report.run("micro", lambda: {"failures": ["vqgan/fp16: losses {}"], "rows": []})
    report.run("score", broken)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["status"] == "running" and doc["checks"]["ddp"]["status"] == "pending"
    assert report.finish() == ["micro", "score"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["status"] == "failed" and doc["checks"]["micro"]["error"] == "vqgan/fp16: losses {}"
    assert doc["checks"]["score"]["error"].startswith("RuntimeError: CUDA error")
    assert doc["checks"]["benchmark"]["status"] == "not_selected"
    stopped = gpu_check.Report(tmp_path / "s.json", "cuda", {}, ("micro",))
    assert stopped.finish() == [] and stopped.doc["status"] == "interrupted"


# --------------------------------------------------------------------- CUDA paths, on CPU
def test_micro_study_fp16_scaler_and_json_on_cpu(tmp_path: Path, one_thread: None) -> None:
    """The micro study's fp16 row goes through fit with the GradScaler; the scaler check skips the
    poisoned generator step in fp16 and (recorded, not a failure) applies it in bf16."""
    argv = [str(tmp_path), "--device", "cpu", "--checks", "micro,scaler", "--models", "dae"]
    assert gpu_check.main([*argv, "--precisions", "fp16"]) == 0
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["status"] == "passed" and doc["device"] == "cpu" and doc["failed"] == []
    assert doc["checks"]["ddp"]["status"] == "not_selected"
    micro = doc["checks"]["micro"]
    assert micro["status"] == "ok" and micro["error"] is None
    (row,) = micro["rows"]
    assert row["model"] == "dae" and row["trained_precision"] == "fp16"
    assert 0 < row["grad_scaler_scale"] <= gpu_micro.INITIAL_SCALE  # the scaler ran
    assert 0 <= row["steps_skipped_by_scaler"] < gpu_micro.STEPS  # some steps trained
    assert row["devices"] == ["cpu"] and row["steps_per_phase"] == gpu_micro.STEPS
    assert row["score"]["scores_finite"] and row["score"]["images"] == 16
    scaler = doc["checks"]["scaler"]
    assert scaler["status"] == "ok" and scaler["model"] == "dae"
    assert scaler["fp16"]["generator_step_skipped"] and scaler["fp16"]["next_step_applied"]
    assert scaler["fp16"]["weights_finite_after"]
    assert scaler["fp16"]["discriminator_step_applied"] is None  # the DAE has none
    # The loop skips non-finite steps only through the fp16 GradScaler: without it (bf16) the
    # inf gradient reaches the weights, and fit stops at the epoch's end (TrainingDiverged).
    assert scaler["bf16_no_scaler"]["generator_step_skipped"] is False
    assert scaler["bf16_no_scaler"]["weights_finite"] is False
    assert "check micro: ok" in (tmp_path / "gpu_check.log").read_text()


def test_scaler_skip_with_a_discriminator_and_a_failing_row(one_thread: None) -> None:
    """The DCGAN's first fp16 steps overflow at the scaler's initial 2^16 and are skipped: the
    check waits for a clean step that updates both networks before it poisons one."""
    result = gpu_micro.poisoned_step("dcgan", CPU, "fp16")
    assert result["clean_steps_to_update"] > 1
    assert result["generator_step_skipped"] and result["discriminator_step_applied"]
    assert result["weights_finite"] and result["next_step_applied"]
    row = {
        "model": "dcgan",
        "precision": "fp16",
        "trained_precision": "fp32",
        "grad_scaler_scale": None,
        "devices": ["cpu", "cuda"],
        "samples_written": 0,
        "last_epoch": {"g_loss": float("nan")},
    }
    wrong = " ".join(gpu_micro.training_failures(row, torch.device("cuda")))
    for part in ("trained in fp32", "GradScaler", "not only cuda", "losses", "no sample grid"):
        assert part in wrong


@pytest.mark.slow
def test_check_imports_no_dvc_dvclive_nibabel_pydicom_and_scores(tmp_path: Path) -> None:
    """micro + ``brainad score`` (a subprocess) with those four modules made unimportable: the
    GPU machines lack them, so the wheelhouse need not carry them for the check."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        str(out),
        "--device",
        "cpu",
        "--checks",
        "micro,score",
        "--models",
        "dae",
        "--precisions",
        "fp16",
    ]
    env = _env(OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["optional_modules_imported"] == []
    score = doc["checks"]["score"]
    assert score["status"] == "ok" and score["model"] == "dae" and score["scored"] == 8
    assert score["source_model"].endswith("final.pt") and score["heatmaps"] == 8
    assert "--device cpu" in score["command"]


# ------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_over_gloo_runs_the_code_nccl_runs(tmp_path: Path, nproc: int) -> None:
    """``torchrun`` of the check's worker: 2 ranks train identical replicas in a gloo group; 1 rank
    (one GPU) trains alone and runs the library's collectives in a world of 1."""
    result = gpu_ddp.run_ddp(tmp_path / "out", tmp_path / "work", "cpu", nproc, ["fp16"], "dae")
    assert result["exit_code"] == 0 and result["failures"] == [], result
    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == list(range(nproc))
    assert len({r["runs"]["fp16"]["weights"] for r in ranks}) == 1
    if nproc == 2:
        assert {r["backend"] for r in ranks} == {"gloo"} and {r["world"] for r in ranks} == {2}
    else:
        assert ranks[0]["collectives"] == {"backend": "gloo", "world": 1, "ok": True}


def test_compare_ranks_names_what_differs() -> None:
    run = {"devices": ["cuda"], "losses_finite": True, "weights": "a"}
    reports = [
        {"rank": 0, "world": 2, "backend": "nccl", "runs": {"fp16": run}},
        {"rank": 1, "world": 2, "backend": "gloo", "runs": {"fp16": {**run, "weights": "b"}}},
    ]
    assert gpu_ddp.compare_ranks(reports[:1] * 2, "cuda", 2) == []
    wrong = gpu_ddp.compare_ranks(reports, "cuda", 2)
    assert any("rank 1: backend gloo, expected nccl" in w for w in wrong)
    assert any("weights differ" in w for w in wrong)
    assert any("3 process" in w for w in gpu_ddp.compare_ranks(reports, "cuda", 3))


# ------------------------------------------------------------------------------- benchmark
def _benchmark_doc(device: str, precisions: list[str]) -> dict:
    rows = [
        {
            "model": m,
            "device": device,
            "precision": p,
            "batch_size": 4,
            "images_per_s": 10.0,
            "step_seconds_median": 0.4,
            "ratio_to_matmul": 0.5,
        }
        for m in gpu_bench.MODEL_NAMES
        for p in precisions
    ]
    scoring = {"evaluate": {"device": device, "precision": "fp32", "images_per_s": 100.0}}
    matmul = [{"device": device, "precision": "fp32", "flops_per_s": 2e12}]
    return {
        "machine": {"cpu_bf16_supported": False},
        "training": rows,
        "scoring": scoring,
        "matmul": matmul,
    }


def test_benchmark_summary_wants_every_row_on_the_device() -> None:
    good = gpu_bench.benchmark_summary(_benchmark_doc("cpu", ["fp32"]), "cpu")
    assert good["failures"] == [] and len(good["training"]) == len(gpu_bench.MODEL_NAMES)
    assert good["matmul_tflops"] == {"fp32": 2.0}
    doc = _benchmark_doc("cpu", ["fp32"])
    doc["training"] = doc["training"][1:]
    doc["training"][0]["images_per_s"] = float("nan")
    doc["scoring"]["cli"] = {"device": "cuda", "images_per_s": 5.0}
    wrong = " | ".join(gpu_bench.benchmark_summary(doc, "cpu")["failures"])
    assert f"missing: {gpu_bench.MODEL_NAMES[0]} in fp32" in wrong
    assert "images/s nan" in wrong and "scoring.cli ran on cuda" in wrong
    assert "no training rows on cuda" in gpu_bench.benchmark_summary(doc, "cuda")["failures"]


# ------------------------------------------------------------------------------ wheelhouse
def _wheel(folder: Path, name: str, tag: str = "py3-none-any") -> Path:
    """A minimal wheel of a package ``name`` with ``VALUE = 1``."""
    path = folder / f"{name}-1.0-{tag}.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        archive.writestr(
            f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_prepare_checks_wheels_size_and_writes_a_manifest(tmp_path, monkeypatch) -> None:
    calls = []

    def fake_pip(command):
        calls.append(command)
        _wheel(Path(command[command.index("--dest") + 1]), "fakepkg")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(gpu_setup, "_run", fake_pip)
    manifest = gpu_setup.prepare(tmp_path / "wh", python="py")
    assert calls[0][:4] == ["py", "-m", "pip", "download"] and "--no-deps" in calls[0]
    assert "torch" not in calls[0] and "nibabel>=5.0" in calls[0]
    assert [f["file"] for f in manifest["files"]] == ["fakepkg-1.0-py3-none-any.whl"]
    assert json.loads((tmp_path / "wh" / gpu_setup.MANIFEST).read_text()) == manifest
    with pytest.raises(gpu_setup.SetupError, match="over 0"):
        gpu_setup.prepare(tmp_path / "small", python="py", max_mib=0)
    _wheel(tmp_path / "wh", "native", "cp311-cp311-linux_x86_64")
    with pytest.raises(gpu_setup.SetupError, match="not pure-Python"):
        gpu_setup.prepare(tmp_path / "wh", python="py")


def test_install_without_a_wheelhouse_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(gpu_setup.SetupError, match="--prepare"):
        gpu_setup.install(tmp_path, tmp_path / "venv")
    assert not (tmp_path / "venv").exists()


@pytest.mark.slow
def test_install_makes_a_venv_that_sees_the_system_packages(tmp_path, monkeypatch) -> None:
    wheelhouse = tmp_path / "wh"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "gpucheckfake")
    (wheelhouse / gpu_setup.MANIFEST).write_text("{}")
    monkeypatch.setattr(gpu_setup, "PACKAGES", ("gpucheckfake",))
    python = gpu_setup.install(wheelhouse, tmp_path / "venv")
    assert python == tmp_path / "venv" / "bin" / "python"
    config = (tmp_path / "venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config  # torch is the system's, never copied
    _wheel(wheelhouse, "gpucheckunpacked")  # the no-pip path: unpacked into site-packages
    gpu_setup._unpack_wheels(wheelhouse, python)
    done = subprocess.run([str(python), "-c", "import gpucheckfake, gpucheckunpacked"], timeout=60)
    assert done.returncode == 0


def test_setup_check_names_what_does_not_import(monkeypatch, capsys) -> None:
    assert gpu_setup.check() == 0 and capsys.readouterr().err == ""
    monkeypatch.setattr(gpu_setup, "REQUIRED", ("torch", "no_such_module_here"))
    assert gpu_setup.check() == gpu_setup.SETUP_FAILED
    assert "no_such_module_here" in capsys.readouterr().err
