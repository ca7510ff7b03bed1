"""Stage evaluate: calibrate on validation, score both test tracks and baselines, write reports."""

from brainad.evaluation import run_evaluate
from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__,
        [
            "arrays-dir",
            "vqgan",
            "dcgan",
            "prior",
            "vqgan-train",
            "dcgan-train",
            "prior-train",
            "prepare-report",
            "split-report",
            "ablation",
            "scorers-dir",
            "report-dir",
        ],
        argv,
    )
    run_evaluate(
        config,
        args.arrays_dir,
        {"vqgan": args.vqgan, "vqgan_prior": args.prior, "dcgan": args.dcgan},
        args.scorers_dir,
        args.prepare_report,
        args.split_report,
        {"vqgan": args.vqgan_train, "vqgan_prior": args.prior_train, "dcgan": args.dcgan_train},
        args.report_dir,
        ablation_report=args.ablation,
    )


if __name__ == "__main__":
    main()
