"""Stage preprocess: decode, skull-strip, crop, normalise each split into compact arrays."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(
        __doc__, ["raw", "manifest", "split", "arrays-dir", "report-dir"], argv
    )
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.data.stages import run_preprocess

    run_preprocess(config, args.raw, args.manifest, args.split, args.arrays_dir, args.report_dir)


if __name__ == "__main__":
    main()
