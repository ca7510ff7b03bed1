"""Stage train_prior: train the token prior of a trained VQGAN+D (frozen) with the one loop."""

from brainad.stage import stage_setup
from brainad.trainer import run_train


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__, ["arrays-dir", "vqgan", "model-dir", "checkpoint-dir", "report-dir"], argv
    )
    run_train(
        config,
        "prior",
        args.arrays_dir,
        args.model_dir,
        args.checkpoint_dir,
        args.report_dir,
        base_model=args.vqgan,
    )


if __name__ == "__main__":
    main()
