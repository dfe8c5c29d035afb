"""Command line of ``python -m pcdet_gciou.simulate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from pcdet_gciou.simulate.objectives import DEFAULT_LOSSES, LOSS_SPECS
from pcdet_gciou.simulate.parametrisation import PARAMETRISATIONS
from pcdet_gciou.simulate.report import markdown_table, plot_scenario, summarise, write_curves_csv, write_report
from pcdet_gciou.simulate.runner import OPTIMIZERS, run_simulation
from pcdet_gciou.simulate.scenarios import SCENARIO_ALIASES, SCENARIOS, resolve_scenario

DEFAULT_STEPS = 300
DEFAULT_BOXES = 96


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _names(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pcdet_gciou.simulate",
        description="Regress a population of predicted boxes towards their GT with each loss and compare convergence.",
    )
    parser.add_argument(
        "--steps", type=_positive_int, default=DEFAULT_STEPS, help="optimiser steps (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the populations (default %(default)s)")
    parser.add_argument(
        "--losses",
        type=_names,
        default=list(DEFAULT_LOSSES),
        help=f"comma-separated subset of {','.join(LOSS_SPECS)} (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        type=_names,
        default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} or their letters {','.join(SCENARIO_ALIASES)} "
        "(default: all)",
    )
    parser.add_argument(
        "--boxes",
        type=_positive_int,
        default=DEFAULT_BOXES,
        help="boxes per group (per size class in the scale scenario; default %(default)s)",
    )
    parser.add_argument(
        "--param",
        choices=PARAMETRISATIONS,
        default=None,
        help="parametrisation for every scenario (default: each scenario's own, see report.md)",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="optimiser for every scenario (default: each scenario's own)",
    )
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate for every scenario (default: each scenario's own)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("output/simulation"), help="output folder (default %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default %(default)s)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads for torch (default %(default)s: the tensors are small, one thread is fastest)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: not a torch device: {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda[:N], got {name!r}")
    return device


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.losses if name not in LOSS_SPECS]
    if unknown:
        parser.error(f"--losses: unknown {unknown}; expected names from {list(LOSS_SPECS)}")
    try:
        scenarios = list(dict.fromkeys(resolve_scenario(name).key for name in args.scenarios))
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    losses = list(dict.fromkeys(args.losses))

    from tqdm import tqdm

    torch.set_num_threads(args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tqdm(
        total=args.steps, desc="simulate " + ",".join(scenarios), unit="step", disable=args.no_progress, file=sys.stderr
    ) as bar:
        results = run_simulation(
            [SCENARIOS[key] for key in scenarios],
            losses,
            steps=args.steps,
            boxes_per_group=args.boxes,
            seed=args.seed,
            device=device,
            param=args.param,
            optimizer=args.optimizer,
            lr=args.lr,
            progress=bar,
        )
    summaries = [s for r in results for s in summarise(r)]
    figures = []
    for result in results:
        name = f"scenario_{result.scenario.key}.png"
        plot_scenario(result, args.out / name)
        figures.append(name)
    write_curves_csv(results, args.out / "curves.csv")
    write_report(
        results,
        summaries,
        args.out / "report.md",
        steps=args.steps,
        seed=args.seed,
        boxes_per_group=args.boxes,
        figures=figures,
    )
    print(markdown_table(summaries))
    print(
        f"\nwrote {args.out / 'curves.csv'}, {args.out / 'report.md'} and {len(figures)} figures "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
