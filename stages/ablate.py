"""Stage ablate: every model and score variant on the VALIDATION tracks (the test split is not read)."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(__doc__, ["arrays-dir", "model-dir", "manifest", "out"], argv)
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.evaluation.ablation import run_ablation
    from brainad.models.registry import MODEL_NAMES, best_file

    models = {name: best_file(args.model_dir, name) for name in MODEL_NAMES}
    run_ablation(config, args.arrays_dir, models, args.out, args.manifest)


if __name__ == "__main__":
    main()
