"""
The results pipeline: algorithms x tasks x seeds at one budget, each run through RL Zoo
(``python -m rl_zoo3.train``), in parallel up to ``--jobs``; complete runs are skipped, interrupted
ones resumed from their last checkpoint; every run's ``evaluations.npz`` is gathered into one tidy CSV.

    python benchmarks/run_results.py --algos sdac qvpo sac td3 tqc crossq \\
        --envs Pendulum-v1 InvertedPendulum-v5 --seeds 0 1 2 --steps 20000 --jobs 2 \\
        --log-folder results/logs
    python benchmarks/run_results.py --log-folder results/logs --gather-only   # the CSVs alone
    python benchmarks/plot_results.py --log-folder results/logs --out docs/figures/results

Hyperparameters: SDAC and QVPO take the project's shipped configs (``hyperparams/*.yml``); the
baselines RL Zoo's own (``rl_zoo3/hyperparams/<algo>.yml``): its tuned entry for the task when it has
one, else the tuned entry of the task's ``-v4`` version (RL Zoo tunes Hopper-v4, not Hopper-v5; off
with ``--no-v4-entries``), else its ``default`` entry (SB3's defaults). ``runs.csv`` says which.
``--params ALGO:key:value`` changes one hyperparameter of one algorithm (RL Zoo's ``-params``);
every change is recorded with the run. ``-n`` is the budget.

Layout: ``<log-folder>/<env>/<algo>/seed_<seed>/`` holds ``run.json`` (the run's spec, its segments and
status) and RL Zoo's folders, ``<algo>/<env>_1`` for the first segment and ``_2``, ... for each resumed
one, with a log file per segment. Checkpoints with their replay buffers are written every
``--save-freq`` steps (default: every evaluation); all but the newest ``--keep-checkpoints`` are
deleted as the run goes. When the configured replay buffer is larger than the budget it is set to the
budget (``buffer_size``: nothing is ever evicted either way, so learning is the same, and the
checkpoints are smaller).

A run is complete when its command exited with 0 and its evaluations reach the budget. A run that is
not complete resumes with ``-i`` from its newest checkpoint whose model and replay buffer are both
readable (SDAC and QVPO through ``sb3_diffusion``'s zoo registration, the baselines through
``benchmarks/zoo_resume.py``); without one it starts again. A complete run whose spec differs from
the one asked for is an error (use another ``--log-folder``).

Outputs of the gathering, in ``<log-folder>``: ``evaluations.csv`` (one row per run and evaluation:
mean, std, min and max of the evaluation episodes' returns, mean episode length), ``runs.csv`` (one row
per run: budget, hyperparameter source and changes, status, final and best evaluation, wall and CPU
time, the command) and ``zoo_view/<algo>/<env>_<seed>/evaluations.npz`` (each run's segments merged,
in the layout of ``python -m rl_zoo3.plots.all_plots -f <log-folder>/zoo_view``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIFFUSION_ALGOS = ("sdac", "qvpo")
RUN_FILE = "run.json"
CHECKPOINT = re.compile(r"rl_model_(\d+)_steps\.zip")


# ------------------------------------------------------------------------------------------ specs


@dataclass
class RunSpec:
    """What defines a run: two specs that differ are two different experiments."""

    algo: str
    env: str
    seed: int
    steps: int
    eval_freq: int
    eval_episodes: int
    params: dict[str, str] = field(default_factory=dict)  # RL Zoo -params key -> value (as typed)
    hyperparams: str = ""  # where the hyperparameters come from (a sentence)
    conf: str | None = None  # the -conf file (None: RL Zoo's default for the algorithm)
    n_envs: int = 1  # of the config entry (RL Zoo counts evaluation and checkpoint frequencies per vector step)

    def key(self) -> dict[str, Any]:
        """The fields that must match for a finished run to count as this one."""
        return {k: v for k, v in asdict(self).items() if k not in ("hyperparams", "conf", "n_envs")}


def run_dir(log_folder: Path, spec: RunSpec) -> Path:
    return Path(log_folder) / spec.env / spec.algo / f"seed_{spec.seed}"


def zoo_config_path(algo: str) -> Path:
    """The config RL Zoo reads by default for ``algo`` (ours for SDAC and QVPO)."""
    if algo in DIFFUSION_ALGOS:
        return REPO / "hyperparams" / f"{algo}.yml"
    import importlib.util

    zoo = importlib.util.find_spec("rl_zoo3")  # without importing it (it imports torch and every algorithm)
    if zoo is None or zoo.origin is None:
        raise SystemExit("the baselines need RL Zoo: pip install rl_zoo3")
    return Path(zoo.origin).parent / "hyperparams" / f"{algo}.yml"


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    with open(path) as file:
        return yaml.safe_load(file)


def choose_hyperparams(algo: str, env: str, use_v4: bool = True) -> tuple[dict[str, Any], str, str | None]:
    """
    The config entry a run of ``algo`` on ``env`` trains with.

    :return: (the entry, a sentence saying where it comes from, the name of another task whose entry
        must be passed with -conf, or None when RL Zoo finds the entry itself)
    """
    path = zoo_config_path(algo)
    entries = _load_yaml(path)
    owner = "sb3_diffusion shipped config" if algo in DIFFUSION_ALGOS else "RL Zoo"
    if env in entries:
        kind = "entry" if algo in DIFFUSION_ALGOS else "tuned entry"
        return dict(entries[env]), f"{owner} {path.name}, {kind} {env}", None
    match = re.fullmatch(r"(.+)-v(\d+)", env)
    if use_v4 and match and algo not in DIFFUSION_ALGOS:
        older = f"{match.group(1)}-v4"
        if older in entries:
            return dict(entries[older]), f"{owner} {path.name}, tuned entry {older} (no entry for {env})", older
    if "default" in entries:
        what = "official settings" if algo in DIFFUSION_ALGOS else "SB3 defaults"
        return dict(entries["default"]), f"{owner} {path.name}, default entry ({what})", None
    raise ValueError(f"{path} has no entry for {env} and no default")


def make_spec(
    algo: str,
    env: str,
    seed: int,
    steps: int,
    eval_freq: int,
    eval_episodes: int,
    params: dict[str, str],
    run_folder: Path,
    use_v4: bool = True,
) -> RunSpec:
    entry, source, other = choose_hyperparams(algo, env, use_v4)
    params = dict(params)
    buffer = entry.get("buffer_size", 1_000_000)  # SB3's off-policy default
    if "buffer_size" not in params and float(buffer) > steps:
        params["buffer_size"] = str(steps)
    conf = None
    if other is not None:
        conf = str(Path(run_folder) / "zoo_conf.yml")
    n_envs = int(params.get("n_envs", entry.get("n_envs", 1)))
    return RunSpec(algo, env, seed, steps, eval_freq, eval_episodes, params, source, conf, n_envs)


def write_conf(spec: RunSpec, use_v4: bool = True) -> None:
    """Write the -conf file of a run that borrows another task's entry."""
    if spec.conf is None:
        return
    import yaml

    entry, _, _ = choose_hyperparams(spec.algo, spec.env, use_v4)
    Path(spec.conf).parent.mkdir(parents=True, exist_ok=True)
    with open(spec.conf, "w") as file:
        yaml.safe_dump({spec.env: entry}, file)


