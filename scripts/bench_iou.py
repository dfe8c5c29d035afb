"""Throughput of the rotated IoU and the GCIoU loss: pairs/s, min and median over repeats, peak memory.

Rows: ``rotated_iou_3d`` forward (no graph) and forward+backward (gradient w.r.t. the predictions, as in
training), ``gciou_loss`` forward+backward, ``rotated_iou_3d_matrix`` (N x N, no gradient), and the float64 shapely
reference loop for scale. CPU always (``--threads``), CUDA when present. Inputs come from
``pcdet_gciou.geometry.samples``, the generator the tests use.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the row. On CPU the peak
resident set size (VmHWM, reset per row through ``/proc/self/clear_refs``) above the resident size before the row;
it counts everything the process touched, allocator caching included. Where the reset is not available it falls back
to the growth of ``ru_maxrss``, which only shows a row that raises the process-wide peak (marked ``>=``).

Benchmark on an idle machine: other processes on few cores distort OpenMP timings badly.

Examples:
    python scripts/bench_iou.py --quick
    python scripts/bench_iou.py --threads 2 --repeats 7 --compile
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pcdet_gciou.geometry import box_corners_bev, rotated_iou_3d, rotated_iou_3d_matrix  # noqa: E402
from pcdet_gciou.geometry import samples as box_samples  # noqa: E402
from pcdet_gciou.losses import gciou_loss  # noqa: E402

FULL_SIZES = [1_000, 10_000, 100_000, 1_000_000]
FULL_MATRIX_SIZES = [2_000, 20_000]
QUICK_SIZES = [1_000]
QUICK_MATRIX_SIZES = [300]


@dataclass
class Row:
    device: str
    benchmark: str
    n: str
    pairs: int
    times_s: list[float]
    memory: str
    note: str = ""

    def cells(self) -> list[str]:
        best, median = min(self.times_s), statistics.median(self.times_s)
        return [
            self.device,
            self.benchmark,
            self.n,
            f"{best * 1e3:.2f}",
            f"{median * 1e3:.2f}",
            f"{self.pairs / best:.3g}",
            f"{self.pairs / median:.3g}",
            self.memory,
            self.note,
        ]


HEADER = [
    "device",
    "benchmark",
    "N",
    "min ms",
    "median ms",
    "pairs/s (min)",
    "pairs/s (median)",
    "peak mem MiB",
    "note",
]


class PeakMemory:
    """Peak memory of one row, in MiB above the level at its start (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.exact = _reset_peak_rss()
            self.start = _status_kib("VmRSS") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.text = f"{(torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20:.1f}"
        elif self.exact:
            self.text = f"{max(_status_kib('VmHWM') - self.start, 0) / 1024:.1f}"
        else:
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start  # KiB on Linux
            self.text = f">={max(grown, 0) / 1024:.1f}"
        return False


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def synchronizer(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_repeats(step, repeats: int, device: torch.device) -> list[float]:
    """One warm-up call, then ``repeats`` timed calls, each ending in a device sync."""
    sync = synchronizer(device)
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
    )  # CUDA / CPU allocator wording


def iou_functions(use_compile: bool):
    """(label, function) pairs for ``rotated_iou_3d``: eager, plus a compiled path on request."""
    functions = [("rotated_iou_3d", rotated_iou_3d)]
    if not use_compile:
        return functions
    if "compiled" in inspect.signature(rotated_iou_3d).parameters:
        functions.append(("rotated_iou_3d[compiled=True]", functools.partial(rotated_iou_3d, compiled=True)))
    else:
        functions.append(("torch.compile(rotated_iou_3d)", torch.compile(rotated_iou_3d)))
    return functions


def forward_step(fn, boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    with torch.no_grad():
        fn(boxes1, boxes2)


def forward_backward_step(fn, pred: torch.Tensor, boxes2: torch.Tensor) -> None:
    pred.grad = None
    fn(pred, boxes2).sum().backward()


def bench_paired(device: torch.device, sizes, repeats: int, dtype: torch.dtype, use_compile: bool) -> list[Row]:
    rows = []
    for n in sizes:
        boxes1, boxes2 = box_samples.random_box_pairs(n, seed=0, dtype=dtype, device=device)
        pred = boxes1.clone().requires_grad_(True)
        forward = functools.partial(forward_step, boxes1=boxes1, boxes2=boxes2)
        forward_backward = functools.partial(forward_backward_step, pred=pred, boxes2=boxes2)

        cases = []
        for label, fn in iou_functions(use_compile):
            cases.append((f"{label} fwd", functools.partial(forward, fn), label != "rotated_iou_3d"))
            cases.append((f"{label} fwd+bwd", functools.partial(forward_backward, fn), label != "rotated_iou_3d"))
        cases.append(("gciou_loss fwd+bwd", functools.partial(forward_backward, gciou_loss), False))
        rescaled = functools.partial(gciou_loss, grad_rescale=True)  # Eq. 18: must cost no second overlap
        cases.append(("gciou_loss grad_rescale fwd+bwd", functools.partial(forward_backward, rescaled), False))
        for label, step, compiled in cases:
            note = ""
            try:
                step()  # first call outside the memory window: compilation and caches are not the row's cost
                with PeakMemory(device) as memory:
                    times = time_repeats(step, repeats, device)
            except Exception as exc:  # a compile failure falls back to eager; anything else is re-raised
                if is_out_of_memory(exc):
                    rows.append(Row(str(device), label, size_label(n), n, [math.inf], "OOM", "did not fit"))
                    continue
                if not compiled:
                    raise
                message = f"compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); eager timed"
                print(f"[bench_iou] {label}: {message}", file=sys.stderr)
                eager_step = forward if label.endswith(" fwd") else forward_backward
                with PeakMemory(device) as memory:
                    times = time_repeats(functools.partial(eager_step, rotated_iou_3d), repeats, device)
                note = "compile failed -> eager"
            rows.append(Row(str(device), label, size_label(n), n, times, memory.text, note))
        del boxes1, boxes2, pred
    return rows


def bench_matrix(device: torch.device, sizes, repeats: int, dtype: torch.dtype) -> list[Row]:
    """N x N IoU of boxes spread over an 80 m x 80 m scene (the size of a KITTI-like point-cloud range)."""
    rows = []
    for n in sizes:
        note = ""
        while True:
            boxes = box_samples.random_boxes(n, seed=1, dtype=dtype, device=device, extent=40.0)
            others = box_samples.random_boxes(n, seed=2, dtype=dtype, device=device, extent=40.0)
            try:
                with PeakMemory(device) as memory:
                    times = time_repeats(functools.partial(rotated_iou_3d_matrix, boxes, others), repeats, device)
                break
            except Exception as exc:
                if not is_out_of_memory(exc) or n <= 256:
                    raise
                del boxes, others
                note = f"{note} {n} did not fit;".strip()
                n //= 2
        rows.append(Row(str(device), "rotated_iou_3d_matrix", f"{n}x{n}", n * n, times, memory.text, note))
    return rows


def shapely_iou_3d(boxes1: torch.Tensor, boxes2: torch.Tensor) -> list[float]:
    """Float64 reference loop: BEV polygon intersection by shapely times the z-overlap, one pair at a time."""
    from shapely.geometry import Polygon

    corners1, corners2 = box_corners_bev(boxes1).tolist(), box_corners_bev(boxes2).tolist()
    ious = []
    for box1, box2, poly1, poly2 in zip(boxes1.tolist(), boxes2.tolist(), corners1, corners2):
        z_overlap = min(box1[2] + box1[5] / 2, box2[2] + box2[5] / 2) - max(
            box1[2] - box1[5] / 2, box2[2] - box2[5] / 2
        )
        intersection = Polygon(poly1).intersection(Polygon(poly2)).area * max(z_overlap, 0.0)
        union = box1[3] * box1[4] * box1[5] + box2[3] * box2[4] * box2[5] - intersection
        ious.append(intersection / union if union > 0 else 0.0)
    return ious


def bench_reference(n: int, repeats: int) -> list[Row]:
    try:
        import shapely  # noqa: F401
    except ImportError as exc:
        print(f"[bench_iou] shapely reference skipped: {exc} (pip install -e '.[test]')", file=sys.stderr)
        return []
    boxes1, boxes2 = box_samples.random_box_pairs(n, seed=0, dtype=torch.float64)
    boxes1[:, 3:6], boxes2[:, 3:6] = boxes1[:, 3:6].abs(), boxes2[:, 3:6].abs()
    times = time_repeats(lambda: shapely_iou_3d(boxes1, boxes2), repeats, torch.device("cpu"))
    return [Row("cpu", "shapely reference loop (float64)", f"{n}", n, times, "-", "for scale")]


def size_label(n: int) -> str:
    exponent = round(math.log10(n)) if n > 0 else 0
    return f"1e{exponent}" if 10**exponent == n else str(n)


def warm_up(device: torch.device, dtype: torch.dtype) -> None:
    """One small call of everything, so one-time allocations and lazy initialisation stay out of the first row."""
    boxes1, boxes2 = box_samples.random_box_pairs(64, seed=0, dtype=dtype, device=device)
    pred = boxes1.clone().requires_grad_(True)
    (rotated_iou_3d(pred, boxes2).sum() + gciou_loss(pred, boxes2).sum()).backward()
    rotated_iou_3d_matrix(boxes1, boxes2)
    synchronizer(device)()


def format_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="paired N list, default 1e3,1e4,1e5,1e6")
    parser.add_argument(
        "--matrix-sizes",
        type=parse_sizes,
        default=None,
        help="N for the N x N matrix, default 2000,20000 (halved until it fits)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 5, quick 2)")
    parser.add_argument("--reference-n", type=int, default=None, help="pairs for the shapely loop (default 2000)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda rows need a CUDA device")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the compiled path (compiled=True if offered, else torch.compile)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: a smoke run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    matrix_sizes = args.matrix_sizes or (QUICK_MATRIX_SIZES if args.quick else FULL_MATRIX_SIZES)
    repeats = args.repeats or (2 if args.quick else 5)
    reference_n = args.reference_n or (100 if args.quick else 2000)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)

    devices = []
    for name in (part.strip() for part in args.devices.split(",")):
        if name == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: cuda rows skipped")
            continue
        devices.append(torch.device(name))

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, CPU threads {args.threads}, "
        f"{args.dtype}, repeats {repeats} (+1 warm-up)"
    )
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
    print("fwd: no autograd graph; fwd+bwd: gradient w.r.t. the first (predicted) boxes, as in training.")
    print("peak mem: CUDA max_memory_allocated above the row's start; CPU peak RSS (VmHWM) above the row's start.")
    rows = []
    for device in devices:
        warm_up(device, dtype)
        rows += bench_paired(device, sizes, repeats, dtype, args.compile)
        rows += bench_matrix(device, matrix_sizes, repeats, dtype)
    rows += bench_reference(reference_n, repeats)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
