"""SimMIM pretraining of an encoder on images alone:

    python -m jaxseg.pretrain --config configs/simmim_lightseg_3d.py --workdir runs/pre \
        [--config.data.root=DIR] [--config.data.unlabelled='("/scans/a", "/scans/b")']

The images are every case of the dataset folder `data.root` (its labels are never read)
plus the image folders in `data.unlabelled` (nnU-Net naming: `CASE_0000.nii.gz` ... are the
channels of one case). The run is an ordinary workdir, trained by the same loop as
`jaxseg.train` (mesh, checkpoints, preemption, resume), with reconstruction PNGs in
TensorBoard. Start a segmentation run from it with
`python -m jaxseg.train ... --config.train.init_from=runs/pre` (docs/small_data.md).
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli
from jaxseg.config import load_config, split_overrides


def main(argv) -> int:
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="config file with get_config()")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and reports")
    args = parser.parse_args(rest)
    from jaxseg.data import outputs

    outputs.check_output_dir(args.workdir, what="--workdir")
    config = load_config(args.config, overrides)
    outputs.check_not_dataset(args.workdir, config.data.root, what="--workdir")
    from jaxseg.data import io
    from jaxseg.training.pretrain import pretrain

    with io.limit_image_bytes(config.data.get("max_image_bytes", io.DEFAULT_MAX_IMAGE_BYTES)):
        result = pretrain(config, args.workdir)
    print(json.dumps({"workdir": args.workdir, **result}))
    return 0


if __name__ == "__main__":
    cli.run(main)
