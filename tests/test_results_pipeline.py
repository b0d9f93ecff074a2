"""The results pipeline (benchmarks/run_results.py, plot_results.py): planning, skip, resume, gathering, IQM.

Fast tests work on fake runs (evaluations.npz and checkpoint files written by the test, a stand-in for
the RL Zoo command); the one real RL Zoo run, killed and resumed, is marked slow.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch as th

from benchmarks import plot_results, run_results
from benchmarks.run_results import RunSpec


def spec(algo="sac", env="Pendulum-v1", seed=0, steps=1000, eval_freq=200, **kwargs) -> RunSpec:
    return RunSpec(algo, env, seed, steps, eval_freq, 2, **kwargs)


def write_evaluations(folder: Path, timesteps, returns) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results = np.array([[r, r + 1.0] for r in returns])
    np.savez(
        folder / "evaluations.npz", timesteps=np.array(timesteps), results=results, ep_lengths=np.full(results.shape, 200)
    )


def write_checkpoint(folder: Path, step: int, truncated: bool = False, buffer: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"rl_model_{step}_steps.zip"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("data", "x" * 1000)
    if truncated:
        model.write_bytes(model.read_bytes()[:-40])
    if buffer:
        with open(folder / f"rl_model_replay_buffer_{step}_steps.pkl", "wb") as file:
            pickle.dump({"step": step}, file)
    return model


def make_run(log: Path, run: RunSpec, segments, status="running") -> Path:
    """A run folder with ``segments``: list of (start, timesteps, returns)."""
    folder = run_results.run_dir(log, run)
    state = run_results.new_state(run)
    state["status"] = status
    for i, (start, timesteps, returns) in enumerate(segments, start=1):
        zoo = Path(run.algo) / f"{run.env}_{i}"
        write_evaluations(folder / zoo, timesteps, returns)
        state["segments"].append(
            {"zoo_folder": str(zoo), "start": start, "command": "python -m rl_zoo3.train ...", "wall_s": 10.0, "cpu_s": 8.0}
        )
    run_results.write_state(folder, state)
    return folder


def test_hyperparams_come_from_the_right_config():
    entry, source, other = run_results.choose_hyperparams("sdac", "Pendulum-v1")
    assert "shipped config sdac.yml, entry Pendulum-v1" in source and other is None and entry["n_candidates"] == 4
    _, source, other = run_results.choose_hyperparams("sac", "Pendulum-v1")
    assert source == "RL Zoo sac.yml, tuned entry Pendulum-v1" and other is None
    _, source, other = run_results.choose_hyperparams("tqc", "InvertedPendulum-v5")
    assert "default entry (SB3 defaults)" in source and other is None
    entry, source, other = run_results.choose_hyperparams("td3", "Hopper-v5")
    assert other == "Hopper-v4" and "tuned entry Hopper-v4" in source and entry["learning_starts"] == 10000
    _, source, _ = run_results.choose_hyperparams("td3", "Hopper-v5", use_v4=False)
    assert "default entry" in source
    # the shipped SDAC config for MuJoCo: 5 envs, which sets how RL Zoo counts evaluation steps
    assert run_results.make_spec("sdac", "Hopper-v5", 0, 5000, 1000, 2, {}, Path("/tmp/x")).n_envs == 5


def test_replay_buffer_capped_at_the_budget_and_v4_entry_passed_as_conf(tmp_path):
    run = run_results.make_spec("sac", "Hopper-v5", 1, 5000, 1000, 3, {"learning_rate": "1e-3"}, tmp_path)
    assert run.params == {"learning_rate": "1e-3", "buffer_size": "5000"}
    assert run.conf == str(tmp_path / "zoo_conf.yml")
    run_results.write_conf(run)
    import yaml

    assert "Hopper-v5" in yaml.safe_load(Path(run.conf).read_text())
    command = run_results.zoo_command(run, tmp_path, 1000)
    assert command[1:3] == ["-m", "rl_zoo3.train"]
    for flag, value in [("--seed", "1"), ("-n", "5000"), ("--eval-freq", "1000"), ("--eval-episodes", "3"),
                        ("--num-threads", "1"), ("-f", str(tmp_path)), ("--save-freq", "1000"), ("-conf", run.conf),
                        ("--gym-packages", "benchmarks.zoo_resume")]:  # fmt: skip
        assert command[command.index(flag) + 1] == value
    assert "--save-replay-buffer" in command and "-i" not in command
    assert command[command.index("-params") + 1 :] == ["learning_rate:1e-3", "buffer_size:5000"]
    # a config whose buffer is not larger than the budget keeps it
    assert "buffer_size" not in run_results.make_spec("sac", "Pendulum-v1", 0, 2_000_000, 1000, 3, {}, tmp_path).params


def test_resumed_segment_replaces_the_evaluations_it_redoes(tmp_path):
    run = spec()
    # segment 1 evaluated to 600 and was killed; its checkpoint at 400 resumed in segment 2, which was
    # killed at 800 (after its evaluation there); segment 3 resumed from 800
    folder = make_run(tmp_path, run, [(0, [200, 400, 600], [1, 2, 3]), (400, [600, 800], [30, 40]), (800, [1000], [50])])
    merged = run_results.merged_evaluations(folder, run_results.read_state(folder))
    assert merged["timesteps"].tolist() == [200, 400, 600, 800, 1000]
    assert merged["results"][:, 0].tolist() == [1, 2, 30, 40, 50]
    # a fresh start (no readable checkpoint) replaces everything before it
    folder = make_run(tmp_path / "b", run, [(0, [200, 400], [1, 2]), (0, [200], [9])])
    merged = run_results.merged_evaluations(folder, run_results.read_state(folder))
    assert merged["timesteps"].tolist() == [200] and merged["results"][0, 0] == 9


def test_plan_skips_complete_runs_resumes_from_newest_readable_checkpoint_and_starts_new_ones(tmp_path):
    run = spec()
    make_run(tmp_path, run, [(0, [200, 400, 600, 800, 1000], [1, 2, 3, 4, 5])], status="complete")
    assert run_results.plan_run(run, tmp_path).action == "skip"

    other = spec(seed=1)
    folder = make_run(tmp_path, other, [(0, [200, 400], [1, 2])])
    zoo = folder / "sac" / "Pendulum-v1_1"
    good = write_checkpoint(zoo, 400)
    write_checkpoint(zoo, 600, truncated=True)  # killed while writing the model
    write_checkpoint(zoo, 800, buffer=False)  # killed before its replay buffer was written
    plan = run_results.plan_run(other, tmp_path)
    assert plan.action == "resume" and plan.checkpoint == (400, good)
    command, state = run_results.begin_segment(plan, save_freq=200)
    assert command[command.index("-i") + 1] == str(good)
    assert state["segments"][-1] == {**state["segments"][-1], "zoo_folder": "sac/Pendulum-v1_2", "start": 400}
    assert run_results.read_state(folder)["status"] == "running"

    # marked complete, but the evaluations stop before the budget: not complete, resumed
    short = spec(seed=2)
    folder = make_run(tmp_path, short, [(0, [200, 400], [1, 2])], status="complete")
    write_checkpoint(folder / "sac" / "Pendulum-v1_1", 400)
    assert run_results.plan_run(short, tmp_path).action == "resume"

    assert run_results.plan_run(spec(seed=3), tmp_path).action == "start"  # never run
    folder = make_run(tmp_path, spec(seed=4), [(0, [200], [1])])  # interrupted before any checkpoint
    assert run_results.plan_run(spec(seed=4), tmp_path).action == "start"

    with pytest.raises(SystemExit, match="steps: 1000 there, 2000 asked"):
        run_results.plan_run(spec(steps=2000), tmp_path)


def test_prune_keeps_the_newest_checkpoints(tmp_path):
    run = spec()
    folder = make_run(tmp_path, run, [(0, [200], [1]), (200, [400], [2])])
    for step, segment in [(200, 1), (400, 1), (400, 2), (600, 2)]:
        write_checkpoint(folder / "sac" / f"Pendulum-v1_{segment}", step)
    run_results.prune_checkpoints(folder, run, keep=2)
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("rl_model_*"))
    assert len(left) == 4 and all("Pendulum-v1_2" in p for p in left)


def fake_zoo_command(spec, folder, save_freq, trained_agent=None):
    """Stands in for RL Zoo: writes the evaluations of a run from the checkpoint's step to the budget."""
    zoo = run_results.next_zoo_folder(folder, spec)
    start = int(trained_agent.name.split("_")[2]) if trained_agent else 0
    steps = list(range(start + spec.eval_freq, spec.steps + 1, spec.eval_freq))
    script = (
        "import numpy as np, os, sys; os.makedirs(sys.argv[1], exist_ok=True); s = np.array(eval(sys.argv[2]));"
        "np.savez(os.path.join(sys.argv[1], 'evaluations.npz'), timesteps=s, results=np.ones((len(s), 2)) * s[:, None],"
        " ep_lengths=np.ones((len(s), 2)))"
    )
    return [sys.executable, "-c", script, str(zoo), repr(steps)]


