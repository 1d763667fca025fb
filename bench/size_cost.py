"""What a bigger model costs at inference: two fitted models side by side, in one process, interleaved.

    python -m bench.size_cost   # base: the 256 px fit (variant size256), candidate: the 384 px default
    python -m bench.size_cost --base A --candidate B --out context_cost   # any two (results named --out)

Issue 20 bounds the inference cost of a new default at batch 8 by 1.5 x today's (`bench/cost.py`). Both
models are exported here as a fit exports them (`training.export.export_onnx`, validated on 16 good images of
the set), then each round times, for the three image shapes of bench/cost.py at batch 1 and 8, `inspect` of
each model on PyTorch (eager) and on ONNX Runtime (the service's default CPU runtime), one cell after the
other. Reported: median images/s over rounds and the cost ratio (base images/s over candidate images/s, so
2.0 = the candidate takes twice the time) on the same runtime, and against the base on PyTorch eager.
Writes bench/results/<out>.{json,md} (size_cost by default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from bench.cost import SIZES, images_of, rate
from bench.fit_eval import machine
from models.detector import Detector
from models.portable import PortableDetector
from training.data import good_images
from training.export import export_onnx, validation_sample

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("pytorch", "onnxruntime")


def _set_of(model: Path) -> Path:
    """The shared set a bench model was fitted on (accuracy_<set> or variant_<set>_<variant>)."""
    sets = ROOT.parent / "shared" / "datasets"
    found = [d for d in sets.iterdir() if d.is_dir() and model.stem.split("_", 1)[1].startswith(d.name)]
    if not found:
        raise SystemExit(f"{model}: not named after a set in {sets}")
    return max(found, key=lambda d: len(d.name))


def describe(det: Detector) -> str:
    """A model's column label: its canvas, its learned context where it has one, and its SAE's atoms."""
    context = det.config.scoring.context
    return (f"{det.config.preprocess.size} px" + (f", context {context}" if context else "")
            + f", {det.sae.W_dec.shape[1]} atoms")


def table(result: dict, command: str) -> str:
    """The results file's table, from its JSON."""
    b, c, med = result["models"]["base"], result["models"]["candidate"], result["median_images_per_s"]
    lines = [f"Machine: {result['machine']}, {result['threads']} intra-op threads; base `{result['base']}` ({b}), "
             f"candidate `{result['candidate']}` ({c}); median of {result['rounds']} interleaved rounds of "
             f"{result['seconds']:g} s per cell; command: `{command}`", "",
             "`inspect` images/s; cost = base images/s / candidate images/s (1.5 = the candidate takes 1.5 x the "
             "time); ONNX Runtime is the service's default CPU runtime, PyTorch eager the runtime before it", "",
             f"| image | batch | {b} PyTorch | {b} ONNX Runtime | {c} PyTorch | {c} ONNX Runtime | "
             f"cost, PyTorch | cost, ONNX Runtime | {c} ONNX Runtime against {b} PyTorch |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = ("base|pytorch", "base|onnxruntime", "candidate|pytorch", "candidate|onnxruntime")
    for name in SIZES:
        for bs in (1, 8):
            v = {k: med[f"{k}|{name}|{bs}"] for k in keys}
            lines.append(f"| {name} | {bs} | " + " | ".join(f"{v[k]:.1f}" for k in keys) + " | "
                         f"{v['base|pytorch'] / v['candidate|pytorch']:.2f} | "
                         f"{v['base|onnxruntime'] / v['candidate|onnxruntime']:.2f} | "
                         f"{v['base|pytorch'] / v['candidate|onnxruntime']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    work = ROOT / "bench" / "work"
    p = argparse.ArgumentParser()
    p.add_argument("--base", type=Path, default=work / "variant_magnetic_tile_size256.safetensors")
    p.add_argument("--candidate", type=Path, default=work / "accuracy_magnetic_tile.safetensors")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--out", default="size_cost", help="results file name under bench/results")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite <out>.md from <out>.json (column labels read from the two models)")
    a = p.parse_args()
    out = ROOT / "bench" / "results"
    command = f"python -m bench.size_cost --base {a.base} --candidate {a.candidate} --out {a.out}"
    if a.table_only:
        result = json.loads((out / f"{a.out}.json").read_text())
        result["models"] = {role: describe(Detector.from_artifact(path, "cpu"))
                            for role, path in (("base", a.base), ("candidate", a.candidate))}
        (out / f"{a.out}.md").write_text(table(result, command))
        return
    for m in (a.base, a.candidate):
        if not m.is_file():
            raise SystemExit(f"{m}: no such model; fit it with `python -m bench.accuracy` (--variants size256)")
    torch.set_num_threads(torch.get_num_threads())
    data = {name: images_of(hw) for name, hw in SIZES.items()}
    runners, sizes = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for role, path in (("base", a.base), ("candidate", a.candidate)):
            det = Detector.from_artifact(path, "cpu")
            onnx = Path(d) / f"{role}.onnx"
            export_onnx(det, path, onnx, validation_sample(good_images([_set_of(path)]), 16))
            portable = PortableDetector(onnx)
            sizes[role] = describe(det)
            for runtime, scorer in (("pytorch", det), ("onnxruntime", portable)):
                pictures = {name: [scorer.decode(b) for b in blobs] for name, blobs in data.items()}
                runners[f"{role}|{runtime}"] = (scorer, pictures)
        samples: dict[str, list[float]] = {}
        for r in range(a.rounds):
            for name in SIZES:
                for bs in (1, 8):
                    for key, (scorer, pictures) in runners.items():
                        samples.setdefault(f"{key}|{name}|{bs}", []).append(rate(
                            lambda s=scorer, pics=pictures[name][:bs]: len(s.inspect(pics)), a.seconds))
            print(f"round {r + 1}/{a.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {"machine": machine(), "threads": torch.get_num_threads(), "base": a.base.name,
              "candidate": a.candidate.name, "models": sizes, "rounds": a.rounds, "seconds": a.seconds,
              "median_images_per_s": med, "samples": samples}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.out}.json").write_text(json.dumps(result, indent=2))
    md = table(result, command)
    (out / f"{a.out}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
