"""Measure each postprocessing step alone, and the chain validation picks, as a markdown table.

    .venv/bin/python tools/postprocessing_table.py --workdir runs/demo2d --workdir runs/brats \
        [--split val] [--candidates '[{"step": "crf"}, {"step": "fill_holes"}]'] \
        [--hierarchy '{"core": "inside:edema"}'] [--no-tta] [--max-cases N] [--write]

For each workdir, on its validation split (by default), each case is predicted once
(`inference.case_probabilities`, with the run's TTA) and the baseline is what `evaluate`
does without a chain: the argmax, then the run's largest-component decision if it has one.
Then every candidate step is applied alone on top of that baseline (the CRF replaces the
argmax instead), and scored with `evaluation.score_case`: the table gives the change of
the mean foreground Dice and of the mean HD95 (mm; lower is better) against the
baseline, and the step's median time per case (the first case, which compiles the CRF,
excluded where there are two or more).

The validated chain is chosen as nnU-Net chooses its largest-component rules: the
candidates are tried in order (the CRF, if a candidate, first), each kept iff it raises the
mean foreground Dice of the chain so far and lowers no class's mean Dice. Chosen and
scored on the same validation cases, its gain is optimistic; evaluate it on the test split
(`python -m jaxseg.evaluate`) after `--write`, which stores it as the run's
`postprocess_chain.json` (evaluate and predict then apply it). Nothing is written without
`--write`. The markdown goes to stdout, or to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CANDIDATES = [
    {"step": "crf"},
    {"step": "open", "radius_mm": 1.0},
    {"step": "close", "radius_mm": 1.0},
    {"step": "fill_holes"},
    {"step": "keep_components", "top_k": 1},
    {"step": "keep_components", "top_k": 1, "foreground": True},
]


def _describe(step: dict) -> str:
    options = {k: v for k, v in step.items() if k != "step"}
    return step["step"] + (" " + json.dumps(options, separators=(",", ":")) if options else "")


def _load(workdir, split, max_cases, tta):
    from jaxseg import inference
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.data import pipeline
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.errors import JaxsegError
    from jaxseg.workdir import load_postprocessing, load_splits, load_trained

    run = load_trained(workdir)
    spec = dataset_lib.load_dataset(run.config.data.root)
    wanted = load_splits(run.workdir)[split][: max_cases or None]
    by_id = {c.case_id: c for c in spec.training}
    if not wanted or any(c not in by_id for c in wanted):
        raise JaxsegError(f"{run.workdir}: the {split} split is empty or not in {spec.root}")
    predictor = inference.window_predictor(
        run.model, run.params, inference.tta_from_config(run.config, run.info.dims, enabled=tta)
    )
    window = inference.window_options(run.config, run.info.num_classes)
    prep = Preprocessing.from_config(run.config.data, run.info.modalities)
    cases = []
    for case_id, image, label in pipeline.eval_cases(spec, [by_id[c] for c in wanted]):
        start = time.perf_counter()
        probs, grid = inference.case_probabilities(
            image.data, image.spacing, predictor, window=window, preprocessing=prep
        )
        seconds = time.perf_counter() - start
        cases.append(
            dict(case_id=case_id, image=image, label=label, probs=probs, grid=grid, seconds=seconds)
        )
    return run, spec, cases, load_postprocessing(run.workdir)


def _predict(case, chain, decision):
    """Labels of one case under `chain` (a `postprocess.Chain`), as evaluate makes them."""
    from jaxseg import inference, postprocess

    grid, image = case["grid"], case["image"]
    if chain is not None and chain.crf is not None:
        key = json.dumps(chain.crf, sort_keys=True)  # the greedy search reuses a CRF result
        cache = case.setdefault("crf", {})
        if key not in cache:
            cache[key] = chain.labels_from_probabilities(
                case["probs"], image.data[grid.box], image.spacing
            )
        pred = cache[key]
    else:
        pred = inference.argmax_labels(case["probs"])
    pred = grid.uncrop(pred)
    if decision is not None:
        pred = postprocess.apply_postprocessing(pred, decision)
    return chain.apply(pred, image.spacing) if chain is not None else pred


def _score(cases, chain, decision, labels, baseline=None):
    """(per-class mean Dice [K-1], mean Dice, mean HD95, median seconds per case)."""
    from jaxseg import evaluation

    dice, hd95, seconds = [], [], []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        if chain is not None and chain.crf is None and baseline is not None:
            pred = chain.apply(baseline[i], case["image"].spacing)  # label steps on the baseline
        else:
            pred = _predict(case, chain, decision)
        seconds.append(time.perf_counter() - start)
        rows = evaluation.score_case(
            case["case_id"], pred, case["label"], case["image"].spacing, labels
        )
        dice.append([r["dice"] for r in rows])
        hd95.append([r["hd95"] for r in rows])
    per_class = np.mean(dice, axis=0)
    timed = seconds[1:] or seconds
    return per_class, float(per_class.mean()), float(np.mean(hd95)), float(np.median(timed))


def measure(workdir, *, split, candidates, max_cases, tta):
    """Rows for one workdir: the baseline, each candidate alone, the validated chain."""
    from jaxseg import postprocess
    from jaxseg.errors import ConfigError

    run, spec, cases, decision = _load(workdir, split, max_cases, tta)
    labels = run.info.labels
    usable = []
    for cand in candidates:  # --hierarchy names one dataset's classes: skip it elsewhere
        try:
            postprocess.Chain([cand], labels)
            usable.append(cand)
        except ConfigError as err:
            if cand.get("step") != "hierarchy":
                raise
            print(f"{run.workdir}: skipping {_describe(cand)}: {err}", file=sys.stderr)
    candidates = usable
    chains = [
        postprocess.Chain([c], labels, where=f"candidate {i}") for i, c in enumerate(candidates)
    ]
    baseline = [_predict(c, None, decision) for c in cases]
    base_cls, base_dice, base_hd, _ = _score(cases, None, decision, labels)
    infer = float(np.median([c["seconds"] for c in cases][1:] or [cases[0]["seconds"]]))
    rows = [
        dict(step="none (argmax + decision)", dice=base_dice, hd95=base_hd, seconds=infer, kept="")
    ]
    for cand, chain in zip(candidates, chains):
        _, dice, hd, sec = _score(cases, chain, decision, labels, baseline)
        rows.append(
            dict(step=_describe(cand), dice=dice - base_dice, hd95=hd - base_hd, seconds=sec)
        )
    # Greedy validation in candidate order (crf first when it is one), nnU-Net's rule.
    order = sorted(range(len(candidates)), key=lambda i: candidates[i]["step"] != "crf")
    chosen, current = [], base_cls
    for i in order:
        trial = [i, *chosen] if candidates[i]["step"] == "crf" else [*chosen, i]
        chain = postprocess.Chain([candidates[j] for j in trial], labels)
        per_class, *_ = _score(cases, chain, decision, labels, baseline)
        if per_class.mean() > current.mean() and not np.any(per_class < current):
            chosen, current = trial, per_class
    for row, i in zip(rows[1:], range(len(candidates))):
        row["kept"] = "yes" if i in chosen else "no"
    final = postprocess.Chain([candidates[j] for j in chosen], labels)
    for case in cases:
        case.pop("crf", None)  # time the chain's CRF afresh
    _, dice, hd, sec = _score(
        cases, final, decision, labels, baseline if final.crf is None else None
    )
    rows.append(
        dict(
            step="validated chain: "
            + (" -> ".join(_describe(candidates[j]) for j in chosen) or "(empty)"),
            dice=dice - base_dice,
            hd95=hd - base_hd,
            seconds=sec,
            kept="",
        )
    )
    name = Path(str(spec.root)).name
    return dict(
        dataset=name, workdir=str(run.workdir), cases=len(cases), rows=rows, chain=final, run=run
    )


def render(results, split) -> str:
    lines = [
        f"| dataset ({split} cases) | step | Dice change | HD95 change (mm) | ms per case | in chain |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        for j, r in enumerate(res["rows"]):
            where = f"{res['dataset']} ({res['cases']})" if j == 0 else ""
            if j == 0:  # the baseline: absolute values and the inference time
                lines.append(
                    f"| {where} | {r['step']} | {r['dice']:.4f} | {r['hd95']:.2f} | "
                    f"{r['seconds'] * 1000:.0f} (inference) | |"
                )
            else:
                lines.append(
                    f"| {where} | {r['step']} | {r['dice']:+.4f} | {r['hd95']:+.2f} | "
                    f"{r['seconds'] * 1000:.1f} | {r['kept']} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--candidates", default=None, help="JSON list of steps (default: a generic set)")
    p.add_argument(
        "--hierarchy", default=None, help='JSON constraints, e.g. {"core": "inside:edema"}'
    )
    p.add_argument("--max-cases", type=int, default=0, help="first N cases of the split (0: all)")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--write", action="store_true", help="store each run's validated chain")
    p.add_argument("--out", default=None, help="write the markdown here instead of stdout")
    args = p.parse_args(argv)

    from jaxseg import postprocess
    from jaxseg.workdir import POSTPROCESS_CHAIN_FILE

    candidates = json.loads(args.candidates) if args.candidates else list(DEFAULT_CANDIDATES)
    if args.hierarchy:
        candidates.append({"step": "hierarchy", "constraints": json.loads(args.hierarchy)})
    results = []
    for w in args.workdir:
        res = measure(
            w,
            split=args.split,
            candidates=candidates,
            max_cases=args.max_cases,
            tta=not args.no_tta,
        )
        results.append(res)
        if args.write:
            postprocess.save_chain(res["chain"], res["run"].workdir / POSTPROCESS_CHAIN_FILE)
            print(f"wrote {res['run'].workdir / POSTPROCESS_CHAIN_FILE}", file=sys.stderr)
    text = render(results, args.split) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    from jaxseg import cli

    cli.run(main)
