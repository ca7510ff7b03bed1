"""Stage prepare: acquire the raw data (synthetic/archive/folder/kaggle), filter, write the manifest."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__, ["raw", "downloads", "manifest", "report", "labels-dir"], argv
    )
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.data.stages import run_prepare

    run_prepare(config, args.raw, args.downloads, args.manifest, args.report, args.labels_dir)


if __name__ == "__main__":
    main()
