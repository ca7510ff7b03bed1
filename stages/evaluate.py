"""Stage evaluate: calibrate on validation, score both test tracks and baselines, write reports."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__,
        [
            "arrays-dir",
            "model-dir",
            "scorers-dir",
            "train-dir",
            "prepare-report",
            "split-report",
            "ablation",
            "manifest",
            "report-dir",
        ],
        argv,
    )
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.evaluation.run import run_evaluate

    run_evaluate(
        config,
        args.arrays_dir,
        args.model_dir,
        args.scorers_dir,
        args.train_dir,
        args.prepare_report,
        args.split_report,
        args.report_dir,
        ablation_report=args.ablation,
        manifest=args.manifest,
    )


if __name__ == "__main__":
    main()