def test_runner_runs_in_parallel_records_segments_and_gathers(tmp_path, monkeypatch):
    monkeypatch.setattr(run_results, "zoo_command", fake_zoo_command)
    runs = [spec(algo=algo, seed=seed) for algo in ("sac", "sdac") for seed in (0, 1)]
    # one of them was interrupted at 400 with a readable checkpoint there
    folder = make_run(tmp_path, runs[1], [(0, [200, 400, 600], [7, 7, 7])], status="interrupted")
    write_checkpoint(folder / "sac" / "Pendulum-v1_1", 400)
    plans = [run_results.plan_run(run, tmp_path) for run in runs]
    assert [p.action for p in plans] == ["start", "resume", "start", "start"]
    run_results.Runner(jobs=2, save_freq=None, keep=2, nice=0).run(plans)
    assert all(run_results.read_state(p.folder)["status"] == "complete" for p in plans)
    assert [p.action for p in (run_results.plan_run(run, tmp_path) for run in runs)] == ["skip"] * 4

    eval_rows, run_rows = run_results.gather(tmp_path)
    resumed = [r for r in eval_rows if r["algo"] == "sac" and r["seed"] == 1]
    assert [(r["timestep"], r["return_mean"]) for r in resumed] == [
        (200, 7.5),
        (400, 7.5),
        (600, 600),
        (800, 800),
        (1000, 1000),
    ]
    row = next(r for r in run_rows if r["algo"] == "sac" and r["seed"] == 1)
    assert row["segments"] == 2 and row["final_return"] == 1000 and row["status"] == "complete"
    assert row["hyperparams"] == "" and row["cpu_s"] >= 0
    with np.load(tmp_path / "zoo_view" / "sac" / "Pendulum-v1_1" / "evaluations.npz") as view:
        assert view["timesteps"].tolist() == [200, 400, 600, 800, 1000]
    header = (tmp_path / "evaluations.csv").read_text().splitlines()[0]
    assert header.startswith("algo,env,seed,timestep,return_mean,return_std")


