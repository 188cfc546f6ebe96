"""``finetune``: fine-tune the e4e encoder on a folder of faces (see ``pipeline/train/finetune.py``, docs/FINETUNE.md)."""

from __future__ import annotations

import argparse

from pipeline.train.config import FREEZE_PRESETS, GROUPS, FinetuneConfig

DEFAULTS = FinetuneConfig(data="", bundle="", out="")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune the e4e encoder on a folder of faces",
        description="Fine-tune the bundle's e4e encoder on a folder of face photos with the e4e losses (pixel L2, "
                    "LPIPS, identity when the bundle has model_ir_se50.pt, W-delta regularization). Rerunning "
                    "the same command after an interruption resumes from RUN_DIR/latest.pt. Multi-GPU: "
                    "torchrun --nproc_per_node N -m pipeline finetune ...",
        epilog="example: python -m pipeline finetune --data CelebA-HQ-img --bundle models --out runs/celebahq "
               "--batch 2 --accum 4 --iters 20000",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    parser.add_argument("--data", required=True, help="folder of face photos (searched recursively); square "
                        "power-of-two images count as FFHQ-aligned, the rest are aligned first")
    parser.add_argument("--bundle", required=True, help="model bundle with the encoder to start from")
    parser.add_argument("--out", required=True, help="run directory (created; an existing run there is resumed)")
    parser.add_argument("--freeze", default=d.freeze,
                        help=f"frozen groups: {' | '.join(FREEZE_PRESETS)} or a comma list of {', '.join(GROUPS)}")
    parser.add_argument("--iters", type=int, default=d.iters, help="optimizer steps in total (resume included)")
    parser.add_argument("--batch", type=int, default=d.batch, help="faces per micro-batch per process")
    parser.add_argument("--accum", type=int, default=d.accum,
                        help="micro-batches per optimizer step (effective batch = batch x accum x processes)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    parser.add_argument("--val-split", type=float, default=d.val_split, help="fraction held out for validation")
    parser.add_argument("--val-every", type=int, default=d.val_every, help="validate (and checkpoint) every N steps")
    parser.add_argument("--val-max", type=int, default=d.val_max, help="validation images used at most")
    parser.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps")
    parser.add_argument("--keep", type=int, default=d.keep, help="step checkpoints kept (plus the best)")
    parser.add_argument("--size", type=int, default=d.size, help="encoder input and loss resolution")
    for name in ("l2", "lpips", "id", "delta"):
        parser.add_argument(f"--{name}-lambda", type=float, default=getattr(d, f"{name}_lambda"),
                            help=f"weight of the {name} loss")
    parser.add_argument("--lpips", choices=("auto", "off"), default=d.lpips,
                        help="auto: official weights from BUNDLE/lpips/, else untrained features (warned)")
    parser.add_argument("--align", choices=("auto", "yes", "no"), default=d.align, help="face alignment policy")
    parser.add_argument("--clip-grad", type=float, default=d.clip_grad, help="gradient norm clip (0: off)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the data order")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    parser.add_argument("--workers", type=int, default=d.workers, help="data loading processes")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from pipeline.train.finetune import finetune

    fields = FinetuneConfig.__dataclass_fields__
    config = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields})
    result = finetune(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run": config.out, "validation": result}))
    return 0
