"""`refseg demo` as a function: every step writes under one output folder.

    out/synth/            the synthetic benchmark (grefcoco layout)
    out/run/              the training run (config, checkpoints, logs, curves.png)
    out/predictions.jsonl the model's val predictions (scorable by `refseg score`)
    out/metrics.json      model and baselines on val, same scorer as `refseg score`
    out/overlays/         a few val samples drawn with the model's answer
    out/curves.png        training curves
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from refseg.errors import ConfigError

# The GRES numbers the report compares (all "higher is better").
GRES_KEYS = ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9")
# The metrics the verdict compares: GRES's headline four. Pr@X is shown but not judged:
# both baselines score 0 on it by construction, and small masks tie them at Pr@0.9 = 0.
VERDICT_KEYS = ("gIoU", "cIoU", "N-acc", "T-acc")


@dataclass
class DemoOptions:
    model: str = "instalign-tiny"
    out: str = "runs/demo"
    minutes: float | None = None  # training budget; None: the config's train.max_minutes
    images: int = 5000  # 3,500 training images: a tiny model overfits 700 within minutes
    size: int | None = None  # synthetic image side; None: the model's input side
    seed: int = 0
    overlays: int = 8
    overrides: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class DemoReport:
    """Metrics of the model and of each baseline on the val split (scorer dicts)."""

    out: Path
    model: dict
    baselines: dict[str, dict]

    @property
    def beats_baselines(self) -> bool:
        """True when the model beats every baseline on gIoU, cIoU, N-acc and T-acc (N-acc
        and T-acc are each perfect for one baseline by construction, so those two are
        compared against the other baseline only)."""
        for name, metrics in self.baselines.items():
            for key in VERDICT_KEYS:
                base, ours = metrics.get(key), self.model.get(key)
                if base is None or ours is None or base >= 100.0:
                    continue
                if ours <= base:
                    return False
        return True


def build_config(options: DemoOptions, data_dir: Path):
    from refseg.config import apply_overrides
    from refseg.methods.registry import variant

    config = variant(options.model)
    config.data.format = "grefcoco"
    config.data.root = str(data_dir)
    config.data.images = str(data_dir / "images")
    if options.minutes is not None:
        config.train.max_minutes = options.minutes
    config.train.seed = options.seed
    return apply_overrides(config, options.overrides)


def comparison_table(report: DemoReport) -> str:
    """Model beside the baselines, one row per GRES metric."""
    names = ["model", *report.baselines]
    columns = [report.model, *report.baselines.values()]
    lines = [f"{'':<8}" + "".join(f"{n:>13}" for n in names)]
    for key in GRES_KEYS:
        cells = "".join(
            f"{'n/a' if m.get(key) is None else format(m[key], '.2f'):>13}" for m in columns
        )
        lines.append(f"{key:<8}{cells}")
    return "\n".join(lines)


def run_demo(options: DemoOptions) -> DemoReport:
    from refseg.data.load import load_split
    from refseg.data.synth import check_arguments, generate
    from refseg.engine.evaluate import score
    from refseg.engine.trainer import check_model_config, train
    from refseg.io.atomic import check_output, write_json
    from refseg.io.predictions import write_predictions

    out = Path(options.out)
    data_dir = out / "synth"
    say = _printer()
    config = build_config(options, data_dir)
    # Everything that needs no data is checked before minutes of generating it.
    check_output(out, folder=True)
    check_model_config(config)
    if (out / "run" / "checkpoints").exists():
        raise ConfigError(f"{out / 'run'}: holds the model of an earlier demo; remove it "
                          f"(rm -r {out}) or give another --out")
    # Images at the network's input side by default: scoring at the original size then
    # measures the model, not the upsampling of its stride-4 masks to a larger image.
    size = options.size or config.data.image_size
    check_arguments("grefcoco", options.images, size, options.seed)
    say(f"1/4 synthetic benchmark ({options.images} images of {size} px) -> {data_dir}")
    generate(data_dir, layout="grefcoco", images=options.images, size=size, seed=options.seed)

    say(f"2/4 training {options.model} for at most {config.train.max_minutes:g} min "
        f"-> {out / 'run'}")
    result = train(config, out / "run", progress=options.progress)

    say("3/4 evaluating on val beside the trivial baselines")
    val = load_split("grefcoco", data_dir, config.data.val_split, images=data_dir / "images")
    predictor = _load_predictor(result)
    predictions = _predict(predictor, val, options.progress)
    write_predictions(out / "predictions.jsonl", predictions)
    report = DemoReport(out, score(val, predictions), {})
    from refseg.demo.baselines import BASELINES

    for name, make in BASELINES.items():
        report.baselines[name] = score(val, make(val))
    write_json(out / "metrics.json", {"model": options.model, "split": val.split,
                                      "metrics": report.model, "baselines": report.baselines,
                                      "iterations": result.iteration})

    say(f"4/4 overlays and curves -> {out}")
    _overlays(predictor, val, out / "overlays", options.overlays)
    curves = out / "run" / "curves.png"
    if curves.exists():
        shutil.copyfile(curves, out / "curves.png")

    from refseg.metrics.scorer import format_table

    print(format_table(report.model, f"{options.model} on synthetic val"))
    print()
    print(comparison_table(report))
    verdict = "beats" if report.beats_baselines else "does NOT beat"
    print(f"\n{options.model} {verdict} both trivial baselines; files in {out}")
    return report


def _printer():
    def say(message: str) -> None:
        print(f"refseg demo: {message}", file=sys.stderr, flush=True)

    return say


def _load_predictor(result):
    """The final model: the report is on val, so it must not be the checkpoint that val
    (a subset of it, at each validation) selected as best."""
    from refseg.predictor import load

    return load(result.checkpoint, device="cpu")


def _predict(predictor, dataset, progress: bool):
    from refseg.engine import distributed
    from refseg.engine.evaluate import predict_split

    return predict_split(
        predictor.model,
        predictor.tokenizer,
        dataset,
        image_size=predictor.image_size,
        thresholds=predictor.thresholds,
        ctx=distributed.DistContext(device=predictor.device),
        batch_size=16,
        progress=progress,
    )


def _overlays(predictor, dataset, folder: Path, count: int) -> None:
    """Draw ``count`` val samples, spread over the split, with the model's answer."""
    from refseg.visualize import save_overlay

    step = max(1, len(dataset) // max(count, 1))
    for sample in dataset.samples[::step][:count]:
        pixels = predictor.load_pixels(dataset.image_path(sample))
        result = predictor.predict(pixels, sample.sentence)
        save_overlay(folder / f"sent_{sample.sent_id}.png", pixels, result, sample.sentence)
