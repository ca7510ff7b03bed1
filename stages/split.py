"""Stage split: cluster near-duplicates and split train/val/test by cluster (never by file)."""

from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(__doc__, ["raw", "manifest", "split", "report-dir"], argv)
    # imported after stage_setup, which pins a deterministic study's kernels before they load
    from brainad.data.stages import run_split

    run_split(config, args.raw, args.manifest, args.split, args.report_dir)


if __name__ == "__main__":
    main()