def test_iqm_and_stratified_bootstrap():
    assert plot_results.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert plot_results.iqm([3.0, 100.0, 1.0]) == pytest.approx(104 / 3)  # 3 runs: nothing is cut
    assert plot_results.iqm(np.array([[1, 2, 3, 4], [5, 6, 7, 800]]), axis=1).tolist() == [2.5, 6.5]
    point, low, high = plot_results.stratified_bootstrap_ci([np.array([5.0, 5.0, 5.0])])
    assert point == low == high == 5.0
    rng = np.random.default_rng(1)
    tasks = [rng.normal(0, 1, 10), rng.normal(10, 1, 6)]
    point, low, high = plot_results.stratified_bootstrap_ci(tasks, reps=500, seed=3)
    assert low < point < high
    assert plot_results.stratified_bootstrap_ci(tasks, reps=500, seed=3) == (point, low, high)
    # stratified: every resample keeps 10 runs of the first task and 6 of the second, so the mean over
    # all runs varies far less than with unstratified resampling of the 16 runs together
    strat = plot_results.stratified_bootstrap_ci(tasks, statistic=np.mean, reps=2000)
    pooled = plot_results.stratified_bootstrap_ci([np.concatenate(tasks)], statistic=np.mean, reps=2000)
    assert strat[2] - strat[1] < 0.5 * (pooled[2] - pooled[1])


