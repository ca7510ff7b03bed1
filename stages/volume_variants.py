"""Stage volume_variants: a volume study's further 2-D model rows (another input channel, or the
slice study's healthy training slices: cross-dataset), each trained by the one training loop
(brainad.training.volume)."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    from brainad.config import load_volume_study

    args, config = stage_setup(
        __doc__,
        ["slice-data-dir", "arrays-dir", "model-dir", "report-dir"],
        argv,
        load=load_volume_study,
    )
    # imported after stage_setup (the logging and process set-up every stage has)
    from brainad.training.volume import run_volume_variants

    run_volume_variants(
        config,
        args.params,
        args.slice_data_dir,
        args.arrays_dir,
        args.model_dir,
        args.report_dir,
    )


if __name__ == "__main__":
    main()
