"""Score-side ablation on the VALIDATION split (never the test split): which model and which score
settings separate lesioned from clean scans.

For each trained model file, every image of the validation split and a lesioned copy of each
healthy validation scan (``evaluate.lesions``, implanted exactly as on the test track) is
reconstructed once; each variant (smoothing × aggregation, and for the token prior the token-NLL
map) is then measured on three validation tracks:

- ``real``: ROC-AUC of anomalous vs healthy validation scans (confounded by the image source);
- ``lesion``: ROC-AUC of lesioned copies vs their clean twins, and the fraction of pairs in which
  the copy scores higher;
- ``pixel``: pixel ROC-AUC of the anomaly map inside the brain mask of the lesioned copies.

Map kinds: ``residual`` (|input − reconstruction|; for the token prior the healed
reconstruction); for VQGAN+D also ``quantisation distance`` (distance of each encoder output to
its nearest code, upsampled: how far the encoder is from anything the codebook holds); for the
token prior also ``token_nll`` and ``restoration`` (|VQGAN+D reconstruction − healed|).

The ``ablate`` stage writes ``reports/<study>/ablation/validation.{json,md}``; the evaluate stage
puts the table into ``summary.md``, so every variant tried is reported beside the chosen one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brainad import metrics as metrics_lib
from brainad.checkpoint import load_model
from brainad.config import ScoreConfig, StudyConfig
from brainad.data.arrays import load_arrays
from brainad.lesions import implant_lesions
from brainad.scoring import aggregate, smooth
from brainad.utils import select_device, write_json, write_text

log = logging.getLogger("brainad")

SMOOTHING = (("none", 1), ("gaussian", 5), ("gaussian", 9))
AGGREGATES = (("mean", 1.0), ("topk", 1.0), ("topk", 5.0), ("max", 1.0))


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid.float(), size=size, mode="nearest").cpu()


@torch.no_grad()
def quantisation_distance(vqgan, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S): distance of each VQGAN+D encoder output to its nearest code, upsampled."""
    z = vqgan.generator["encoder"](x)  # (B, dim, h, w)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    distance = torch.cdist(flat, vqgan.generator["quantizer"].embedding).min(1).values
    return _upsample(distance.view(len(x), 1, *z.shape[-2:]), x.shape[-2:])


@torch.no_grad()
def reconstruct(model, images: np.ndarray, device: torch.device, batch: int = 32) -> dict:
    """Reconstructions and the model's extra maps (see the module docstring) of ``images``."""
    recons, nll_maps, direct, distances = [], [], [], []
    model.eval()
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch].astype(np.float32)).to(device)
        recons.append(model.reconstruct(x).float().clamp(-1, 1).cpu())
        if getattr(model, "name", "") == "vqgan":
            distances.append(quantisation_distance(model, x))
        if hasattr(model, "heal"):
            direct.append(model.vqgan.reconstruct(x).float().clamp(-1, 1).cpu())
            _, nll = model.heal(x)
            nll_maps.append(_upsample(nll.view(len(x), 1, model.grid, model.grid), x.shape[-2:]))
    out = {"recon": torch.cat(recons)}
    if distances:
        out["distance"] = torch.cat(distances)
    if nll_maps:
        out["nll"] = torch.cat(nll_maps)
        out["direct"] = torch.cat(direct)
    return out


def variant_maps(images: np.ndarray, outputs: dict) -> dict[str, torch.Tensor]:
    """Raw anomaly maps per map kind: L1 residual to the (healed) reconstruction; for the token
    prior also the token NLL and the restoration |VQGAN+D reconstruction − healed reconstruction|."""
    maps = {"residual": (torch.from_numpy(images.astype(np.float32)) - outputs["recon"]).abs()}
    if "distance" in outputs:
        maps["quantisation distance"] = outputs["distance"]
    if "nll" in outputs:
        maps["token_nll"] = outputs["nll"]
        maps["restoration"] = (outputs["direct"] - outputs["recon"]).abs()
    return maps


