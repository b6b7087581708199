"""Fit a softmax temperature on a run's validation split: python -m jaxseg.calibrate --workdir DIR

Writes DIR/calibration.json (the temperature, the checkpoint it was fitted for, and the
validation NLL and expected calibration error before and after) and DIR/reliability.png.
From then on evaluate, predict and export divide that checkpoint's logits by the
temperature (`jaxseg.calibration`), and `predict --probabilities` writes calibrated maps.
"""

from __future__ import annotations

import argparse
import os

from jaxseg import cli


def calibrate_run(
    workdir: str | os.PathLike,
    *,
    split: str = "val",
    which: str = "auto",
    data_root: str | None = None,
    tta: bool = True,
    voxels_per_window: int = 2048,
    num_bins: int = 15,
    progress: bool = False,
) -> dict:
    """Fits the temperature on `split` (to the mirrored passes' averaged softmax when TTA
    is on, as inference averages them) and measures ECE before and after through the whole
    inference path (sliding windows, TTA as configured, back on each file's grid). Writes
    and returns the result."""
    import tqdm

    from jaxseg import calibration, inference
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.evaluate import _cases, _run_split
    from jaxseg.workdir import save_calibration

    run, spec, split, wanted = _run_split(workdir, split, which, data_root)
    config, info = run.config, run.info
    window = inference.window_options(config, info.num_classes)
    preprocessing = Preprocessing.from_config(config.data, info.modalities)
    augmentation = inference.tta_from_config(config, info.dims, enabled=tta)
    logits, labels = calibration.sample_window_logits(
        _cases(spec, wanted),
        inference.window_logits(run.model, run.params, augmentation),
        window=window,
        preprocessing=preprocessing,
        voxels_per_window=voxels_per_window,
    )
    temperature = calibration.fit_temperature(logits, labels)
    measured = {}
    for name, t in (("before", 1.0), ("after", temperature)):
        every = calibration.Reliability.empty(num_bins)
        foreground = calibration.Reliability.empty(num_bins)
        predictor = inference.window_predictor(run.model, run.params, augmentation, t)
        cases = _cases(spec, wanted)
        if progress:
            cases = tqdm.tqdm(cases, desc=f"ECE {name}", unit="case", total=len(wanted))
        for _, image, label in cases:
            probs, grid = inference.case_probabilities(
                image.data, image.spacing, predictor, window=window, preprocessing=preprocessing
            )
            probs = inference.uncrop_probabilities(probs, grid)
            every.add(probs, label)
            foreground.add(probs, label, mask=(label > 0) | (probs.argmax(-1) > 0))
        measured[name] = {
            "nll_sampled": calibration.negative_log_likelihood(logits, labels, t),
            "ece": every.ece(),
            "ece_foreground": foreground.ece(),
            "reliability": every.diagram(),
            "reliability_foreground": foreground.diagram(),
        }
    result = {
        "temperature": temperature,
        "step": run.step,
        "checkpoint": run.checkpoint,
        "split": split,
        "num_cases": len(wanted),
        "sampled_voxels": len(labels),
        **augmentation.describe(),
        **{f"{k}_{name}": v for name, m in measured.items() for k, v in m.items()},
    }
    result["path"] = str(save_calibration(run.workdir, result))
    png = run.workdir / "reliability.png"
    calibration.write_reliability_png(
        [
            ("T=1", measured["before"]["reliability_foreground"]),
            (f"T={temperature:.3f}", measured["after"]["reliability_foreground"]),
        ],
        png,
    )
    result["plot"] = str(png)
    return result


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument("--no-tta", action="store_true", help="measure ECE without mirroring")
    parser.add_argument(
        "--voxels-per-window",
        type=int,
        default=2048,
        help="logits sampled per sliding window to fit on (Gaussian-weighted)",
    )
    parser.add_argument("--data-root", default=None, help="dataset folder, if it moved")
    args = parser.parse_args(argv)
    if args.voxels_per_window < 1:
        parser.error("--voxels-per-window must be >= 1")
    r = calibrate_run(
        args.workdir,
        split=args.split,
        which=args.checkpoint,
        data_root=args.data_root,
        tta=not args.no_tta,
        voxels_per_window=args.voxels_per_window,
        progress=True,
    )
    print(f"temperature: {r['temperature']:.4f} (fitted on {r['sampled_voxels']} voxels)")
    print(f"{'':22}{'before':>10}{'after':>10}")
    for key, what in (
        ("nll_sampled", "NLL (sampled voxels)"),
        ("ece", "ECE (all voxels)"),
        ("ece_foreground", "ECE (foreground)"),
    ):
        print(f"{what:22}{r[key + '_before']:10.4f}{r[key + '_after']:10.4f}")
    print(f"saved: {r['path']}; reliability diagram: {r['plot']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
