"""A volume study end to end on synthetic BraTS-style cases (the voxels stage), its strict
params, and that the test cases never decide anything."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers.volumes import brats_case

from brainad.config import ConfigError, load_volume_study

REPO = Path(__file__).resolve().parents[1]
LABELS = ("OTMultiClass.nii.gz", "*_seg.nii.gz", "*-seg.nii.gz")
CASES = ("c0", "c1", "c2", "c3", "c4", "c5")


def _study(root: Path, **change) -> dict:
    study = {
        "source": {
            "kind": "brats",
            "uri": str(root),
            "naming": "auto",
            "patterns": {"flair": "", "t1c": "", "label": "", "brainmask": ""},
            "checksums": "",
        },
        "roles": {"train": ["c0", "c1"], "val": ["c2"], "test": ["c3", "c4", "c5"]},
        "slices": {"min_brain_voxels": 20, "min_tumour_voxels": 10},
        "detectors": [
            {
                "name": "flair_intensity",
                "channel": "flair",
                "normalisation": "zscore",
                "method": "intensity",
            },
            {
                "name": "t1c_intensity",
                "channel": "t1c",
                "normalisation": "zscore",
                "method": "intensity",
            },
            {
                "name": "flair_edge",
                "channel": "flair",
                "normalisation": "zscore",
                "method": "edge_normalised",
            },
        ],
        "models": {"study": "demo", "names": [], "channel": "flair", "training": "cases"},
        "variants": {"archive_sequences": ["FLAIR"], "rows": []},
        "combinations": [],
        "evaluate": {
            "smoothing_sigmas": [0.0, 1.0],
            "topk_percent": 1.0,
            "bins": 512,
            "bootstrap": 50,
            "ci": 0.95,
            "seed": 0,
            "strata": 3,
            "top_k": 2,
        },
    }
    study.update(change)
    return study


def _params(tmp_path: Path, study: dict) -> Path:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["volume_studies"] = {"toy": study}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _stage_main(argv: list[str], stage: str = "voxels") -> None:
    """Run ``stages/<stage>.py`` as DVC does, in this process."""
    spec = importlib.util.spec_from_file_location(stage, REPO / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def _label(folder: Path) -> Path:
    return next(p for pattern in LABELS for p in folder.glob(pattern))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("volume_study")
    namings = ("brats2013", "brats2018", "brats2023")
    for i, case in enumerate(CASES):
        brats_case(tmp / "cases", case, namings[i % 3], seed=i)
    study = _study(tmp / "cases")
    study["models"]["names"] = ["dae"]  # the demo's DAE (64 px), trained by the one loop
    study["variants"]["rows"] = [VARIANT]  # the same DAE on the cases' + the archive's slices
    study["combinations"] = [{"name": "flair_plus_dae", "parts": ["flair_intensity", "dae"]}]
    params = _params(tmp, study)
    archive = _slice_study_data(tmp / "slice")
    common = ["--study", "toy", "--params", str(params), "--model-dir", str(tmp / "models")]
    train = ["--arrays-dir", str(tmp / "arrays"), "--report-dir", str(tmp / "train")]
    _stage_main([*common, *train], "volume_models")
    variants = [
        *("--study", "toy", "--params", str(params), "--slice-data-dir", str(tmp / "slice")),
        *("--arrays-dir", str(tmp / "variants"), "--model-dir", str(tmp / "models-variants")),
        *("--report-dir", str(tmp / "variants-report")),
    ]
    _stage_main(variants, "volume_variants")
    voxels = ["--report-dir", str(tmp / "report"), "--maps-dir", str(tmp / "maps")]
    _stage_main([*common, *voxels, "--variants-dir", str(tmp / "models-variants")])
    return {"tmp": tmp, "params": params, "archive": archive}


VARIANT = {"name": "dae_both", "model": "dae", "channel": "flair", "training": "both"}


def _slice_study_data(root: Path, n: int = 12, size: int = 64) -> dict:
    """A slice study's ``arrays/train.npz`` and ``manifest.jsonl``: healthy and anomalous rows
    of the sequences FLAIR and T1 (only the healthy FLAIR ones serve ``training: archive``)."""
    from brainad.data.arrays import SplitArrays, save_arrays
    from brainad.data.manifest import MANIFEST_FIELDS

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2
    masks = np.repeat(disc[None, None], n, 0)
    images = np.where(masks, rng.uniform(-0.5, 0.5, masks.shape), -1.0).astype(np.float16)
    labels = np.array([i % 3 == 0 for i in range(n)], np.int8)
    sequences = ["FLAIR" if i % 2 == 0 else "T1" for i in range(n)]
    paths = np.array([f"Training/c/{i}.jpg" for i in range(n)])
    arrays = SplitArrays(
        images=images,
        brain_masks=masks,
        lesion_masks=np.zeros_like(masks),
        has_lesion_mask=np.zeros(n, bool),
        labels=labels,
        paths=paths,
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        class_names=np.array(["notumor"] * n),
        folders=np.array(["Training"] * n),
        fallback=np.zeros(n, bool),
        coverage=np.full(n, 0.5, np.float32),
    )
    save_arrays(root / "arrays" / "train.npz", arrays)
    rows = [
        {**dict.fromkeys(MANIFEST_FIELDS, ""), "path": p, "sequence": s}
        for p, s in zip(paths, sequences)
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    healthy_flair = sum(1 for lab, s in zip(labels, sequences) if lab == 0 and s == "FLAIR")
    return {"healthy_flair": healthy_flair}


def test_reports_every_detector_and_writes_maps_on_the_cases_grid(ran) -> None:
    report = ran["tmp"] / "report"
    evaluation = json.loads((report / "evaluation.json").read_text())
    metrics = json.loads((report / "metrics.json").read_text())
    rows = {"flair_intensity", "t1c_intensity", "flair_edge", "dae", "dae_both", "flair_plus_dae"}
    assert set(evaluation["detectors"]) == rows
    trained = json.loads((ran["tmp"] / "train" / "volume_models.json").read_text())
    assert trained["arrays"]["train"]["anomalous"] == 0  # healthy slices only
    assert trained["arrays"]["val"]["anomalous"] > 0 and trained["models"]["dae"]["epochs"] > 0
    variant = json.loads((ran["tmp"] / "variants-report" / "volume_variants.json").read_text())
    both = variant["variants"]["dae_both"]
    from_cases = trained["arrays"]["train"]["slices"]  # the same healthy slices of the cases
    assert both["arrays"]["from_cases"] == from_cases
    assert both["arrays"]["train"]["slices"] == from_cases + ran["archive"]["healthy_flair"]
    assert both["arrays"]["train"]["anomalous"] == 0 and both["trained"]["epochs"] > 0
    combined = evaluation["detectors"]["flair_plus_dae"]
    assert combined["input"]["parts"] == ["flair_intensity", "dae"]
    assert combined["test"]["pooled"]["pixel_ap"] > 0.5
    assert evaluation["reference"] == "flair_intensity"
    assert set(metrics) >= set(evaluation["detectors"])
    flair = evaluation["detectors"]["flair_intensity"]["test"]
    assert flair["pooled"]["pixel_ap"] > 0.9  # the synthetic tumour is bright in FLAIR
    assert set(flair["per_case"]) == {"c3", "c4", "c5"}
    assert set(flair["ci"]) >= {"pixel_ap", "dice", "pixel_auroc", "best_dice"}
    summary = (report / "summary.md").read_text()
    assert "Published, for context only" in summary and "Menze" in summary
    training = summary.split("## Healthy training data")[1].split("##")[0]
    assert "| dae, flair | dae" in training and "| dae_both" in training and "| both |" in training
    top = flair["per_case"]["c3"]["top_slices"]
    assert top["volume_score"] >= top["inner_volume_score"]  # the top k of all slices vs fewer
    assert (report / "figures" / "overlays.png").stat().st_size > 1000
    for case in ("c3", "c4", "c5"):
        written = nib.load(str(ran["tmp"] / "maps" / "flair_intensity" / f"{case}.nii.gz"))
        original = nib.load(str(_label(ran["tmp"] / "cases" / case)))  # the case's grid
        assert written.shape == original.shape and np.allclose(written.affine, original.affine)
        label = np.asanyarray(original.dataobj) > 0
        values = np.asanyarray(written.dataobj)
        assert values[label].mean() > values[~label & (values != 0)].mean()  # map lines up


def test_choices_do_not_depend_on_the_test_cases(ran, tmp_path: Path) -> None:
    """Blank the test cases' labels: every validation choice (smoothing, threshold, default)
    stays the same, only the test numbers change."""
    first = json.loads((ran["tmp"] / "report" / "evaluation.json").read_text())
    cases = tmp_path / "cases"
    namings = ("brats2013", "brats2018", "brats2023")
    for i, case in enumerate(CASES):
        written = brats_case(cases, case, namings[i % 3], seed=i)
        if case in ("c3", "c4", "c5"):
            image = nib.load(str(written["label"]))
            flipped = (np.asanyarray(image.dataobj) == 0).astype(np.uint8)
            nib.save(nib.Nifti1Image(flipped, image.affine), str(written["label"]))
    study = _study(cases)
    study["models"]["names"] = ["dae"]  # the same trained models (they never saw a test case)
    study["variants"]["rows"] = [VARIANT]
    study["combinations"] = [{"name": "flair_plus_dae", "parts": ["flair_intensity", "dae"]}]
    params = _params(tmp_path, study)
    _stage_main(
        [
            "--study",
            "toy",
            "--params",
            str(params),
            "--model-dir",
            str(ran["tmp"] / "models"),
            "--report-dir",
            str(tmp_path / "r"),
            "--maps-dir",
            str(tmp_path / "m"),
            "--variants-dir",
            str(ran["tmp"] / "models-variants"),
        ]
    )
    second = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert second["default"] == first["default"]
    for name, result in first["detectors"].items():
        assert second["detectors"][name]["validation"] == result["validation"]
        assert second["detectors"][name]["test"]["pooled"] != result["test"]["pooled"]


def test_volume_study_params_are_strict(tmp_path: Path) -> None:
    study = _study(tmp_path)
    study["slices"] = {"min_brain_voxels": 20}
    with pytest.raises(ConfigError, match=r"volume_studies.toy.slices: missing key\(s\)"):
        load_volume_study("toy", _params(tmp_path, study))
    study = _study(tmp_path)
    study["detectors"][1]["method"] = "magic"
    with pytest.raises(ConfigError, match=r"detectors\[1\].method: 'magic' is not one of"):
        load_volume_study("toy", _params(tmp_path, study))
    study = _study(tmp_path)
    study["detectors"][1]["name"] = "flair_intensity"
    with pytest.raises(ConfigError, match="names must be unique"):
        load_volume_study("toy", _params(tmp_path, study))
    study = _study(tmp_path, combinations=[{"name": "mix", "parts": ["flair_intensity", "x"]}])
    with pytest.raises(ConfigError, match=r"combinations.mix: parts must name .* \['x'\]"):
        load_volume_study("toy", _params(tmp_path, study))
    study = _study(tmp_path, combinations=[{"name": "flair_edge", "parts": ["dae", "x"][:0]}])
    with pytest.raises(ConfigError, match="parts must name at least two rows"):
        load_volume_study("toy", _params(tmp_path, study))
    study = _study(tmp_path)
    study["variants"]["rows"] = [{**VARIANT, "name": "flair_edge"}]
    with pytest.raises(ConfigError, match=r"unique across .* repeated: \['flair_edge'\]"):
        load_volume_study("toy", _params(tmp_path, study))
    with pytest.raises(ConfigError, match="no such volume study"):
        load_volume_study("absent", _params(tmp_path, _study(tmp_path)))


def test_a_case_with_two_roles_is_refused(tmp_path: Path) -> None:
    from brainad.evaluation.volume_run import run_voxels

    study = _study(tmp_path, roles={"train": ["c0"], "val": ["c2"], "test": ["c2", "c3"]})
    params = _params(tmp_path, study)
    config = load_volume_study("toy", params)
    with pytest.raises(ValueError, match=r"case\(s\) \['c2'\] have two roles"):
        run_voxels(config, tmp_path / "r", tmp_path / "m", params, tmp_path / "models", tmp_path)


def test_the_brats_study_in_params_keeps_three_test_only_cases() -> None:
    config = load_volume_study("brats")
    roles = config.roles
    assert len(roles.test) >= 3
    assert not set(roles.test) & (set(roles.train) | set(roles.val))
    assert config.detectors[0].channel == "flair" and config.detectors[0].method == "intensity"


def test_archive_healthy_keeps_healthy_rows_of_the_sequences_and_names_bad_input(
    tmp_path: Path,
) -> None:
    from brainad.data.volume_arrays import archive_healthy

    expected = _slice_study_data(tmp_path)["healthy_flair"]
    arrays, manifest = tmp_path / "arrays" / "train.npz", tmp_path / "manifest.jsonl"
    found = archive_healthy(arrays, manifest, ("FLAIR",))
    assert len(found) == expected and not found.labels.any()
    assert len(archive_healthy(arrays, manifest, ("FLAIR", "T1"))) > expected
    with pytest.raises(ValueError, match=r"archive_sequences: \['flair'\] .*unknown: \['flair'\]"):
        archive_healthy(arrays, manifest, ("flair",))
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"train.npz: 1 row\(s\) not in .*manifest.jsonl"):
        archive_healthy(arrays, manifest, ("FLAIR",))
