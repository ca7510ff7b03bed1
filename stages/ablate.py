"""Stage ablate: every model and score variant on the VALIDATION tracks (the test split is not read)."""

from brainad.ablation import run_ablation
from brainad.stage import stage_setup


def main(argv=None) -> None:
    args, config = stage_setup(__doc__, ["arrays-dir", "vqgan", "prior", "dcgan", "out"], argv)
    models = {"vqgan": args.vqgan, "vqgan_prior": args.prior, "dcgan": args.dcgan}
    run_ablation(config, args.arrays_dir, models, args.out)


if __name__ == "__main__":
    main()
