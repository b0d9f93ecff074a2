"""
Small configurations on a shared machine: the RL Zoo quick start alone and two at once.

For each algorithm, the plain quick-start command (``python -m rl_zoo3.train --algo <algo> --env
Pendulum-v1``, with ``--seed`` and ``-f`` into a temporary folder) is timed once alone and twice at
once (seeds 0 and 1 started together; the pair's time is until both have finished), in these variants:

- ``plain``: the command as a user types it (the library picks the thread count: one thread for this
  configuration, see ``sb3_diffusion/common/threads.py``);
- ``--num-threads 1``: RL Zoo's explicit option, for reference;
- ``keep``: ``SB3_DIFFUSION_THREADS=keep``, torch's default thread count (what the plain command did
  before the library chose; the pair is slow on a 2-core machine, so it runs only with ``--keep-pair``).

It prints wall and CPU seconds (user + system of each process), the ratio of the pair's time to the
time alone, the thread count each run reported, the machine and the load average before and after
each measurement. ``--src DIR`` runs another checkout of the package (its directory goes first on
``PYTHONPATH``), for example the code before this change: ``--src /path/to/old --variants plain``.

``--sweep`` also times one update in this process at one and two threads for quick-start-like
configurations of growing width, with the elements of the largest batched operation of each (the
quantity the library's threshold ``SMALL_WORK_ELEMENTS`` is on): where two threads start to pay.

Usage::

    python benchmarks/bench_threads.py                                  # both algorithms, full quick start
    python benchmarks/bench_threads.py --algos sdac --keep-pair --sweep
    python benchmarks/bench_threads.py --variants plain --no-pairs          # one quick start alone per algorithm
    python benchmarks/bench_threads.py --src /path/to/old --variants keep --no-pairs   # the code before, torch's threads
    python benchmarks/bench_threads.py --zoo-args "-n 2000"             # a quick check of the script
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain": ([], {}),
    "num-threads-1": (["--num-threads", "1"], {}),
    "keep": ([], {"SB3_DIFFUSION_THREADS": "keep"}),
}


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "?")
    except OSError:
        model = "?"
    return f"{model}, {os.cpu_count()} CPUs"


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def zoo_command(algo: str, env_id: str, seed: int, folder: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        algo,
        "--env",
        env_id,
        "--seed",
        str(seed),
        "-f",
        str(folder),
        *extra,
    ]


def run_together(commands: list[list[str]], env: dict[str, str], logs: list[Path]) -> list[dict]:
    """Start all commands at once; per command: wall seconds until it exited, CPU seconds, exit code, its log."""
    start = time.perf_counter()
    processes = []
    for command, log in zip(commands, logs, strict=True):
        with open(log, "w") as file:
            processes.append(subprocess.Popen(command, stdout=file, stderr=subprocess.STDOUT, env=env, cwd=log.parent))
    results: dict[int, dict] = {}
    while len(results) < len(processes):
        for index, process in enumerate(processes):
            if index in results:
                continue
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == 0:
                continue
            process.returncode = os.waitstatus_to_exitcode(status)
            results[index] = dict(
                wall=time.perf_counter() - start,
                cpu=usage.ru_utime + usage.ru_stime,
                rc=process.returncode,
                log=logs[index],
            )
        time.sleep(0.05)
    return [results[index] for index in range(len(processes))]


def threads_reported(log: Path) -> str:
    """The thread count the library reported in the run's output ("?" for code that does not report it)."""
    for line in log.read_text(errors="replace").splitlines():
        if "learn() runs on" in line:
            return line.split("learn() runs on", 1)[1].split("thread", 1)[0].strip()
    return "?"


