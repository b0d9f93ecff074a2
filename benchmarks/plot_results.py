"""
Figures and tables of the results pipeline (``benchmarks/run_results.py``), from its
``evaluations.csv`` and ``runs.csv``:

    python benchmarks/plot_results.py --log-folder results/logs --out docs/figures/results

writes, in ``--out``:

- ``learning_curves.png``: one panel per task, one line per algorithm: the mean over seeds of each
  evaluation's mean return, with a band of one standard error; ``learning_curves.csv`` holds every
  point and band edge drawn (and the seeds' min and max);
- ``final_scores.csv`` and ``final_scores.md``: per task and algorithm the score of each run (the mean
  return of its last evaluation), their mean and standard deviation, the interquartile mean (IQM) with
  a 95% stratified-bootstrap interval, the budget, and the median wall and CPU time per run;
- with ``--diagnose LABEL=GLOB``: runs of ``benchmarks/diagnose_learning.py`` (its CSV and the JSON
  beside it) added under the algorithm name ``LABEL``, for agents that were not run through the
  pipeline; they are a different harness (their own evaluation of the deterministic policy), so give
  them a label that says so (for example ``sdac*``) and use the same evaluation frequency and episodes;
- with ``--add LABEL=FOLDER``: the runs of another pipeline log folder (its gathered CSVs) added under
  the algorithm name ``LABEL``, for runs of the same algorithm with other hyperparameters or on another
  machine (for example ``qvpo*``, a reduced configuration), which must not be averaged with the others;
- with ``--rename ALGO=LABEL``: the log folder's own runs of ``ALGO`` drawn and tabled as ``LABEL``, for
  runs made in the same folder with changed hyperparameters (``--params``) that the label should name;
- with ``--budget N``: evaluations after step N are left out (runs that went on longer);
- with ``--complete-only``: runs that have not reached their budget (still running, or interrupted
  and not yet resumed) are left out of the figure and the tables, instead of drawn as far as they got;
- with ``--threshold R``: ``final_scores`` also gives, per run, the first evaluation step whose mean
  return reaches R (``-`` if none);
- with ``--zoo-plots``: also RL Zoo's own plot (``rl_zoo3.plots.all_plots`` on the pipeline's
  ``zoo_view``, then ``rl_zoo3.plots.plot_from_file``), ``zoo_<env>.png``; it needs ``seaborn`` and
  ``pytablewriter`` (the ``benchmarks`` extra).

**IQM and its interval are computed here with numpy**, not with rliable: rliable's dependency
``arch`` fails at import with pandas 3.1 (a ``TypeError`` in its ``deprecate_kwarg``). The definitions
follow rliable's (Agarwal et al., 2021): the IQM is the mean of the scores left after cutting
``floor(n / 4)`` from each end of the sorted scores (scipy's ``trim_mean(x, 0.25)``, which rliable uses;
with 3 seeds nothing is cut and the IQM is the mean); the interval is the percentile interval of the IQM
over ``--reps`` bootstrap resamples that draw runs with replacement within each task (stratified), so
every resample keeps each task's number of runs. Over one task that is the ordinary bootstrap over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_results import write_csv

# ------------------------------------------------------------------------------------------ statistics


def iqm(scores: np.ndarray, axis: int | None = None) -> Any:
    """Interquartile mean: the mean after cutting floor(n / 4) of the sorted scores from each end."""
    values = np.asarray(scores, dtype=float)
    if axis is None:
        values, axis = values.ravel(), 0
    values = np.sort(values, axis=axis)
    n = values.shape[axis]
    cut = n // 4
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def stratified_bootstrap_ci(
    scores_by_task: list[np.ndarray], statistic=iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """
    ``statistic`` over the runs of all tasks together, and its percentile interval over ``reps``
    resamples that draw, for each task separately, as many runs as it has, with replacement.

    :return: (point estimate, lower end, upper end)
    """
    rng = np.random.default_rng(seed)
    tasks = [np.asarray(s, dtype=float) for s in scores_by_task if len(s)]
    if not tasks:
        return float("nan"), float("nan"), float("nan")
    point = float(statistic(np.concatenate(tasks)))
    resampled = np.concatenate([task[rng.integers(0, len(task), size=(reps, len(task)))] for task in tasks], axis=1)
    values = np.asarray(statistic(resampled, axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return point, float(low), float(high)


# ------------------------------------------------------------------------------------------------ data


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def diagnose_runs(label: str, pattern: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    Evaluation and run rows, in the pipeline's format, from ``benchmarks/diagnose_learning.py`` runs
    (every CSV matching ``pattern`` whose JSON config lies beside it), under the algorithm name ``label``.
    """
    eval_rows, run_rows = [], []
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"--diagnose {label}={pattern}: no file matches")
    for path in map(Path, paths):
        config = json.loads(path.with_suffix(".json").read_text())
        rows = read_csv(path)
        for row in rows:
            eval_rows.append(
                {"algo": label, "env": config["env"], "seed": str(config["seed"]), "timestep": int(float(row["timesteps"])),
                 "return_mean": float(row["eval_mean"]), "return_std": float(row["eval_std"])}
            )  # fmt: skip
        run_rows.append(
            {
                "algo": label,
                "env": config["env"],
                "seed": str(config["seed"]),
                "steps": config["steps"],
                "status": "complete",
                "wall_s": float(rows[-1]["wall_s"]) if rows else float("nan"),
                "cpu_s": float("nan"),
                "hyperparams": "diagnose_learning.py (each run's JSON config beside its CSV)",
                "params": "",
            }
        )
    return eval_rows, run_rows


