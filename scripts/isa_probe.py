"""Does a setting change trained weights? A micro training of the demo models, one checksum each.

    python scripts/isa_probe.py [--pinned] [--threads N] [--mkldnn off] [--nnpack off] [--out F]

Trains the registered models of the ``demo`` study (VQGAN+D, its token prior, the DCGAN's two
phases) on smooth random 32-px images for a few steps with ``brainad.training.loop.fit``
(``deterministic: true``), scores a few images with the VQGAN+D, and prints one JSON line: a
checksum of each model's weights, of the scores, the seconds it took and
:func:`brainad.runtime.describe`. Run it in separate processes under different environment
variables (ISA caps such as ``ONEDNN_MAX_CPU_ISA=SSE41``, ``ATEN_CPU_CAPABILITY=default``,
``MKL_CBWR=COMPATIBLE``) and compare: this is how the settings of deterministic mode were chosen
(``brainad.runtime``), and ``tests/test_runtime.py`` runs it with ``--pinned`` under two caps.

``--pinned`` runs deterministic mode exactly as a stage does: the pinned environment is set
before torch loads, and training and scoring run inside ``deterministic_kernels``. Without it, the
process uses whatever the environment and the flags below say.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pinned", action="store_true", help="deterministic mode, as a stage")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--mkldnn", choices=("on", "off"), default="on")
    parser.add_argument("--nnpack", choices=("on", "off"), default="on")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--images", type=int, default=24, help="training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="vqgan,vqgan_prior,dcgan")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    from brainad import runtime  # no torch/numpy yet: the pinned environment can still be set

    runtime.prepare_process(args.pinned, restart=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = args.mkldnn == "on"
    torch.backends.nnpack.set_flags(args.nnpack == "on")
    started = time.perf_counter()
    with runtime.deterministic_kernels(args.pinned):
        weights, scores = _train_and_score(args)
        report = {
            "weights": weights,
            "scores": scores,
            "seconds": round(time.perf_counter() - started, 2),
            "runtime": runtime.describe(True),
        }
    text = json.dumps(report, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _images(n: int, size: int, seed: int):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, max(size // 8, 2), max(size // 8, 2), generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (images * 2 - 1).contiguous()


def _train_and_score(args: argparse.Namespace) -> tuple[dict[str, str], str | None]:
    import numpy as np
    import torch

    from brainad.config import load_study
    from brainad.models import registry
    from brainad.scoring.bundle import make_detector
    from brainad.scoring.detector import score_raw
    from brainad.training.fingerprint import state_checksum, tensor_checksum
    from brainad.training.loop import FitPaths, fit

    config = load_study("demo", args.params)
    data = _images(args.images, args.size, seed=0)
    names = [n for n in registry.MODEL_NAMES if n in args.models.split(",")]
    weights, trained, root = {}, {}, Path(tempfile.mkdtemp(prefix="isa-probe-"))
    for name in names:
        torch.manual_seed(0)
        base = trained.get(registry.entry(name).base or "")
        module = registry.new_model(name, config, args.size, base=base)
        for phase in registry.entry(name).phases:
            if hasattr(module, "set_phase"):
                module.set_phase(phase)
            fit_config = config.dcgan.fit if phase == "gan" else registry.fit_config(name, config)
            fit_config = dataclasses.replace(
                fit_config, epochs=args.epochs, batch_size=8, checkpoint_every=args.epochs,
                sample_every=args.epochs, deterministic=True,
            )  # fmt: skip
            out = root / name / phase
            paths = FitPaths(out / "ckpt", out / "final.pt", out / "best.pt", out / "s", None)
            fit(module, data, fit_config, paths, phase=phase, device=torch.device("cpu"))
        weights[name], trained[name] = state_checksum(module), module
    if "vqgan" not in trained:
        return weights, None
    cpu = torch.device("cpu")
    detector = make_detector("vqgan", trained["vqgan"].eval(), config.score, config.perceptual, cpu)
    images = _images(8, args.size, seed=1).numpy()
    residual = score_raw(detector, images, np.ones_like(images, dtype=bool)).components["residual"]
    return weights, tensor_checksum(torch.from_numpy(np.ascontiguousarray(residual)))


if __name__ == "__main__":
    sys.exit(main())