def run_ablation(config: StudyConfig, arrays_dir: Path, models: dict[str, Path], out: Path) -> dict:
    """Measure every variant of every model on the validation tracks; write the JSON and table."""
    device = select_device()
    val = load_arrays(arrays_dir / "val.npz")
    healthy = np.flatnonzero(val.labels == 0)
    lesions = implant_lesions(
        val.images[healthy].astype(np.float32), val.brain_masks[healthy], config.evaluate.lesions
    )
    twin = np.tile(healthy, config.evaluate.lesions.per_image)
    brain_val = torch.from_numpy(val.brain_masks)
    brain_les = torch.from_numpy(val.brain_masks[twin])
    rows = []
    for name, path in models.items():
        model, payload = load_model(path, device=device)
        started = time.perf_counter()
        maps_val = variant_maps(val.images, reconstruct(model, val.images, device))
        maps_les = variant_maps(lesions.images, reconstruct(model, lesions.images, device))
        seconds = time.perf_counter() - started
        log.info(
            "%s: reconstructed %d images in %.0f s", name, len(val.images) + len(twin), seconds
        )
        for kind in maps_val:
            for smoothing, px in SMOOTHING:
                score = dataclasses.replace(_BASE, smoothing=smoothing, smoothing_px=px)
                sm_val = smooth(maps_val[kind], score) * brain_val
                sm_les = smooth(maps_les[kind], score) * brain_les
                pixel = metrics_lib.pixel_metrics(
                    lesions.masks, sm_les.numpy(), val.brain_masks[twin], seed=0
                )["pixel_auroc"]
                for method, k in AGGREGATES:
                    s_val = aggregate(sm_val, brain_val, method, k).numpy()
                    s_les = aggregate(sm_les, brain_les, method, k).numpy()
                    clean = s_val[twin]
                    labels = np.r_[np.zeros(len(clean)), np.ones(len(s_les))]
                    rows.append(
                        {
                            "model": name,
                            "epoch": int(payload.get("epoch", 0)),
                            "map": kind,
                            "smoothing": f"{smoothing} {px}px" if px > 1 else smoothing,
                            "aggregate": method if method != "topk" else f"top {k:g}%",
                            "real_auroc": metrics_lib.roc_auc(val.labels, s_val),
                            "lesion_auroc": metrics_lib.roc_auc(labels, np.r_[clean, s_les]),
                            "pairs_higher": float(np.mean(s_les > clean)),
                            "pixel_auroc": pixel,
                        }
                    )
    document = {
        "study": config.name,
        "split": "val",
        "n": {
            "healthy": int(len(healthy)),
            "anomalous": int((val.labels == 1).sum()),
            "lesioned": int(len(twin)),
        },
        "models": {k: str(v) for k, v in models.items()},
        "rows": rows,
    }
    write_json(out / "validation.json", document)
    write_text(out / "validation.md", markdown(document))
    return document


_BASE = ScoreConfig(
    residual="l1",
    smoothing="none",
    smoothing_px=1,
    aggregate="mean",
    topk_percent=1.0,
    weight_residual=1.0,
    weight_ssim=0.0,
    weight_perceptual=0.0,
    weight_discriminator=0.0,
    batch_size=32,
)


def markdown(document: dict) -> str:
    n = document["n"]
    lines = [
        f"# Score ablation on the validation split of `{document['study']}`",
        "",
        f"Validation only (the test split is not read): {n['healthy']} healthy and "
        f"{n['anomalous']} anomalous scans, {n['lesioned']} lesioned copies of the healthy ones.",
        "",
        "| model | map | smoothing | aggregate | real ROC-AUC | lesion ROC-AUC | pairs higher "
        "| pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        lines.append(
            f"| {r['model']} (epoch {r['epoch']}) | {r['map']} | {r['smoothing']} | "
            f"{r['aggregate']} | {r['real_auroc']:.3f} | {r['lesion_auroc']:.3f} | "
            f"{r['pairs_higher']:.0%} | {r['pixel_auroc']:.3f} |"
        )
    return "\n".join(lines) + "\n"