# ------------------------------------------------------------------------------------------ state


def read_state(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    with open(path) as file:
        return json.load(file)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Written to a temporary file and renamed, so that a kill leaves the old or the new state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RUN_FILE}.tmp"
    with open(tmp, "w") as file:
        json.dump(state, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, folder / RUN_FILE)


def zoo_run_folders(folder: Path, spec: RunSpec) -> list[Path]:
    """RL Zoo's folders of this run (one per segment), in order."""
    base = Path(folder) / spec.algo
    found = []
    if base.is_dir():
        for child in base.iterdir():
            match = re.fullmatch(re.escape(spec.env) + r"_(\d+)", child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def next_zoo_folder(folder: Path, spec: RunSpec) -> Path:
    existing = zoo_run_folders(folder, spec)
    last = int(existing[-1].name.rsplit("_", 1)[1]) if existing else 0
    return Path(folder) / spec.algo / f"{spec.env}_{last + 1}"


def checkpoints(zoo_folder: Path) -> list[tuple[int, Path, Path]]:
    """(step, model, replay buffer) of every checkpoint in a segment's folder, newest first."""
    found = []
    for path in Path(zoo_folder).glob("rl_model_*_steps.zip"):
        match = CHECKPOINT.fullmatch(path.name)
        if match:
            step = int(match.group(1))
            found.append((step, path, path.with_name(f"rl_model_replay_buffer_{step}_steps.pkl")))
    return sorted(found, key=lambda item: item[0], reverse=True)


def readable(model: Path, buffer: Path) -> bool:
    """Whether a checkpoint's model is a complete zip and its replay buffer a complete pickle."""
    try:
        with zipfile.ZipFile(model) as archive:
            if archive.testzip() is not None:
                return False
    except (OSError, zipfile.BadZipFile):
        return False
    if not buffer.is_file():
        return False
    try:
        from stable_baselines3.common.save_util import load_from_pkl

        load_from_pkl(buffer)
    except Exception:  # a truncated or damaged pickle: any error means unusable
        return False
    return True


def all_checkpoints(folder: Path, spec: RunSpec) -> list[tuple[int, Path, Path]]:
    """(step, model, buffer) of the run's checkpoints over all its segments, newest first (for one
    step in two segments, the later segment's first: it is on the timeline that goes on)."""
    found = []
    for index, zoo_folder in enumerate(zoo_run_folders(folder, spec)):
        found += [(step, index, model, buffer) for step, model, buffer in checkpoints(zoo_folder)]
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [(step, model, buffer) for step, _, model, buffer in found]


def latest_checkpoint(folder: Path, spec: RunSpec, check=readable) -> tuple[int, Path] | None:
    """The newest checkpoint of the run, over all its segments, whose files are both readable."""
    for step, model, buffer in all_checkpoints(folder, spec):
        if check(model, buffer):
            return step, model
    return None


def prune_checkpoints(folder: Path, spec: RunSpec, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (model and buffer) of a run."""
    for _, model, buffer in all_checkpoints(folder, spec)[keep:]:
        for path in (model, buffer):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ evaluations


def merged_evaluations(folder: Path, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """
    The run's evaluations over all its segments: a segment that started at step S replaces every
    evaluation after S of the segments before it (they belong to the part of the run it redoes).
    """
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for segment in state.get("segments", []):
        start = int(segment["start"])
        rows = {step: value for step, value in rows.items() if step <= start}
        path = Path(folder) / segment["zoo_folder"] / "evaluations.npz"
        if not path.is_file():
            continue
        try:
            data = np.load(path)
            timesteps, results, lengths = data["timesteps"], data["results"], data["ep_lengths"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # written while the run was killed: the segment's evaluations are lost
        for step, result, length in zip(timesteps, results, lengths, strict=False):
            if int(step) > start:
                rows[int(step)] = (np.asarray(result, dtype=float), np.asarray(length, dtype=float))
    steps = sorted(rows)
    if not steps:
        return {"timesteps": np.zeros(0, dtype=int), "results": np.zeros((0, 0)), "ep_lengths": np.zeros((0, 0))}
    width = max(len(rows[s][0]) for s in steps)

    def pad(values: np.ndarray) -> np.ndarray:
        return np.pad(values, (0, width - len(values)), constant_values=np.nan)

    return {
        "timesteps": np.array(steps, dtype=int),
        "results": np.stack([pad(rows[s][0]) for s in steps]),
        "ep_lengths": np.stack([pad(rows[s][1]) for s in steps]),
    }


def last_expected_eval(spec: RunSpec, n_envs: int = 1) -> int:
    """The step of the last evaluation RL Zoo makes within the budget (its frequency counts vector steps)."""
    per_call = max(spec.eval_freq // n_envs, 1) * n_envs
    return (spec.steps // per_call) * per_call


def is_complete(folder: Path, spec: RunSpec, state: dict[str, Any] | None) -> bool:
    if state is None or state.get("status") != "complete":
        return False
    evaluations = merged_evaluations(folder, state)
    return len(evaluations["timesteps"]) > 0 and evaluations["timesteps"][-1] >= last_expected_eval(spec, spec.n_envs)


# -------------------------------------------------------------------------------------- commands


def zoo_command(spec: RunSpec, folder: Path, save_freq: int, trained_agent: Path | None = None) -> list[str]:
    command = [
        sys.executable, "-m", "rl_zoo3.train",
        "--algo", spec.algo, "--env", spec.env, "--seed", str(spec.seed), "-n", str(spec.steps),
        "--eval-freq", str(spec.eval_freq), "--eval-episodes", str(spec.eval_episodes),
        "--num-threads", "1", "-f", str(folder),
        "--save-freq", str(save_freq), "--save-replay-buffer",
        "--gym-packages", "benchmarks.zoo_resume",
    ]  # fmt: skip
    if spec.conf is not None:
        command += ["-conf", spec.conf]
    if spec.params:
        command += ["-params", *[f"{key}:{value}" for key, value in spec.params.items()]]
    if trained_agent is not None:
        command += ["-i", str(trained_agent)]
    return command


@dataclass
class Plan:
    spec: RunSpec
    folder: Path
    action: str  # "skip", "start", "resume"
    checkpoint: tuple[int, Path] | None = None


def plan_run(spec: RunSpec, log_folder: Path, check=readable) -> Plan:
    folder = run_dir(log_folder, spec)
    state = read_state(folder)
    if state is not None and state["spec"] != spec.key():
        differences = {k: (state["spec"].get(k), v) for k, v in spec.key().items() if state["spec"].get(k) != v}
        listed = ", ".join(f"{k}: {old} there, {new} asked" for k, (old, new) in differences.items())
        raise SystemExit(f"{folder} holds a run with another spec ({listed}); use another --log-folder")
    if is_complete(folder, spec, state):
        return Plan(spec, folder, "skip")
    if state is None:
        return Plan(spec, folder, "start")
    checkpoint = latest_checkpoint(folder, spec, check)
    return Plan(spec, folder, "resume" if checkpoint else "start", checkpoint)


def new_state(spec: RunSpec) -> dict[str, Any]:
    return {"spec": spec.key(), "hyperparams": spec.hyperparams, "conf": spec.conf, "status": "new", "segments": []}


def begin_segment(plan: Plan, save_freq: int) -> tuple[list[str], dict[str, Any]]:
    """Record the segment about to run in ``run.json`` and return its command and state."""
    state = read_state(plan.folder) or new_state(plan.spec)
    zoo_folder = next_zoo_folder(plan.folder, plan.spec)
    start = plan.checkpoint[0] if plan.action == "resume" and plan.checkpoint else 0
    command = zoo_command(plan.spec, plan.folder, save_freq, plan.checkpoint[1] if start else None)
    state["status"] = "running"
    state["segments"].append(
        {
            "zoo_folder": str(zoo_folder.relative_to(plan.folder)),
            "start": start,
            "command": shlex.join(command),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    write_state(plan.folder, state)
    return command, state


def end_segment(plan: Plan, state: dict[str, Any], returncode: int, wall: float, cpu: float) -> None:
    segment = state["segments"][-1]
    segment.update(returncode=returncode, wall_s=round(wall, 1), cpu_s=round(cpu, 1))
    complete = returncode == 0
    if complete:
        evaluations = merged_evaluations(plan.folder, state)
        complete = len(evaluations["timesteps"]) > 0 and evaluations["timesteps"][-1] >= last_expected_eval(
            plan.spec, plan.spec.n_envs
        )
    state["status"] = "complete" if complete else f"failed (exit code {returncode})" if returncode else "incomplete"
    write_state(plan.folder, state)


# ---------------------------------------------------------------------------------------- running


class Runner:
    """Runs the plans' commands, at most ``jobs`` at a time, nice'd, one thread each."""

    def __init__(self, jobs: int, save_freq: int | None, keep: int, nice: int):
        # two at least: the newest may be the one being written when the run is killed
        self.jobs, self.save_freq, self.keep, self.nice = jobs, save_freq, max(keep, 2), nice
        self.running: dict[int, tuple[Plan, dict[str, Any], subprocess.Popen, float]] = {}

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env["OMP_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
        return env

    def _child_setup(self) -> None:
        # A pipeline started in the background of a script ignores SIGINT, and its children would inherit
        # that: they must take SIGINT as RL Zoo expects (it saves the model on KeyboardInterrupt)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.nice:
            os.nice(self.nice)

    def launch(self, plan: Plan) -> None:
        save_freq = self.save_freq or plan.spec.eval_freq
        command, state = begin_segment(plan, save_freq)
        if plan.spec.conf is not None:
            write_conf(plan.spec)
        log = open(plan.folder / f"segment_{len(state['segments'])}.log", "w")
        print(
            f"[{time.strftime('%H:%M:%S')}] {plan.action} {plan.spec.algo} {plan.spec.env} seed {plan.spec.seed}"
            + (f" from step {plan.checkpoint[0]}" if plan.action == "resume" and plan.checkpoint else ""),
            flush=True,
        )
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self._environment(), preexec_fn=self._child_setup,
        )  # fmt: skip
        log.close()
        self.running[process.pid] = (plan, state, process, time.time())

    def poll(self) -> None:
        for pid in list(self.running):
            plan, state, process, started = self.running[pid]
            finished, status, usage = os.wait4(pid, os.WNOHANG)
            if finished == 0:
                prune_checkpoints(plan.folder, plan.spec, self.keep)
                continue
            process.returncode = os.waitstatus_to_exitcode(status)
            del self.running[pid]
            end_segment(plan, state, process.returncode, time.time() - started, usage.ru_utime + usage.ru_stime)
            prune_checkpoints(plan.folder, plan.spec, self.keep)
            print(
                f"[{time.strftime('%H:%M:%S')}] {plan.spec.algo} {plan.spec.env} seed {plan.spec.seed}: "
                f"{read_state(plan.folder)['status']} ({time.time() - started:.0f} s)",
                flush=True,
            )

    def run(self, plans: list[Plan]) -> None:
        queue = [plan for plan in plans if plan.action != "skip"]
        try:
            while queue or self.running:
                while queue and len(self.running) < self.jobs:
                    self.launch(queue.pop(0))
                time.sleep(1.0)
                self.poll()
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self) -> None:
        """Interrupt the running commands (RL Zoo saves the model on an interrupt); they resume later."""
        for _, _, process, _ in self.running.values():
            process.send_signal(signal.SIGINT)
        for plan, state, process, started in list(self.running.values()):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            state["segments"][-1].update(returncode=process.returncode, wall_s=round(time.time() - started, 1))
            state["status"] = "interrupted"
            write_state(plan.folder, state)


# --------------------------------------------------------------------------------------- gathering


def find_runs(log_folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for path in sorted(Path(log_folder).glob(f"*/*/seed_*/{RUN_FILE}")):
        state = read_state(path.parent)
        if state is not None:
            runs.append((path.parent, state))
    return runs


def gather(log_folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``evaluations.csv``, ``runs.csv`` and ``zoo_view/`` under ``log_folder``; return their rows."""
    log_folder = Path(log_folder)
    eval_rows, run_rows = [], []
    for folder, state in find_runs(log_folder):
        spec = state["spec"]
        evaluations = merged_evaluations(folder, state)
        returns = evaluations["results"]
        for i, step in enumerate(evaluations["timesteps"]):
            episode_returns = returns[i][~np.isnan(returns[i])]
            lengths = evaluations["ep_lengths"][i]
            eval_rows.append(
                {
                    "algo": spec["algo"],
                    "env": spec["env"],
                    "seed": spec["seed"],
                    "timestep": int(step),
                    "return_mean": float(episode_returns.mean()),
                    "return_std": float(episode_returns.std()),
                    "return_min": float(episode_returns.min()),
                    "return_max": float(episode_returns.max()),
                    "episodes": len(episode_returns),
                    "ep_length_mean": float(np.nanmean(lengths)),
                }
            )
        segments = state.get("segments", [])
        means = np.nanmean(returns, axis=1) if len(returns) else np.zeros(0)
        run_rows.append(
            {
                "algo": spec["algo"],
                "env": spec["env"],
                "seed": spec["seed"],
                "steps": spec["steps"],
                "eval_freq": spec["eval_freq"],
                "eval_episodes": spec["eval_episodes"],
                "status": state.get("status"),
                "last_timestep": int(evaluations["timesteps"][-1]) if len(means) else 0,
                "final_return": float(means[-1]) if len(means) else float("nan"),
                "best_return": float(means.max()) if len(means) else float("nan"),
                "wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 1),
                "cpu_s": round(sum(s.get("cpu_s", 0.0) for s in segments), 1),
                "segments": len(segments),
                "hyperparams": state.get("hyperparams", ""),
                "params": " ".join(f"{k}:{v}" for k, v in spec.get("params", {}).items()),
                "command": segments[0]["command"] if segments else "",
            }
        )
        if len(means):
            view = log_folder / "zoo_view" / spec["algo"] / f"{spec['env']}_{spec['seed']}"
            view.mkdir(parents=True, exist_ok=True)
            np.savez(view / "evaluations.npz", **evaluations)
    write_csv(log_folder / "evaluations.csv", eval_rows)
    write_csv(log_folder / "runs.csv", run_rows)
    return eval_rows, run_rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dicts as CSV rows; the columns are every key, in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------- CLI


def parse_params(items: list[str], algos: list[str]) -> dict[str, dict[str, str]]:
    """``ALGO:key:value`` items to {algo: {key: value}}; ``all:key:value`` applies to every algorithm."""
    result: dict[str, dict[str, str]] = {algo: {} for algo in algos}
    for item in items:
        algo, sep, rest = item.partition(":")
        key, sep2, value = rest.partition(":")
        if not (sep and sep2 and key):
            raise SystemExit(f"--params expects ALGO:key:value, got {item!r}")
        for target in algos if algo == "all" else [algo]:
            if target not in result:
                raise SystemExit(f"--params names {target!r}, which is not in --algos")
            result[target][key] = value
    return result


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sdac", "qvpo", "sac", "td3", "tqc", "crossq"])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="budget in environment steps (RL Zoo's -n)")
    parser.add_argument("--eval-freq", type=int, help="steps between evaluations (default: steps / 10)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--save-freq", type=int, help="steps between checkpoints (default: the evaluation frequency)")
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: the cores)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the training processes")
    parser.add_argument("--params", nargs="*", default=[], help="ALGO:key:value (or all:key:value), RL Zoo -params")
    parser.add_argument("--no-v4-entries", action="store_true", help="no RL Zoo -v4 entries for -v5 tasks")
    parser.add_argument("--log-folder", type=Path, default=Path("results/logs"))
    parser.add_argument("--gather-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # kill PID: the runs are interrupted as by Ctrl-C, then resumable

    if not args.gather_only:
        if args.steps is None:
            parser.error("--steps is required (unless --gather-only)")
        eval_freq = args.eval_freq or max(args.steps // 10, 1)
        params = parse_params(args.params, args.algos)
        plans = []
        for env in args.envs:
            for seed in args.seeds:
                for algo in args.algos:
                    folder = run_dir(args.log_folder, RunSpec(algo, env, seed, args.steps, eval_freq, args.eval_episodes))
                    spec = make_spec(
                        algo,
                        env,
                        seed,
                        args.steps,
                        eval_freq,
                        args.eval_episodes,
                        params[algo],
                        folder.resolve(),
                        not args.no_v4_entries,
                    )
                    plans.append(plan_run(spec, args.log_folder.resolve()))
        for plan in plans:
            where = f" from step {plan.checkpoint[0]}" if plan.action == "resume" and plan.checkpoint else ""
            print(
                f"{plan.action:>6} {plan.spec.algo:>6} {plan.spec.env} seed {plan.spec.seed}{where}  [{plan.spec.hyperparams}]"
            )
            if args.dry_run and plan.action != "skip":
                print(
                    "       "
                    + shlex.join(
                        zoo_command(
                            plan.spec,
                            plan.folder,
                            args.save_freq or eval_freq,
                            plan.checkpoint[1] if plan.checkpoint else None,
                        )
                    )
                )
        if not args.dry_run:
            Runner(args.jobs, args.save_freq, args.keep_checkpoints, args.nice).run(plans)
    if not args.dry_run:
        eval_rows, run_rows = gather(args.log_folder)
        print(
            f"gathered {len(run_rows)} runs, {len(eval_rows)} evaluations into {args.log_folder}/evaluations.csv and runs.csv"
        )


if __name__ == "__main__":
    main()
