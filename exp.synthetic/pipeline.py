"""The whole method on the embedded synthetic dataset, end to end, on whatever machine this is.

    python exp.synthetic/pipeline.py [--seed S] [--out DIR] [--quick]

1. generates the synthetic VOC-shaped dataset (1/8 of the training images labeled),
2. trains the deep (ResNet-101 family) and the wide (WRN-50-2 family) teachers with CPS + CutMix,
3. trains the baselines — a supervised-only ResNet-18 student and a CPS ResNet-18 student,
4. distills the ResNet-18 student with MGD from the two frozen teachers,
5. collects every network's val mIoU (each run evaluates its final network) and writes results.json,
   results.md, miou.png, qualitative.png.

Each stage is the experiment folder beside this file run as ``python train.py`` (a real training run
with checkpoints and logs under ``OUT/<stage>/``). Re-running skips finished stages and resumes an
interrupted one. ``--quick`` runs the same stages on a smaller dataset with a short schedule (tests).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent

# (result key, experiment folder, what it is, stages it needs)
STAGES = [
    ("teacher_deep", "syn8.resnet101_deeplabv3plus", "T_D  ResNet-101 family, CPS", ()),
    ("teacher_wide", "syn8.wrn50_2_deeplabv3plus", "T_W  WRN-50-2 family, CPS", ()),
    ("student_supervised", "syn8.resnet18_supervised", "ResNet-18, labeled only", ()),
    ("student_cps", "syn8.resnet18_cps", "ResNet-18, CPS", ()),
    ("student_mgd", "syn8.resnet18_deeplabv3plus", "ResNet-18, MGD", ("teacher_deep", "teacher_wide")),
]
# Dataset and schedule of each mode (overrides of every stage); everything else is the experiment folders' config.
MODES = {"default": {"num_train": 480, "num_val": 600, "size": 64, "overrides": []},
         "quick": {"num_train": 96, "num_val": 24, "size": 48, "overrides": ["epochs=2", "crop_size=48", "eval_crop=48"]}}


def stage_command(folder: str, out: Path, data_root: Path, seed: int, overrides: list[str]) -> list[str]:
    """``python train.py`` of one experiment folder, resuming if it was interrupted before."""
    return [sys.executable, "train.py", "--resume", "auto", f"data_root={data_root}", f"output_dir={out}",
            f"seed={seed}", "num_workers=0", *overrides]


def run_stages(out: Path, data_root: Path, seed: int, overrides: list[str],
               jobs: int) -> tuple[dict[str, float], list[str]]:
    """Run the unfinished stages, up to ``jobs`` at a time, each after the stages it needs.

    Small networks use a CPU core far better in separate processes than through intra-op threads,
    so on a machine with few cores independent stages run side by side with one thread each.
    A stage's log goes to ``OUT/<stage>/stdout.txt``; finished stages leave ``done.json``.
    Returns every stage's training seconds (a reused stage's from its ``done.json``) and the reused stages.
    """
    seconds, running, pending, reused = {}, {}, list(STAGES), []
    threads = max(1, (os.cpu_count() or 1) // jobs)
    for key, _, title, _ in STAGES:
        done = out / key / "done.json"
        if done.exists():
            seconds[key] = json.loads(done.read_text())["seconds"]
            pending = [s for s in pending if s[0] != key]
            reused.append(key)
            print(f"[{key}] already trained ({title}), skipping", flush=True)
    while pending or running:
        for stage in list(pending):
            key, folder, title, needs = stage
            if len(running) >= jobs or any(n not in seconds for n in needs):
                continue
            (out / key).mkdir(parents=True, exist_ok=True)
            log = open(out / key / "stdout.txt", "a")
            env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
            proc = subprocess.Popen(stage_command(folder, out / key, data_root, seed, overrides), cwd=HERE / folder,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
            running[key] = (proc, time.time(), log)
            pending.remove(stage)
            print(f"[{key}] started: {title} ({folder}), log {out / key / 'stdout.txt'}", flush=True)
        time.sleep(0.5)
        for key, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[key]
            if proc.returncode:
                for other, _, _ in running.values():
                    other.terminate()
                raise SystemExit(f"stage {key} failed (exit {proc.returncode}); see {out / key / 'stdout.txt'}")
            seconds[key] = round(time.time() - t0, 1)
            (out / key / "done.json").write_text(json.dumps({"seconds": seconds[key]}) + "\n")
            print(f"[{key}] finished in {seconds[key]:.0f} s", flush=True)
    return seconds, reused


def final_network_path(stage_dir: Path) -> Path:
    snaps = sorted(stage_dir.glob("checkpoints/epoch-*.pth"), key=lambda p: int(p.stem.split("-")[1]))
    if not snaps:
        raise SystemExit(f"{stage_dir}: no snapshot was written")
    return snaps[-1]


def _percent(v) -> float | None:
    return round(100 * v, 2) if isinstance(v, float) and math.isfinite(v) else None


def stage_result(snapshot: Path, eval_settings: dict) -> dict | None:
    """The val metrics the stage's own run recorded for ``snapshot`` (its final evaluation, in the
    ``eval_results.json`` beside it), or None if it has none made with ``eval_settings``."""
    from furnace.engine.checkpoint import eval_results_file, read_eval_results

    entry = read_eval_results(eval_results_file(snapshot)).get(snapshot.name)
    if not isinstance(entry, dict) or entry.get("eval") != eval_settings or not isinstance(entry.get("miou"), float):
        return None
    return {"miou": entry["miou"], "iou": entry["iou"]}


def evaluate_all(paths: dict[str, Path], data_root: Path, size: int):
    """mIoU and per-class IoU of each network on the val set, and its predictions of a few val images
    for the figure. Each training run already evaluated its final network on this val set with these
    settings; that result is reused, and a network without one is evaluated here."""
    import torch

    import furnace.methods  # noqa: F401 (registers the methods a config may name)
    from furnace.config import prepare, synthetic_config
    from furnace.datasets import build_val_dataset
    from furnace.engine import Evaluator
    from furnace.engine.checkpoint import eval_settings
    from furnace.models import load_segmentor

    cfg = synthetic_config()
    cfg.data_root = str(data_root)
    cfg.eval_crop = size
    cfg = prepare(cfg)
    settings = eval_settings(cfg)
    dataset = build_val_dataset(cfg)
    samples = [dataset[i] for i in range(4)]
    evaluator = Evaluator(cfg, torch.device("cpu"))
    results, preds = {}, {}
    for key, path in paths.items():
        net = load_segmentor(path)
        results[key] = stage_result(path, settings)
        if results[key] is None:
            res = evaluator.run(net, dataset)
            results[key] = {"miou": res["miou"], "iou": dict(zip(res["class_names"], res["iou"]))}
        with torch.inference_mode():
            preds[key] = [evaluator.predict(net, s["image"]).argmax(0).numpy().astype(np.uint8) for s in samples]
    return results, preds, samples


# ----------------------------------------------------------------------------- figures


def draw_bar_chart(miou: dict[str, float], path: Path) -> None:
    """Horizontal bar chart of mIoU per network (OpenCV, no GUI)."""
    rows = list(miou.items())
    width, row_h, left = 900, 44, 240
    img = np.full((row_h * len(rows) + 70, width, 3), 255, np.uint8)
    cv2.putText(img, "val mIoU (%) on the synthetic dataset, 1/8 labeled", (20, 32), cv2.FONT_HERSHEY_SIMPLEX,
                0.7, (0, 0, 0), 2, cv2.LINE_AA)
    colors = {"teacher": (96, 160, 60), "student_mgd": (60, 60, 200), "student": (160, 130, 90)}
    for i, (key, value) in enumerate(rows):
        y = 56 + i * row_h
        color = colors["teacher"] if key.startswith("teacher") else colors.get(key, colors["student"])
        bar = int((width - left - 90) * value / 100)
        cv2.rectangle(img, (left, y), (left + bar, y + row_h - 12), color, -1)
        cv2.putText(img, key, (12, y + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{value:.1f}", (left + bar + 8, y + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def draw_qualitative(samples, preds: dict[str, list[np.ndarray]], layout, path: Path) -> None:
    """Grid: one row per val image; columns image, ground truth, then each network's prediction."""
    cols = ["image", "ground truth", *preds.keys()]
    scale = 2
    cells = []
    for i, sample in enumerate(samples):
        row = [sample["image"], layout.colorize(sample["label"])] + [layout.colorize(preds[k][i]) for k in preds]
        row = [cv2.resize(c, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for c in row]
        cells.append(row)
    h, w = cells[0][0].shape[:2]
    pad, head = 6, 30
    grid = np.full((head + len(cells) * (h + pad), len(cols) * (w + pad), 3), 255, np.uint8)
    for j, name in enumerate(cols):
        cv2.putText(grid, name.replace("student_", "").replace("teacher_", "T_"), (j * (w + pad) + 4, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            y, x = head + i * (h + pad), j * (w + pad)
            grid[y:y + h, x:x + w] = cell
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="dataset generator and training seed")
    parser.add_argument("--out", default="output/synthetic", help="output folder (default: output/synthetic)")
    parser.add_argument("--quick", action="store_true", help="small data and a short schedule (about a minute)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="stages trained side by side (default: 2, or 1 on a single core)")
    args = parser.parse_args(argv)

    from furnace.datasets.layouts import LAYOUTS
    from furnace.datasets.make_synthetic import generate

    name = "quick" if args.quick else "default"
    mode = MODES[name]
    out = Path(args.out).resolve()
    data_root = out / "DATA"
    made = out / "mode.txt"  # finished stages are reused only by a run of the same mode and seed
    held = made.read_text().split() if made.exists() else [name, str(args.seed)]
    if held != [name, str(args.seed)]:
        raise SystemExit(f"{out} holds a run of mode/seed {' '.join(held)}, not {name} {args.seed}: "
                         f"pass another --out (or delete that folder)")
    out.mkdir(parents=True, exist_ok=True)
    made.write_text(f"{name} {args.seed}\n")
    seconds = {}
    start = t0 = time.time()
    marker = data_root / "synthetic" / ".complete"
    if not marker.exists():
        print(f"[data] generating the synthetic dataset in {data_root / 'synthetic'}", flush=True)
        generate(data_root / "synthetic", seed=args.seed, num_train=mode["num_train"], num_val=mode["num_val"],
                 size=mode["size"], progress=True)
        marker.write_text("ok\n")
    seconds["data"] = round(time.time() - t0, 1)

    stage_seconds, reused = run_stages(out, data_root, args.seed, mode["overrides"], args.jobs)
    seconds.update(stage_seconds)

    paths = {key: final_network_path(out / key) for key, _, _, _ in STAGES}
    t0 = time.time()
    results, preds, samples = evaluate_all(paths, data_root, mode["size"])
    seconds["evaluation"] = round(time.time() - t0, 1)
    miou = {k: round(100 * r["miou"], 2) for k, r in results.items()}
    summary = {
        "miou": miou,
        "total_seconds": round(time.time() - start, 1),  # this invocation's: reused stages cost it nothing
        "reused_stages": reused,
        "jobs": args.jobs,
        "seconds": seconds,
        "labeled_ratio": 8,
        "seed": args.seed,
        "mode": name,
        "per_class_iou": {k: {name: _percent(v) for name, v in r["iou"].items()}
                          for k, r in results.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = format_table(summary)
    (out / "results.md").write_text(table + "\n")
    draw_bar_chart(miou, out / "miou.png")
    draw_qualitative(samples, {k: preds[k] for k in ("student_supervised", "student_mgd", "teacher_deep", "teacher_wide")},
                     LAYOUTS["synthetic"], out / "qualitative.png")
    print("\n" + table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'miou.png'}, {out / 'qualitative.png'}")
    return summary


def format_table(summary: dict) -> str:
    titles = {key: title for key, _, title, _ in STAGES}
    lines = [
        f"Synthetic dataset, 1/{summary['labeled_ratio']} labeled, seed {summary['seed']}"
        + (f" ({summary['mode']} mode)" if summary["mode"] != "default" else ""),
        "",
        "| network | what | val mIoU (%) | train wall time (s) |",
        "|---|---|---:|---:|",
    ]
    for key, value in summary["miou"].items():
        lines.append(f"| {key} | {titles[key]} | {value:.2f} | {summary['seconds'].get(key, 0):.0f} |")
    lines.append("")
    reused = summary.get("reused_stages", [])
    wall = f"pipeline wall time {summary['total_seconds']:.0f} s ({summary['jobs']} stages at a time)"
    if reused:
        wall = (f"this run's wall time {summary['total_seconds']:.0f} s; {len(reused)} of {len(STAGES)} stages were "
                f"trained by an earlier run ({', '.join(reused)}) and their train times are from then")
    lines.append(f"MGD − supervised: {summary['miou']['student_mgd'] - summary['miou']['student_supervised']:+.2f} "
                 f"mIoU; {wall}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
