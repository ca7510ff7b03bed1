"""Stage volume_models: a volume study's 2-D models, trained by the one training loop on the
healthy slices of its train cases (brainad.training.volume)."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    from brainad.config import load_volume_study

    args, config = stage_setup(
        __doc__, ["arrays-dir", "model-dir", "report-dir"], argv, load=load_volume_study
    )
    # imported after stage_setup (the logging and process set-up every stage has)
    from brainad.training.volume import run_volume_models

    run_volume_models(config, args.params, args.arrays_dir, args.model_dir, args.report_dir)


if __name__ == "__main__":
    main()