def test_curves_and_final_scores_tables(tmp_path):
    evaluations = [
        {"env": "E", "algo": "a", "seed": str(s), "timestep": str(t), "return_mean": str(t * (s + 1))}
        for s in range(3)
        for t in (10, 20)
    ]
    rows = plot_results.curves(evaluations)
    assert [(r["timestep"], r["seeds"], r["mean"], r["min"], r["max"]) for r in rows] == [
        (10, 3, 20.0, 10.0, 30.0),
        (20, 3, 40.0, 20.0, 60.0),
    ]
    assert rows[0]["band_low"] == pytest.approx(20 - 10 / np.sqrt(3), abs=1e-3)
    runs = [
        {"env": "E", "algo": "a", "seed": str(s), "steps": "20", "status": "complete", "final_return": str(20.0 * (s + 1)),
         "wall_s": "5", "cpu_s": "4", "hyperparams": "RL Zoo", "params": ""}
        for s in range(3)
    ]  # fmt: skip
    (score,) = plot_results.final_scores(runs, reps=200)
    assert score["scores"] == "20.0 40.0 60.0" and score["mean"] == 40.0 and score["iqm"] == 40.0 and score["std"] == 20.0
    assert 20.0 <= score["iqm_ci_low"] < 40.0 < score["iqm_ci_high"] <= 60.0 and score["complete"] == "3/3"
    assert "| E | a | 20 | 0 1 2 (3/3 complete) | 20.0 40.0 60.0 | 40.0 +- 20.0 | 40.0 [" in plot_results.markdown_table(
        [score]
    )
    plot_results.plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_diagnose_runs_cut_at_the_budget_with_first_step_at_a_threshold(tmp_path):
    # two diagnose_learning.py runs (CSV + JSON), one longer than the budget
    for seed, means in ((0, [80.0, 1000.0, 1000.0]), (1, [90.0, 300.0, 900.0, 1000.0])):
        rows = ["timesteps,eval_mean,eval_std,wall_s"] + [
            f"{2000 * (i + 1)},{m},1.0,{10.0 * (i + 1)}" for i, m in enumerate(means)
        ]
        (tmp_path / f"sdac_s{seed}.csv").write_text("\n".join(rows) + "\n")
        config = {"algo": "sdac", "env": "E", "seed": seed, "steps": 2000 * len(means)}
        (tmp_path / f"sdac_s{seed}.json").write_text(json.dumps(config))
    evaluations, runs = plot_results.diagnose_runs("sdac*", str(tmp_path / "sdac_s*.csv"))
    assert [(r["algo"], r["seed"], r["timestep"]) for r in evaluations][:2] == [("sdac*", "0", 2000), ("sdac*", "0", 4000)]
    assert [r["wall_s"] for r in runs] == [30.0, 40.0]
    evaluations, runs = plot_results.cut_at_budget(evaluations, runs, 6000)
    assert max(r["timestep"] for r in evaluations) == 6000 and len(evaluations) == 6
    assert [(r["steps"], r["final_return"], r["last_timestep"]) for r in runs] == [(6000, 1000.0, 6000), (6000, 900.0, 6000)]
    first = plot_results.first_reaching(evaluations, 1000.0)
    assert first == {("sdac*", "E", "0"): 4000, ("sdac*", "E", "1"): None}
    (score,) = plot_results.final_scores(runs, reps=100, first=first)
    assert score["first_at_threshold"] == "4000 -" and score["scores"] == "1000.0 900.0"
    table = plot_results.markdown_table([score], threshold=1000.0)
    assert "| first step at 1000 per seed |" in table and "| 4000 - |" in table
    with pytest.raises(SystemExit, match="no file matches"):
        plot_results.diagnose_runs("x", str(tmp_path / "nothing*.csv"))


def test_another_log_folder_added_under_its_own_label(tmp_path):
    """``--add qvpo*=FOLDER``: a reduced configuration's runs get their own line, not averaged with qvpo's."""
    header = "algo,env,seed,timestep,return_mean,return_std,return_min,return_max,episodes,ep_length_mean"
    run_header = "algo,env,seed,steps,eval_freq,eval_episodes,status,last_timestep,final_return,best_return,"
    run_header += "wall_s,cpu_s,hyperparams,params"
    for folder, returns in (("main", (100.0, 300.0)), ("reduced", (200.0, 900.0))):
        (tmp_path / folder).mkdir()
        rows = [f"qvpo,E,{seed},1000,{r},0,{r},{r},5,100" for seed, r in enumerate(returns)]
        (tmp_path / folder / "evaluations.csv").write_text("\n".join([header, *rows]) + "\n")
        runs = [f"qvpo,E,{seed},1000,1000,5,complete,1000,{r},{r},10.0,9.0,zoo,{folder}" for seed, r in enumerate(returns)]
        (tmp_path / folder / "runs.csv").write_text("\n".join([run_header, *runs]) + "\n")
    out = tmp_path / "out"
    plot_results.main(["--log-folder", str(tmp_path / "main"), "--out", str(out), "--reps", "50",
                       "--add", f"qvpo*={tmp_path / 'reduced'}"])  # fmt: skip
    scores = {row["algo"]: row for row in plot_results.read_csv(out / "final_scores.csv")}
    assert set(scores) == {"qvpo", "qvpo*"}
    assert float(scores["qvpo"]["mean"]) == 200.0 and float(scores["qvpo*"]["mean"]) == 550.0
    with pytest.raises(SystemExit, match="gather"):
        plot_results.main(["--log-folder", str(tmp_path / "main"), "--out", str(out), "--add", f"x={tmp_path / 'none'}"])
    with pytest.raises(SystemExit):
        plot_results.main(["--log-folder", str(tmp_path / "main"), "--add", "no-equals-sign"])
    # --rename: the folder's own runs under another label (made there with --params)
    plot_results.main(["--log-folder", str(tmp_path / "main"), "--out", str(out), "--reps", "50", "--rename", "qvpo=qvpo*"])
    (score,) = plot_results.read_csv(out / "final_scores.csv")
    assert score["algo"] == "qvpo*" and float(score["mean"]) == 200.0
    assert {row["algo"] for row in plot_results.read_csv(out / "learning_curves.csv")} == {"qvpo*"}
    # --complete-only: a run that has not reached its budget is left out, not drawn as far as it got
    runs_csv = tmp_path / "main" / "runs.csv"
    runs_csv.write_text(runs_csv.read_text().replace("qvpo,E,1,1000,1000,5,complete", "qvpo,E,1,1000,1000,5,running"))
    plot_results.main(["--log-folder", str(tmp_path / "main"), "--out", str(out), "--reps", "50", "--complete-only"])
    (score,) = plot_results.read_csv(out / "final_scores.csv")
    assert score["scores"] == "100.0" and float(score["mean"]) == 100.0
    assert {row["seeds"] for row in plot_results.read_csv(out / "learning_curves.csv")} == {"1"}
    for bad in ("sac=sac*", "qvpo"):
        with pytest.raises(SystemExit):
            plot_results.main(["--log-folder", str(tmp_path / "main"), "--out", str(out), "--rename", bad])


