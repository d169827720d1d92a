"""Single-output vs deep supervision vs LoMix on the synthetic phantoms (CPU-scale LoMix replication).

For each supervision mode and seed, trains the same model with the same iteration budget
(``segfuse.train.Trainer``), then predicts the held-out test phantoms (``imagesTs``/``labelsTs``) and
reports per-class and mean foreground Dice as mean ± std over seeds. Writes ``OUT/runs.csv`` (one row
per run) and ``OUT/summary.md``.

    python -m segfuse.bench.supervision_experiment --iterations 150 --seeds 0 1 2 --out results/supervision
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def run_one(supervision: str, seed: int, args) -> dict:
    from segfuse.data import NnUNetDataset
    from segfuse.inference import predict_volume
    from segfuse.metrics import dice_score, nanmean
    from segfuse.train.trainer import TrainConfig, Trainer
    run_dir = os.path.join(args.out, f"{supervision}_seed{seed}")
    cfg = TrainConfig(model=args.model, data=args.data, cache_dir=args.cache_dir, run_dir=run_dir, dims=args.dims,
                      supervision=supervision, iterations=args.iterations, iters_per_epoch=args.iters_per_epoch,
                      batch_size=args.batch_size, val_every=10 ** 6, seed=seed, progress=False,
                      augment=args.augment, model_kwargs=dict(channels=tuple(args.channels))
                      if args.model == "unet" else {}, resume=os.path.isfile(os.path.join(run_dir, "last.pt")))
    t0 = time.time()
    tr = Trainer(cfg)
    tr.fit()
    train_s = time.time() - t0
    ds = NnUNetDataset(tr.data_dir)
    dice = {c: [] for c in range(1, ds.num_classes)}
    for cid in ds.case_ids("Ts"):
        case = ds.load_case(cid, "Ts")
        img, lab, _ = tr.pre(case.image, case.label, case.spacing)
        pred = predict_volume(tr.model, img, cfg.dims, tr.patch, ds.num_classes).argmax(0)
        for c in dice:
            dice[c].append(dice_score(pred == c, lab == c))
    row = {"supervision": supervision, "seed": seed, "train_s": round(train_s, 1), "num_maps": tr.num_maps}
    row.update({f"dice_{ds.class_names[c]}": nanmean(v) for c, v in dice.items()})
    row["dice_mean"] = nanmean(row[f"dice_{ds.class_names[c]}"] for c in dice)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--model", default="unet")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="unet widths")
    p.add_argument("--dims", type=int, default=2)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--iters-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--augment", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--supervisions", nargs="+", default=["single", "deep", "lomix"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/supervision")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    from segfuse.train.checkpoint import write_csv
    rows = []
    for seed in args.seeds:                 # seed-major: a cut-short run still compares all modes
        for sup in args.supervisions:
            rows.append(run_one(sup, seed, args))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
            write_csv(rows, os.path.join(args.out, "runs.csv"))
    keys = [k for k in rows[0] if k.startswith("dice_")]
    lines = [f"Supervision experiment: model {args.model} {args.dims}D, {args.iterations} iterations x batch "
             f"{args.batch_size}, seeds {args.seeds}, test Dice on the held-out phantoms (mean ± std over seeds)",
             "", "| supervision | " + " | ".join(k[5:] for k in keys) + " | train s |",
             "|---" * (len(keys) + 2) + "|"]
    for sup in args.supervisions:
        r = [x for x in rows if x["supervision"] == sup]
        if not r:
            continue
        cells = [f"{np.mean([x[k] for x in r]):.4f} ± {np.std([x[k] for x in r]):.4f}" for k in keys]
        lines.append(f"| {sup} | " + " | ".join(cells) + f" | {np.mean([x['train_s'] for x in r]):.0f} |")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
