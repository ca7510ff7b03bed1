"""Stage train_<model>: train one registered model on healthy training slices with the one loop."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__,
        ["arrays-dir", "model-dir", "checkpoint-dir", "report-dir"],
        argv,
        names=["model"],
    )
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.training.runner import run_train

    run_train(
        config, args.model, args.arrays_dir, args.model_dir, args.checkpoint_dir, args.report_dir
    )


if __name__ == "__main__":
    main()
