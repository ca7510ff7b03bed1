"""``brainad score`` as a new user meets it: checks before any work (one line, exit 2, no
traceback), per-file quarantine with the batch scored around it, exit status, names the user
gave, duplicates, ``--resume`` (also after a kill), ``--maps``, batching and incremental writes.

Each test names the issue-17 item it covers. Tests run the command in this process (``main``),
except the permission test (a subprocess without the capability to bypass file permissions) and
the kill test (a subprocess killed mid-run).
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scorer_bundle import encode, phantom_slices, write_bundle, write_scans

from brainad.cli import main
from brainad.cli import score as score_cli
from brainad.models.checkpoint import load_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks and permissions")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "vqgan.pt")


def score(bundle: Path, *inputs: object, out: Path, extra: tuple[str, ...] = ()) -> int:
    """Run ``brainad score`` in this process; returns the exit status."""
    args = ["score", "--model", str(bundle), *map(str, inputs), "--out", str(out)]
    return main([*args, "--maps", "none", *extra])


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def errors(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def assert_refused(code: int, caplog: pytest.LogCaptureFixture, capsys, *words: str) -> None:
    """Exit 2, an error line containing every word, no traceback anywhere."""
    assert code == 2
    text = errors(caplog)
    for word in words:
        assert word in text, (word, text)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert all(r.exc_info is None for r in caplog.records)


# ------------------------------------------------------------------ item 1: unreadable files
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def _without_permission_bypass() -> None:
    """preexec_fn: drop the capabilities that let root ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_unprivileged(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that file permissions apply to (root: capabilities dropped)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    preexec = _without_permission_bypass if os.geteuid() == 0 else None
    command = [sys.executable, "-m", "brainad.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, preexec_fn=preexec, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def locked(tmp_path: Path) -> Path:
    """``scans/`` with 3 readable scans, an unreadable one and an unreadable subfolder."""
    write_scans(tmp_path / "scans", 3)
    (tmp_path / "scans" / "locked.png").write_bytes(encode(phantom_slices(1, seed=5)[0]))
    private = tmp_path / "scans" / "private"
    write_scans(private, 1, seed=6)
    (tmp_path / "scans" / "locked.png").chmod(0)
    private.chmod(0)
    probe = [sys.executable, "-c", f"open({str(tmp_path / 'scans' / 'locked.png')!r}).read()"]
    check = run_unprivileged(["--help"], tmp_path)
    if check.returncode != 0:
        pytest.skip(f"cannot run the CLI without permission bypass here: {check.stderr[-300:]}")
    preexec = _without_permission_bypass if os.geteuid() == 0 else None
    if subprocess.run(probe, preexec_fn=preexec, capture_output=True).returncode == 0:
        pytest.skip("file permissions cannot be enforced here (root with CAP_DAC_OVERRIDE)")
    yield tmp_path
    private.chmod(0o755)


@posix_only
@pytest.mark.slow
def test_unreadable_file_and_folder_are_quarantined_and_the_rest_scored(
    bundle: Path, locked: Path
) -> None:
    """Item 1 (and 2: a read-only --out, an unreadable model), with permissions enforced."""
    args = ["score", "--model", str(bundle), "scans", "--out", "out", "--maps", "none"]
    proc = run_unprivileged(args, locked)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    table = {r["path"]: r for r in rows(locked / "out")}
    assert [p for p, r in table.items() if r["status"] == "scored"] == [
        f"scans/scan_{i:03d}.png" for i in range(3)
    ]
    assert "cannot be read (Permission denied)" in table["scans/locked.png"]["reason"]
    assert "folder cannot be read (Permission denied)" in table["scans/private"]["reason"]
    readonly = locked / "readonly"
    readonly.mkdir(mode=0o555)
    proc = run_unprivileged([*args[:4], "--out", "readonly/results"], locked)
    assert proc.returncode == 2 and "no permission to write in" in proc.stderr
    assert "Traceback" not in proc.stderr and not (readonly / "results").exists()
    (locked / "model.pt").write_bytes(bundle.read_bytes())
    (locked / "model.pt").chmod(0)
    proc = run_unprivileged(["score", "--model", "model.pt", "scans", "--out", "o2"], locked)
    assert proc.returncode == 2 and "--model model.pt: cannot be read" in proc.stderr


# ------------------------------------------------------------------------ item 2: bad --out
def test_out_naming_a_file_is_refused_before_any_work(
    bundle: Path, tmp_path: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scans(tmp_path / "scans", 2)
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(score_cli, "load_engine", _must_not_run)
    code = score(bundle, tmp_path / "scans", out=tmp_path / "taken")
    assert_refused(code, caplog, capsys, "taken: is a file", "--out")
    assert (tmp_path / "taken").read_text() == "a file"


def _must_not_run(*_: object) -> None:
    raise AssertionError("the model was loaded although a check had failed")


def test_out_below_a_file_and_a_foreign_folder_are_refused(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    write_scans(tmp_path / "scans", 1)
    (tmp_path / "file").write_text("x")
    code = score(bundle, tmp_path / "scans", out=tmp_path / "file" / "sub")
    assert_refused(code, caplog, capsys, "cannot be created", "is a file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    caplog.clear()
    code = score(bundle, tmp_path / "scans", out=tmp_path / "mine")
    assert_refused(code, caplog, capsys, "not empty", "choose a new or empty folder")
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "precious"


# ---------------------------------------------------------------------- item 3: bad --device
@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("bogus", "not a device name"),
        ("cuda:x", "not a device name"),
        ("meta", "brainad scores on cpu, cuda or mps"),
        pytest.param(
            "cuda",
            "no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_device_is_one_line_and_exit_2(
    bundle: Path, tmp_path: Path, caplog, capsys, device: str, words: str
) -> None:
    write_scans(tmp_path / "scans", 1)
    code = score(bundle, tmp_path / "scans", out=tmp_path / "out", extra=("--device", device))
    assert_refused(code, caplog, capsys, f"--device {device}", words)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(bundle: Path, tmp_path: Path, caplog) -> None:
    write_scans(tmp_path / "scans", 1)
    args = ["score", "--model", str(bundle), str(tmp_path / "scans"), "--device", "bogus"]
    assert main(["--debug", *args]) == 2
    assert any(r.exc_info for r in caplog.records)
    caplog.clear()
    assert main([*args, "--debug"]) == 2
    assert any(r.exc_info for r in caplog.records)


def test_unexpected_error_is_one_line_unless_debug(
    bundle: Path, tmp_path: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scans(tmp_path / "scans", 1)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(score_cli, "collect", broken)
    code = score(bundle, tmp_path / "scans", out=tmp_path / "out")
    assert_refused(code, caplog, capsys, "something nobody foresaw", "re-run with --debug")


# ---------------------------------------------------------------- item 4: its own output
def test_out_inside_an_input_and_input_inside_out_are_refused(
    bundle: Path, tmp_path: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scans(tmp_path / "scans", 2)
    monkeypatch.chdir(tmp_path)
    code = score(bundle, "scans", out=Path("scans/results"))
    assert_refused(code, caplog, capsys, "inside the input folder scans")
    assert score(bundle, "scans", out=Path("results"), extra=("--maps", "all")) == 0
    caplog.clear()
    code = score(bundle, "scans", "results/heatmaps", out=Path("results"), extra=("--resume",))
    assert_refused(code, caplog, capsys, "input results/heatmaps: is inside --out results")


def test_out_reached_through_a_symlink_in_an_input_is_never_scored(
    bundle: Path, tmp_path: Path
) -> None:
    write_scans(tmp_path / "scans", 3)
    out = tmp_path / "results"
    assert score(bundle, tmp_path / "scans", out=out, extra=("--maps", "all")) == 0
    os.symlink(out, tmp_path / "scans" / "results_link")
    assert score(bundle, tmp_path / "scans", out=out, extra=("--overwrite", "--maps", "all")) == 0
    assert len(rows(out)) == 3 and all("heatmaps" not in r["path"] for r in rows(out))


def test_reusing_out_needs_resume_or_overwrite_and_overwrite_leaves_no_stale_maps(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    write_scans(tmp_path / "many", 5)
    write_scans(tmp_path / "few", 2, seed=9)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "many", out=out, extra=("--maps", "all")) == 0
    code = score(bundle, tmp_path / "few", out=out, extra=("--maps", "all"))
    assert_refused(code, caplog, capsys, "already holds results", "--resume", "--overwrite")
    assert len(rows(out)) == 5
    assert score(bundle, tmp_path / "few", out=out, extra=("--maps", "all", "--overwrite")) == 0
    assert len(rows(out)) == 2
    assert len(list((out / "heatmaps").glob("*.png"))) == 2


# ---------------------------------------------------------------------- item 5: exit status
def test_exit_status_says_what_happened(bundle: Path, tmp_path: Path, caplog) -> None:
    good = write_scans(tmp_path / "good", 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_text("not an image")
    assert score(bundle, *good, out=tmp_path / "o0") == 0
    assert score(bundle, good[0], bad, out=tmp_path / "o1") == 1
    assert score(bundle, bad, out=tmp_path / "o2") == 2
    assert {r["status"] for r in rows(tmp_path / "o2")} == {"quarantined"}
    assert "no file could be scored" in errors(caplog)
    assert "scored 0 files" in caplog.text


# ----------------------------------------------------------------------- item 6: bad models
def _garbage_pickle(bundle: Path, path: Path, seed: int) -> Path:
    """The bundle with random bytes instead of its pickle (``seed`` varies the failure)."""
    garbage = np.random.default_rng(seed).bytes(64)
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, garbage if name.endswith("data.pkl") else src.read(name))
    return path


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/brainad-test-model-pickle-ran")


def _models(bundle: Path, folder: Path) -> dict[str, tuple[Path, list[str]]]:
    folder.mkdir()
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(bundle.read_bytes()[:3000])
    torch.save({"weights": _Evil()}, folder / "evil.pt")
    model, _ = load_model(bundle)  # saved again as a training checkpoint: not a scorer bundle
    save_checkpoint(folder / "training.pt", model, epoch=1, extra={"format": "other"})
    corrupt = ["not a brainad scorer bundle", "corrupt"]
    return {
        "random": (folder / "random.pt", corrupt),
        "empty": (folder / "empty.pt", ["empty file"]),
        "truncated": (folder / "truncated.pt", corrupt),
        **{
            f"garbage{seed}": (_garbage_pickle(bundle, folder / f"g{seed}.pt", seed), ["corrupt"])
            for seed in range(6)
        },
        "evil": (folder / "evil.pt", ["would execute code", "GLOBAL", "do not use this file"]),
        "training": (folder / "training.pt", ["not a scorer bundle"]),
        "missing": (folder / "missing.pt", ["no such file"]),
        "folder": (folder, ["is a folder"]),
    }


def test_bad_model_files_are_named_for_what_they_are(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    write_scans(tmp_path / "scans", 1)
    MARKER.unlink(missing_ok=True)
    for name, (path, words) in _models(bundle, tmp_path / "models").items():
        caplog.clear()
        code = score(path, tmp_path / "scans", out=tmp_path / f"out-{name}")
        assert_refused(code, caplog, capsys, f"--model {path}", *words)
        text = errors(caplog)
        assert "weights_only" not in text and "Weights only" not in text, (name, text)
        if name != "evil":
            assert "execute" not in text, (name, text)
        assert not (tmp_path / f"out-{name}").exists()
    assert not MARKER.exists()


# ------------------------------------------------------------------- item 7: empty input
@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_input_is_refused_not_read_as_the_current_folder(
    bundle: Path, tmp_path: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch, empty: str
) -> None:
    write_scans(tmp_path / "here", 2)
    monkeypatch.chdir(tmp_path / "here")
    code = score(bundle, empty, out=tmp_path / "out")
    assert_refused(code, caplog, capsys, "empty path", "use . for the current folder")
    assert not (tmp_path / "out").exists()


def test_missing_and_broken_inputs_are_listed_together(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    os.symlink(tmp_path / "nowhere.png", tmp_path / "broken.png")
    code = score(bundle, tmp_path / "absent", tmp_path / "broken.png", out=tmp_path / "out")
    assert_refused(code, caplog, capsys, "absent: no such file or folder", "broken symlink")


# ------------------------------------------------------------- item 8: names and formats
@posix_only
def test_results_name_the_path_given_and_record_a_symlink_target(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = write_scans(tmp_path / "store", 1)[0]
    monkeypatch.chdir(tmp_path)
    os.symlink("/etc/passwd", "x.png")
    os.symlink(real, "alias.png")
    assert score(bundle, "x.png", "alias.png", out=tmp_path / "out") == 1
    x, alias = rows(tmp_path / "out")
    assert (x["path"], x["target"], x["status"]) == ("x.png", "/etc/passwd", "quarantined")
    assert "not a readable image" in x["reason"]
    assert (alias["path"], alias["target"], alias["status"]) == ("alias.png", str(real), "scored")


def test_gif_named_directly_is_quarantined_like_inside_a_folder_is_counted(
    bundle: Path, tmp_path: Path, caplog
) -> None:
    from PIL import Image

    folder = tmp_path / "scans"
    write_scans(folder, 1)
    Image.fromarray(phantom_slices(1)[0]).save(folder / "anim.gif")
    with caplog.at_level(logging.INFO, logger="brainad"):
        assert score(bundle, folder, folder / "anim.gif", out=tmp_path / "out") == 1
    table = {Path(r["path"]).name: r for r in rows(tmp_path / "out")}
    assert "unsupported file type '.gif'" in table["anim.gif"]["reason"]
    assert "convert it to PNG" in table["anim.gif"]["reason"]


def test_an_empty_folder_among_inputs_is_reported(bundle: Path, tmp_path: Path, caplog) -> None:
    write_scans(tmp_path / "scans", 1)
    (tmp_path / "empty").mkdir()
    assert score(bundle, tmp_path / "scans", tmp_path / "empty", out=tmp_path / "out") == 0
    assert f"input folder {tmp_path / 'empty'}: no image files" in caplog.text
    caplog.clear()
    code = score(bundle, tmp_path / "empty", out=tmp_path / "out2")
    assert code == 2 and "no image files" in errors(caplog)


# ------------------------------------------------------------------------ duplicates
def test_a_path_named_twice_is_scored_once_and_a_copy_is_a_duplicate_row(
    bundle: Path, tmp_path: Path, caplog
) -> None:
    scans = write_scans(tmp_path / "scans", 3)
    (tmp_path / "copy.png").write_bytes(scans[1].read_bytes())
    with caplog.at_level(logging.INFO, logger="brainad"):
        inputs = (scans[0], tmp_path / "scans", scans[0], tmp_path / "copy.png")
        code = score(bundle, *inputs, out=tmp_path / "out")
    assert code == 0
    table = rows(tmp_path / "out")
    assert [r["path"] for r in table] == [str(p) for p in (*scans, tmp_path / "copy.png")]
    assert "2 paths were named more than once" in caplog.text
    copy = table[-1]
    assert copy["status"] == "duplicate" and copy["duplicate_of"] == str(scans[1])
    assert copy["sha256"] == table[1]["sha256"]
    fields = ("score", "threshold", "prediction", "fallback", "component_residual")
    assert [copy[f] for f in fields] == [table[1][f] for f in fields]  # its original's score


def test_duplicates_in_one_batch_across_batches_and_across_resume_copy_the_score(
    bundle: Path, tmp_path: Path
) -> None:
    scans = write_scans(tmp_path / "scans", 3)
    for name in ("scan_000_copy.png", "z_copy.png"):  # same batch as the original / a later one
        (tmp_path / "scans" / name).write_bytes(scans[0].read_bytes())
    bad = tmp_path / "scans" / "b_bad.png"
    bad.write_text("not an image")
    (tmp_path / "scans" / "c_bad_copy.png").write_text("not an image")
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out, extra=("--batch-size", "4")) == 1
    table = {Path(r["path"]).name: r for r in rows(out)}
    for name in ("scan_000_copy.png", "z_copy.png"):
        assert table[name]["status"] == "duplicate"
        assert table[name]["score"] == table["scan_000.png"]["score"] != ""
    assert "quarantined: not a readable image" in table["c_bad_copy.png"]["reason"]
    late = tmp_path / "scans" / "zz_after_resume.png"
    late.write_bytes(scans[1].read_bytes())
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 1
    last = rows(out)[-1]
    assert (last["path"], last["status"]) == (str(late), "duplicate")
    assert last["score"] == table["scan_001.png"]["score"]


# -------------------------------------------------------------- same scores as evaluation
def test_scores_are_the_evaluate_stage_s_scores(bundle: Path, tmp_path: Path) -> None:
    from brainad.data.arrays import preprocess_files
    from brainad.scoring.bundle import load_scorer
    from brainad.scoring.detector import score_images

    scans = write_scans(tmp_path / "scans", 6)
    assert score(bundle, tmp_path / "scans", out=tmp_path / "out", extra=("--batch-size", "4")) == 0
    loaded = load_scorer(bundle)
    library_rows = [
        {
            "path": p.name,
            "label": "healthy",
            "class_name": "",
            "folder": "",
            "mask_path": "",
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in scans
    ]
    arrays = preprocess_files(tmp_path / "scans", library_rows, loaded.preprocess).arrays
    expected = score_images(
        loaded.detector(torch.device("cpu")),
        loaded.calibration,
        arrays.images,
        arrays.brain_masks,
    )
    got = np.array([float(r["score"]) for r in rows(tmp_path / "out")])
    np.testing.assert_allclose(got, expected.score, rtol=1e-6, atol=1e-7)
    assert [int(r["prediction"]) for r in rows(tmp_path / "out")] == expected.prediction.tolist()


# --------------------------------------------------- archive scale: batches, incremental rows
def test_batches_are_bounded_and_rows_are_on_disk_before_the_next_batch(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scans(tmp_path / "scans", 11)
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    real_load = score_cli.load_engine

    def spying_load(model: Path, device: object) -> score_cli.Engine:
        engine = real_load(model, device)

        def spy(images: np.ndarray, masks: np.ndarray, keep: bool):
            lines = len((out / "scores.csv").read_text().splitlines()) if out.exists() else 0
            seen.append((len(images), lines))
            return engine.score(images, masks, keep)

        return engine._replace(score=spy)

    monkeypatch.setattr(score_cli, "load_engine", spying_load)
    assert score(bundle, tmp_path / "scans", out=out, extra=("--batch-size", "4")) == 0
    assert seen == [(1, 0), (4, 1), (4, 5), (3, 9)]  # warm-up, then 4 + 4 + 3 after each write


def test_progress_bar_shows_count_rate_and_eta(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from brainad import utils

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(utils, "_CONSOLE", terminal)
    write_scans(tmp_path / "scans", 5)
    assert score(bundle, tmp_path / "scans", out=tmp_path / "out", extra=("--batch-size", "2")) == 0
    text = screen.getvalue()
    assert "scoring" in text and "5/5" in text and "files/s" in text and "ETA" in text


def test_interrupt_keeps_finished_batches_and_resume_completes(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scans(tmp_path / "scans", 10)
    out = tmp_path / "out"
    real_load = score_cli.load_engine
    calls = []

    def interrupting_load(model: Path, device: object) -> score_cli.Engine:
        engine = real_load(model, device)

        def score_then_interrupt(images: np.ndarray, masks: np.ndarray, keep: bool):
            calls.append(len(images))
            if len(calls) == 3:  # warm-up, batch 1, then Ctrl-C during batch 2
                raise KeyboardInterrupt
            return engine.score(images, masks, keep)

        return engine._replace(score=score_then_interrupt)

    monkeypatch.setattr(score_cli, "load_engine", interrupting_load)
    assert score(bundle, tmp_path / "scans", out=out, extra=("--batch-size", "4")) == 130
    assert len(rows(out)) == 4
    record = json.loads((out / "run.json").read_text())
    assert record["runs"][-1]["interrupted"] is True
    monkeypatch.setattr(score_cli, "load_engine", real_load)
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 0
    assert [r["path"] for r in rows(out)] == [
        str(tmp_path / "scans" / f"scan_{i:03d}.png") for i in range(10)
    ]


# -------------------------------------------------------------------------------- resume
def test_resume_appends_only_new_files_and_keeps_every_written_byte(
    bundle: Path, tmp_path: Path, caplog
) -> None:
    write_scans(tmp_path / "scans", 4)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out) == 0
    before = (out / "scores.csv").read_bytes()
    write_scans(tmp_path / "scans" / "later", 3, seed=4)
    with caplog.at_level(logging.INFO, logger="brainad"):
        assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 0
    after = (out / "scores.csv").read_bytes()
    assert after.startswith(before) and len(rows(out)) == 7
    assert "scored 3 files" in caplog.text and "4 already recorded" in caplog.text
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2


def test_resume_drops_an_incomplete_last_line_and_rescores_that_file(
    bundle: Path, tmp_path: Path, caplog
) -> None:
    write_scans(tmp_path / "scans", 5)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out) == 0
    complete = (out / "scores.csv").read_bytes()
    lines = complete.splitlines(keepends=True)
    (out / "scores.csv").write_bytes(b"".join(lines[:4]) + lines[4][:30])  # killed mid-row
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 0
    assert "dropped an incomplete last line" in caplog.text
    assert (out / "scores.csv").read_bytes() == b"".join(lines[:4]) + b"".join(lines[4:])


def test_resume_refuses_results_of_another_model_or_maps_and_changes_nothing(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    write_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out) == 0
    before = (out / "scores.csv").read_bytes(), (out / "run.json").read_bytes()
    other = write_bundle(tmp_path / "other.pt", seed=1)
    code = score(other, tmp_path / "scans", out=out, extra=("--resume",))
    assert_refused(code, caplog, capsys, "written by model", str(bundle), "choose a new --out")
    caplog.clear()
    code = score(bundle, tmp_path / "scans", out=out, extra=("--resume", "--maps", "all"))
    assert_refused(code, caplog, capsys, "started with --maps none")
    (out / "run.json").unlink()
    caplog.clear()
    code = score(bundle, tmp_path / "scans", out=out, extra=("--resume",))
    assert_refused(code, caplog, capsys, "no run.json", "--overwrite")
    assert (out / "scores.csv").read_bytes() == before[0]


def test_resume_without_results_starts_and_retries_files_that_could_not_be_read(
    bundle: Path, tmp_path: Path
) -> None:
    scans = write_scans(tmp_path / "scans", 2)
    link = tmp_path / "scans" / "late.png"
    os.symlink(tmp_path / "arrives-later.png", link)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 1
    (tmp_path / "arrives-later.png").write_bytes(encode(phantom_slices(1, seed=8)[0]))
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 0
    table = rows(out)
    assert [(r["path"], r["status"]) for r in table] == [
        (str(link), "quarantined"),
        (str(scans[0]), "scored"),
        (str(scans[1]), "scored"),
        (str(link), "scored"),  # the later row for a path is the current one
    ]


def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_bytes().splitlines()) > n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} rows before the deadline")


@posix_only
@pytest.mark.slow
def test_a_killed_run_resumes_with_every_file_exactly_once(bundle: Path, tmp_path: Path) -> None:
    names = [p.name for p in write_scans(tmp_path / "scans", 60)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "brainad.cli", "score", "--model", str(bundle), "scans"]
    command += ["--out", "out", "--maps", "none", "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_for_rows(out / "scores.csv", 4, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    kept = (out / "scores.csv").read_bytes()
    assert 4 <= len(rows(out)) < 60, "the run finished before it was killed"
    resume = [*command, "--resume"]
    subprocess.run(resume, cwd=tmp_path, env=env, check=True, timeout=300, capture_output=True)
    complete = kept[: kept.rfind(b"\n") + 1]
    assert (out / "scores.csv").read_bytes().startswith(complete)
    paths = [r["path"] for r in rows(out)]
    assert sorted(paths) == [f"scans/{n}" for n in names] and len(set(paths)) == 60


# ---------------------------------------------------------------------------------- maps
def test_maps_none_all_and_top_k(bundle: Path, tmp_path: Path) -> None:
    write_scans(tmp_path / "scans", 6)
    for mode, count in (("none", None), ("all", 6), ("top-3", 3), ("top-50", 6)):
        out = tmp_path / mode
        assert score(bundle, tmp_path / "scans", out=out, extra=("--maps", mode)) == 0
        maps = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
        assert (not (out / "heatmaps").exists()) if count is None else len(maps) == count
    table = sorted(rows(tmp_path / "top-3"), key=lambda r: -float(r["score"]))
    expected = [f"{i:04d}_{r['sha256'][:12]}_" for i, r in enumerate(table[:3], start=1)]
    maps = sorted(p.name for p in (tmp_path / "top-3" / "heatmaps").glob("*.png"))
    assert [m[: len(expected[0])] for m in maps] == expected
    assert score(bundle, tmp_path / "scans", out=tmp_path / "alias", extra=("--no-heatmaps",)) == 0
    assert not (tmp_path / "alias" / "heatmaps").exists()


def test_top_k_maps_after_resume_cover_the_earlier_rows(bundle: Path, tmp_path: Path) -> None:
    write_scans(tmp_path / "scans", 3)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out, extra=("--maps", "top-2")) == 0
    write_scans(tmp_path / "scans" / "more", 3, seed=3)
    assert score(bundle, tmp_path / "scans", out=out, extra=("--maps", "top-2", "--resume")) == 0
    best = sorted(rows(out), key=lambda r: -float(r["score"]))[:2]
    maps = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
    assert [m[5:17] for m in maps] == [r["sha256"][:12] for r in best]


@pytest.mark.parametrize("bad", ["top-0", "top", "some", "top-x"])
def test_bad_maps_value_is_a_usage_error(bundle: Path, tmp_path: Path, bad: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["score", "--model", str(bundle), str(tmp_path), "--maps", bad])
    assert info.value.code == 2


def test_a_decoder_crash_on_one_file_quarantines_only_that_file(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1's principle for errors nobody foresaw (a decoder bug, memory exhausted)."""
    scans = write_scans(tmp_path / "scans", 5)
    real_load = score_cli.load_engine

    def fragile_load(model: Path, device: object) -> score_cli.Engine:
        engine = real_load(model, device)

        def prepare(root: Path, library_rows: list[dict]):
            if any(r["path"].endswith("scan_002.png") for r in library_rows):
                raise MemoryError("cannot allocate 7 GiB")
            return engine.prepare(root, library_rows)

        return engine._replace(prepare=prepare)

    monkeypatch.setattr(score_cli, "load_engine", fragile_load)
    assert score(bundle, tmp_path / "scans", out=tmp_path / "out", extra=("--workers", "0")) == 1
    table = {r["path"]: r for r in rows(tmp_path / "out")}
    assert [p for p, r in table.items() if r["status"] == "scored"] == [
        str(p) for p in scans if p.name != "scan_002.png"
    ]
    reason = table[str(scans[2])]["reason"]
    assert reason == "the decoder failed (MemoryError: cannot allocate 7 GiB)"


# ------------------------------------------------------------------ probed beyond the issue
@posix_only
def test_a_file_symlink_into_out_is_never_scored(bundle: Path, tmp_path: Path, caplog) -> None:
    write_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out, extra=("--maps", "all")) == 0
    own_map = next((out / "heatmaps").glob("*.png"))
    os.symlink(own_map, tmp_path / "scans" / "latest.png")
    with caplog.at_level(logging.INFO, logger="brainad"):
        code = score(bundle, tmp_path / "scans", out=out, extra=("--resume", "--maps", "all"))
    assert code == 0 and len(rows(out)) == 2
    assert "the --out folder (never scored): 1" in caplog.text


@posix_only
def test_two_runs_never_write_the_same_results_at_once(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    import fcntl

    write_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    assert score(bundle, tmp_path / "scans", out=out) == 0
    before = (out / "scores.csv").read_bytes()
    with open(out / "scores.csv", "a") as other_run:
        fcntl.flock(other_run.fileno(), fcntl.LOCK_EX)
        for again in ("--resume", "--overwrite"):
            caplog.clear()
            code = score(bundle, tmp_path / "scans", out=out, extra=(again,))
            assert_refused(code, caplog, capsys, "another brainad score is writing scores.csv")
    assert (out / "scores.csv").read_bytes() == before


def test_a_full_disk_is_one_line_and_keeps_the_finished_batches(
    bundle: Path, tmp_path: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from brainad.cli import results as score_results

    write_scans(tmp_path / "scans", 6)
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the second batch's rows do not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(score_results.os, "fsync", fsync)
    out = tmp_path / "out"
    code = score(bundle, tmp_path / "scans", out=out, extra=("--batch-size", "3"))
    assert_refused(code, caplog, capsys, "No space left on device", "--resume")
    assert len(rows(out)) >= 3
    monkeypatch.setattr(score_results.os, "fsync", real_fsync)
    assert score(bundle, tmp_path / "scans", out=out, extra=("--resume",)) == 0
    assert sorted({r["path"] for r in rows(out)}) == [
        str(p) for p in sorted((tmp_path / "scans").glob("*.png"))
    ]


@posix_only
def test_a_model_that_is_a_device_fifo_or_lfs_pointer_is_named(
    bundle: Path, tmp_path: Path, caplog, capsys
) -> None:
    write_scans(tmp_path / "scans", 1)
    os.symlink("/dev/zero", tmp_path / "zero.pt")
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    cases = {
        "zero.pt": "not a regular file (character device)",
        "fifo.pt": "not a regular file (fifo)",
        "lfs.pt": "a Git LFS pointer, not the model; run `git lfs pull`",
    }
    for name, words in cases.items():
        caplog.clear()
        code = score(tmp_path / name, tmp_path / "scans", out=tmp_path / "out")
        assert_refused(code, caplog, capsys, words)