@pytest.mark.slow
def test_real_zoo_run_killed_then_resumed_and_skipped(tmp_path):
    """SB3 SAC through RL Zoo and benchmarks/zoo_resume.py: killed after a checkpoint, resumed to its budget."""
    repo = Path(__file__).resolve().parents[1]
    args = [sys.executable, "benchmarks/run_results.py", "--algos", "sac", "--envs", "Pendulum-v1", "--seeds", "0",
            "--steps", "1200", "--eval-freq", "300", "--eval-episodes", "2", "--jobs", "1", "--log-folder", str(tmp_path),
            "--params", "sac:learning_starts:100"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    pipeline = subprocess.Popen(args, cwd=repo, env=env, start_new_session=True)
    zoo = tmp_path / "Pendulum-v1" / "sac" / "seed_0" / "sac" / "Pendulum-v1_1"
    deadline = time.time() + 240
    while not (zoo / "rl_model_replay_buffer_600_steps.pkl").exists() and pipeline.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(pipeline.pid, signal.SIGKILL)  # the pipeline and its RL Zoo run, as a preemption would
    pipeline.wait()
    state = json.loads((zoo.parents[2] / "run.json").read_text())
    assert state["status"] == "running"
    subprocess.run(args, cwd=repo, env=env, check=True, timeout=300)
    state = json.loads((zoo.parents[2] / "run.json").read_text())
    assert state["status"] == "complete" and len(state["segments"]) == 2 and state["segments"][1]["start"] >= 600
    log = (zoo.parents[2] / "segment_2.log").read_text()
    assert "Loading the replay buffer of the checkpoint" in log and "Resuming at step" in log
    rows = [line.split(",") for line in (tmp_path / "evaluations.csv").read_text().splitlines()[1:]]
    assert [int(r[3]) for r in rows] == [300, 600, 900, 1200]
    out = subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout
    assert "  skip    sac Pendulum-v1 seed 0" in out


def test_diagnose_kwargs_override_single_entries_of_the_zoo_policy_kwargs():
    from benchmarks.diagnose_learning import constructor_kwargs

    shipped = constructor_kwargs("sdac", "InvertedPendulum-v5", True, {})
    assert shipped["policy_kwargs"]["net_arch"] == {"pi": [64, 64], "qf": [256, 256]}
    overrides = {"batch_size": 64, "policy_kwargs": {"precision": "bf16"}}
    kwargs = constructor_kwargs("sdac", "InvertedPendulum-v5", True, overrides)
    assert kwargs["batch_size"] == 64 and kwargs["policy_kwargs"]["precision"] == "bf16"
    # the rest of the entry's policy_kwargs is kept, and the override did not leak into the entry
    assert {k: v for k, v in kwargs["policy_kwargs"].items() if k != "precision"} == shipped["policy_kwargs"]
    assert constructor_kwargs("sac", "Pendulum-v1", False, {"policy_kwargs": {"activation_fn": "nn.ReLU"}}) == {
        "policy_kwargs": {"activation_fn": th.nn.ReLU}
    }
    assert constructor_kwargs("sac", "Pendulum-v1", False, {}) == {}