def measure(algo: str, variant: str, args: argparse.Namespace, folder: Path, pair: bool) -> dict:
    extra_args, extra_env = VARIANTS[variant]
    env = {**os.environ, **extra_env}
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    extra = [*extra_args, *shlex.split(args.zoo_args)]
    seeds = args.seeds if pair else args.seeds[:1]
    run_folder = folder / f"{algo}-{variant}-{'pair' if pair else 'alone'}"
    run_folder.mkdir()
    commands = [zoo_command(algo, args.env, seed, run_folder / f"seed{seed}", extra) for seed in seeds]
    logs = [run_folder / f"seed{seed}.log" for seed in seeds]
    before = load()
    results = run_together(commands, env, logs)
    for result in results:
        if result["rc"] != 0:
            tail = "\n".join(result["log"].read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{shlex.join(commands[0])} failed (exit code {result['rc']}):\n{tail}")
    row = dict(
        algo=algo,
        variant=variant,
        runs=len(results),
        wall=max(r["wall"] for r in results),
        walls=[r["wall"] for r in results],
        cpus=[r["cpu"] for r in results],
        threads="/".join(threads_reported(r["log"]) for r in results),
        load=f"{before} -> {load()}",
    )
    print(
        f"  {algo} {variant:14s} {'two at once' if pair else 'alone':11s} wall {row['wall']:7.1f} s "
        f"(each {', '.join(f'{w:.1f}' for w in row['walls'])}), CPU {', '.join(f'{c:.1f}' for c in row['cpus'])} s, "
        f"threads {row['threads']}, load {row['load']}",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------------------------------
# --sweep: one update at one and two threads, by size
# ---------------------------------------------------------------------------------------------------


def sweep(algos: list[str], widths: list[int], updates: int, blocks: int) -> None:
    import torch as th
    import yaml
    from stable_baselines3.common.logger import configure

    from sb3_diffusion import QVPO, SDAC
    from sb3_diffusion.common.threads import SMALL_WORK_ELEMENTS
    from sb3_diffusion.zoo import config_path

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_updates import fill_buffer

    import numpy as np

    print(
        f"\nOne update at 1 and 2 threads (median of {blocks} interleaved blocks of {updates} updates, wall ms), load {load()}"
    )
    print(f"threshold SMALL_WORK_ELEMENTS = {SMALL_WORK_ELEMENTS:,}: below it the plain command runs on one thread")
    print("| algorithm | quick start with width | elements | 1 thread ms | 2 threads ms | speed-up of 2 |")
    print("|---|---|---|---|---|---|")
    for algo in algos:
        config = dict(yaml.safe_load(config_path(algo).read_text())["Pendulum-v1"])
        for key in ("n_timesteps", "policy"):
            config.pop(key, None)
        for width in widths:
            kwargs = {**config, "policy_kwargs": {**config["policy_kwargs"], "net_arch": [width, width]}}
            kwargs.update(learning_starts=0, buffer_size=10_000, device="cpu", seed=0)
            model = {"sdac": SDAC, "qvpo": QVPO}[algo]("MlpPolicy", "Pendulum-v1", **kwargs)
            model.set_logger(configure(folder=None, format_strings=[]))
            fill_buffer(model, 10_000, np.random.default_rng(0))
            times: dict[int, list[float]] = {1: [], 2: []}
            previous = th.get_num_threads()
            try:
                for block in range(blocks + 1):
                    for n_threads in (1, 2):
                        th.set_num_threads(n_threads)
                        start = time.perf_counter()
                        model.train(updates, model.batch_size)
                        if block > 0:  # block 0 warms up
                            times[n_threads].append(1e3 * (time.perf_counter() - start) / updates)
            finally:
                th.set_num_threads(previous)
            one, two = statistics.median(times[1]), statistics.median(times[2])
            print(
                f"| {algo.upper()} | [{width}, {width}] | {model.update_work_elements():,} "
                f"| {one:.2f} | {two:.2f} | {one / two:.2f}x |"
            )
    print(f"load after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sdac", "qvpo"], choices=["sdac", "qvpo"])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 1], help="seeds of the two runs at once")
    parser.add_argument("--variants", nargs="+", default=["plain", "num-threads-1", "keep"], choices=sorted(VARIANTS))
    parser.add_argument("--keep-pair", action="store_true", help="also time two at once in the keep variant (slow)")
    parser.add_argument("--no-pairs", action="store_true", help="time each variant alone only")
    parser.add_argument("--zoo-args", default="", help='extra arguments of every zoo command, e.g. "-n 2000"')
    parser.add_argument("--src", default=None, help="run this checkout of sb3_diffusion (first on PYTHONPATH)")
    parser.add_argument("--sweep", action="store_true", help="also time one update at 1 and 2 threads by size")
    parser.add_argument("--sweep-widths", nargs="+", type=int, default=[64, 96, 128, 192, 256])
    parser.add_argument("--sweep-updates", type=int, default=20)
    parser.add_argument("--sweep-blocks", type=int, default=5)
    args = parser.parse_args()

    print(f"{machine()}; python {sys.version.split()[0]}; load {load()}")
    print(f"source: {args.src or 'as installed / PYTHONPATH'}; zoo arguments: {args.zoo_args or '(none)'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        folder = Path(tmp)
        for algo in args.algos:
            for variant in args.variants:
                alone = measure(algo, variant, args, folder, pair=False)
                run_pair = not args.no_pairs and (variant != "keep" or args.keep_pair)
                pair = measure(algo, variant, args, folder, pair=True) if run_pair else None
                rows.append((alone, pair))

    print(
        "\n| algorithm | variant | threads | alone: wall s (CPU s) | two at once: wall s (each; CPU s) | two at once / alone |"
    )
    print("|---|---|---|---|---|---|")
    for alone, pair in rows:
        if pair is None:
            pair_text, ratio = "not run (--no-pairs)" if args.no_pairs else "not run (--keep-pair)", "n/a"
        else:
            each = ", ".join(f"{w:.1f}" for w in pair["walls"])
            cpu = ", ".join(f"{c:.1f}" for c in pair["cpus"])
            pair_text, ratio = f"{pair['wall']:.1f} ({each}; {cpu})", f"{pair['wall'] / alone['wall']:.2f}x"
        threads = alone["threads"] + ("" if pair is None else f"; {pair['threads']}")
        print(
            f"| {alone['algo'].upper()} | {alone['variant']} | {threads} | {alone['wall']:.1f} ({alone['cpus'][0]:.1f}) "
            f"| {pair_text} | {ratio} |"
        )
    by_key = {(alone["algo"], alone["variant"]): alone for alone, _ in rows}
    for algo in args.algos:
        plain, keep = by_key.get((algo, "plain")), by_key.get((algo, "keep"))
        if plain and keep:
            print(f"{algo.upper()}: plain alone / keep alone (torch's default threads) = {plain['wall'] / keep['wall']:.2f}")
    print(f"load at the end: {load()}")
    if args.sweep:
        sweep(args.algos, args.sweep_widths, args.sweep_updates, args.sweep_blocks)


if __name__ == "__main__":
    main()