def relabelled_runs(label: str, folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluation and run rows of the pipeline log folder ``folder`` (gathered), every run's algorithm named ``label``."""
    paths = [folder / "evaluations.csv", folder / "runs.csv"]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"--add {label}={folder}: no {', '.join(missing)} (gather it: run_results.py --gather-only)")
    evaluations, runs = (read_csv(path) for path in paths)
    return [{**row, "algo": label} for row in evaluations], [{**row, "algo": label} for row in runs]


def cut_at_budget(
    evaluations: list[dict[str, Any]], runs: list[dict[str, Any]], budget: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Leave out evaluations after ``budget`` steps; each run's final return is then its last one kept."""
    kept = [row for row in evaluations if int(row["timestep"]) <= budget]
    last: dict[tuple[str, str, str], tuple[int, float]] = {}
    for row in kept:
        key = (row["algo"], row["env"], str(row["seed"]))
        if key not in last or int(row["timestep"]) > last[key][0]:
            last[key] = (int(row["timestep"]), float(row["return_mean"]))
    cut_runs = []
    for run in runs:
        step, value = last.get((run["algo"], run["env"], str(run["seed"])), (0, float("nan")))
        cut_runs.append({**run, "steps": min(int(run["steps"]), budget), "final_return": value, "last_timestep": step})
    return kept, cut_runs


def complete_only(
    evaluations: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The complete runs and their evaluations only."""
    kept_runs = [run for run in runs if run["status"] == "complete"]
    keys = {(run["algo"], run["env"], str(run["seed"])) for run in kept_runs}
    return [row for row in evaluations if (row["algo"], row["env"], str(row["seed"])) in keys], kept_runs


def first_reaching(evaluations: list[dict[str, Any]], threshold: float) -> dict[tuple[str, str, str], int | None]:
    """Per run (algo, env, seed): the first evaluation step whose mean return is at least ``threshold``."""
    first: dict[tuple[str, str, str], int | None] = {}
    for row in sorted(evaluations, key=lambda r: int(r["timestep"])):
        key = (row["algo"], row["env"], str(row["seed"]))
        first.setdefault(key, None)
        if first[key] is None and float(row["return_mean"]) >= threshold:
            first[key] = int(row["timestep"])
    return first


def curves(evaluations: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per task, algorithm and evaluation step: the statistics over seeds of the evaluation means."""
    by_point: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for row in evaluations:
        by_point[(row["env"], row["algo"], int(row["timestep"]))].append(float(row["return_mean"]))
    rows = []
    for (env, algo, step), values in sorted(by_point.items()):
        values_ = np.array(values)
        error = values_.std(ddof=1) / np.sqrt(len(values_)) if len(values_) > 1 else 0.0
        mean = values_.mean()
        rows.append(
            {
                "env": env,
                "algo": algo,
                "timestep": step,
                "seeds": len(values_),
                "mean": round(float(mean), 3),
                "std_error": round(float(error), 3),
                "band_low": round(float(mean - error), 3),
                "band_high": round(float(mean + error), 3),
                "min": round(float(values_.min()), 3),
                "max": round(float(values_.max()), 3),
            }
        )
    return rows


def final_scores(
    runs: list[dict[str, Any]], reps: int = 2000, seed: int = 0, first: dict[tuple[str, str, str], int | None] | None = None
) -> list[dict[str, Any]]:
    """
    One row per task and algorithm: scores of its runs (last evaluation), mean, std, IQM [95% CI]; with
    ``first`` (from :func:`first_reaching`), each run's first step at the threshold.
    """
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for run in runs:
        groups[(run["env"], run["algo"])].append(run)
    rows = []
    for (env, algo), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: int(r["seed"]))
        scores = np.array([float(r["final_return"]) for r in members])
        valid = scores[np.isfinite(scores)]
        point, low, high = stratified_bootstrap_ci([valid], reps=reps, seed=seed)
        complete = [r for r in members if r["status"] == "complete"]
        rows.append(
            {
                "env": env,
                "algo": algo,
                "budget": members[0]["steps"],
                "seeds": " ".join(r["seed"] for r in members),
                "complete": f"{len(complete)}/{len(members)}",
                "scores": " ".join(f"{s:.1f}" for s in scores),
                "mean": round(float(valid.mean()), 1) if len(valid) else float("nan"),
                "std": round(float(valid.std(ddof=1)), 1) if len(valid) > 1 else float("nan"),
                "iqm": round(point, 1),
                "iqm_ci_low": round(low, 1),
                "iqm_ci_high": round(high, 1),
                "wall_s_median": round(float(np.median([float(r["wall_s"]) for r in members])), 0),
                "cpu_s_median": round(float(np.median([float(r["cpu_s"]) for r in members])), 0),
                "hyperparams": members[0]["hyperparams"],
                "params": members[0]["params"],
            }
        )
        if first is not None:
            steps = [first.get((algo, env, str(r["seed"]))) for r in members]
            rows[-1]["first_at_threshold"] = " ".join("-" if s is None else str(s) for s in steps)
    return rows


def markdown_table(rows: list[dict[str, Any]], threshold: float | None = None) -> str:
    reach = threshold is not None and any("first_at_threshold" in r for r in rows)
    lines = [
        "| task | algorithm | budget (steps) | seeds | score per seed | mean +- std | IQM [95% CI] "
        + (f"| first step at {threshold:g} per seed " if reach else "")
        + "| wall / CPU s per run (median) | hyperparameters |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if reach else ""),
    ]
    for r in rows:
        hyper = r["hyperparams"] + (f"; changed: {r['params']}" if r["params"] else "")
        cpu = "-" if np.isnan(r["cpu_s_median"]) else f"{r['cpu_s_median']:.0f}"
        lines.append(
            f"| {r['env']} | {r['algo']} | {r['budget']} | {r['seeds']} ({r['complete']} complete) | {r['scores']} | "
            f"{r['mean']} +- {r['std']} | {r['iqm']} [{r['iqm_ci_low']}, {r['iqm_ci_high']}] | "
            + (f"{r.get('first_at_threshold', '')} | " if reach else "")
            + f"{r['wall_s_median']:.0f} / {cpu} | {hyper} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- figures


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 3.8), constrained_layout=True, squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for algo in sorted({r["algo"] for r in rows if r["env"] == env}):
            points = [r for r in rows if r["env"] == env and r["algo"] == algo]
            x = np.array([p["timestep"] for p in points])
            seeds = max(p["seeds"] for p in points)
            label = f"{algo.upper()} ({seeds} seed{'s' if seeds != 1 else ''})"
            ax.plot(x, [p["mean"] for p in points], label=label, linewidth=2)
            ax.fill_between(x, [p["band_low"] for p in points], [p["band_high"] for p in points], alpha=0.25)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def zoo_plots(log_folder: Path, out: Path, algos: list[str], envs: list[str]) -> None:
    """RL Zoo's own plotting on the pipeline's zoo_view (needs seaborn and pytablewriter)."""
    for env in envs:
        pickle = out / f"zoo_{env}"
        subprocess.run(
            [sys.executable, "-m", "rl_zoo3.plots.all_plots", "-a", *algos, "-e", env, "-f", str(log_folder / "zoo_view"),
             "-l", "pipeline", "--no-million", "--no-display", "-o", str(pickle)],
            check=True,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "rl_zoo3.plots.plot_from_file", "-i", f"{pickle}.pkl", "--no-million",
             "-o", str(out / f"zoo_{env}.png"), "--format", "png"],
            check=True,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-folder", type=Path, default=Path("results/logs"))
    parser.add_argument("--out", type=Path, default=None, help="default: the log folder")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--zoo-plots", action="store_true")
    parser.add_argument(
        "--diagnose", nargs="*", default=[], metavar="LABEL=GLOB", help="diagnose_learning.py runs to add, as LABEL"
    )
    parser.add_argument(
        "--add", nargs="*", default=[], metavar="LABEL=FOLDER", help="another pipeline log folder's runs, as LABEL"
    )
    parser.add_argument(
        "--rename", nargs="*", default=[], metavar="ALGO=LABEL", help="the log folder's runs of ALGO, as LABEL"
    )
    parser.add_argument("--budget", type=int, default=None, help="leave out evaluations after this step")
    parser.add_argument("--complete-only", action="store_true", help="leave out runs that have not reached their budget")
    parser.add_argument("--threshold", type=float, default=None, help="report each run's first step at this return")
    args = parser.parse_args(argv)
    out = args.out or args.log_folder
    out.mkdir(parents=True, exist_ok=True)
    evaluations: list[dict[str, Any]] = read_csv(args.log_folder / "evaluations.csv")
    runs: list[dict[str, Any]] = read_csv(args.log_folder / "runs.csv")
    renames = {}
    for item in args.rename:
        algo, sep, label = item.partition("=")
        if not sep or not algo or not label:
            parser.error(f"--rename takes ALGO=LABEL, got {item!r}")
        if not any(row["algo"] == algo for row in runs):
            parser.error(f"--rename {item}: {args.log_folder} has no runs of {algo!r}")
        renames[algo] = label
    evaluations = [{**row, "algo": renames.get(row["algo"], row["algo"])} for row in evaluations]
    runs = [{**row, "algo": renames.get(row["algo"], row["algo"])} for row in runs]
    for item in args.diagnose:
        label, sep, pattern = item.partition("=")
        if not sep or not label or not pattern:
            parser.error(f"--diagnose takes LABEL=GLOB, got {item!r}")
        more_evaluations, more_runs = diagnose_runs(label, pattern)
        evaluations += more_evaluations
        runs += more_runs
    for item in args.add:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            parser.error(f"--add takes LABEL=FOLDER, got {item!r}")
        more_evaluations, more_runs = relabelled_runs(label, Path(folder))
        evaluations += more_evaluations
        runs += more_runs
    if args.complete_only:
        evaluations, runs = complete_only(evaluations, runs)
    if args.budget is not None:
        evaluations, runs = cut_at_budget(evaluations, runs, args.budget)
    curve_rows = curves(evaluations)
    write_csv(out / "learning_curves.csv", curve_rows)
    plot_curves(curve_rows, out / "learning_curves.png")
    first = first_reaching(evaluations, args.threshold) if args.threshold is not None else None
    score_rows = final_scores(runs, reps=args.reps, first=first)
    write_csv(out / "final_scores.csv", score_rows)
    table = markdown_table(score_rows, args.threshold)
    (out / "final_scores.md").write_text(table)
    print(table)
    if args.zoo_plots:
        zoo_plots(args.log_folder, out, sorted({r["algo"] for r in runs}), sorted({r["env"] for r in runs}))
    print(f"wrote {out}/learning_curves.png, learning_curves.csv, final_scores.csv, final_scores.md")


if __name__ == "__main__":
    main()
