"""Stage voxels: a volume study's detectors on its cases, chosen on validation, graded voxel by
voxel on the test cases (brainad.evaluation.volume_run)."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    from brainad.config import load_volume_study

    args, config = stage_setup(
        __doc__,
        ["report-dir", "maps-dir", "model-dir", "variants-dir"],
        argv,
        load=load_volume_study,
    )
    # imported after stage_setup (the logging and process set-up every stage has)
    from brainad.evaluation.volume_run import run_voxels

    run_voxels(
        config, args.report_dir, args.maps_dir, args.params, args.model_dir, args.variants_dir
    )


if __name__ == "__main__":
    main()
