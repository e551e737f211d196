"""`compare RUN_A RUN_B`: where two finished runs on the same images differ, A the reference."""
from __future__ import annotations

import sys
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import add_run_dir_arg
from orchestrator.comparison import check_comparable, compare, load_run
from orchestrator.reporting.compare_report import write_comparison
from tasks.shards import AnnotationError, read_annotation


def run_compare(run_a: str, run_b: str, run_root: Path, out: str | None = None, box_tol: float = 0.05,
                score_tol: float = 1e-4) -> int:
    """Compare, print the verdicts and write the comparison's folder; 0 when both verdicts pass, else 1."""
    if box_tol < 0 or score_tol < 0:
        raise UsageError("tolerances must be >= 0 (--box-tol, --score-tol)")
    a, b = load_run(run_a, run_root), load_run(run_b, run_root)
    check_comparable(a, b)
    try:
        annotation, _ = read_annotation(a.report["params"]["annotation"])
    except AnnotationError as exc:
        raise UsageError(str(exc)) from exc
    c = compare(a, b, annotation["images"], box_tol, score_tol)
    folder = Path(out) if out else run_root / f"compare-{a.name}-vs-{b.name}"
    path = write_comparison(folder, c, a, b, annotation)
    t, v = c["totals"], c["verdicts"]
    print(f"matched {t['matched']}/{t['a']} of A's detections ({100 * t['matched_fraction']:.2f} %), "
          f"{t['missing']} missing in B, {t['extra']} extra in B; {c['differing_images']} image(s) differ")
    print(f"box AP: A {v['recipe']['ap_a']:.4f}, B {v['recipe']['ap_b']:.4f}")
    for name in ("recipe", "strict"):
        figure = v[name]["ratio"] if name == "recipe" else v[name]["matched_fraction"]
        print(f"{name}: {'PASS' if v[name]['pass'] else 'FAIL'} {100 * figure:.2f} % (rule: {v[name]['rule']})")
    print(f"compare report: {path}", file=sys.stderr)
    return 0 if v["recipe"]["pass"] and v["strict"]["pass"] else 1


def run(args) -> int:
    return run_compare(args.run_a, args.run_b, Path(args.run_dir), args.out, args.box_tol, args.score_tol)


def register(sub) -> None:
    p = sub.add_parser("compare", help="where two finished runs differ: matched detections, AP ratio, FPS",
                       description="Match run B's detections to run A's (the reference) image by image with "
                                   "`conversion verify`'s rules, give the recipe's verdict (AP ratio >= 99 %%) and "
                                   "the strict one (>= 99.9 %% of A's detections matched), the 12 stats, per-class AP "
                                   "and FPS side by side, and draw the images that differ most. Writes compare.md, "
                                   "compare.json, compare.html and images/ into OUT. Exit 1 when a verdict fails.",
                       epilog="example: python -m orchestrator compare runs/20250101-120000-ab12cd "
                              "20250101-130000-cd34ef --out runs/pth-vs-om")
    p.add_argument("run_a", metavar="RUN_A", help="the reference: a run folder or a job id under --run-dir")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    add_run_dir_arg(p)
    p.add_argument("--out", help="folder for the comparison (default RUN_DIR/compare-A-vs-B)")
    p.add_argument("--box-tol", type=float, default=0.05,
                   help="corner tolerance in px of the network input (default 0.05, as verify)")
    p.add_argument("--score-tol", type=float, default=1e-4, help="score tolerance (default 1e-4, as verify)")
    p.set_defaults(func=run)
