"""
RL Zoo integration: the real command lines in subprocesses (from a temporary folder, with the
installed package), plus in-process checks of the configs, samplers and registration.

The package must be installed (``pip install -e ".[tests,zoo]"``): the unchanged ``python -m rl_zoo3.*``
commands only know ``sdac``/``qvpo`` through the start-up hook that the installation puts in site-packages.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gymnasium as gym
import pytest
import torch as th
import yaml

pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

from rl_zoo3.exp_manager import ExperimentManager  # noqa: E402

from sb3_diffusion import QVPO, SDAC  # noqa: E402
from sb3_diffusion.zoo import ALGO_NAMES, CONVERTERS, SAMPLERS, config_path, register  # noqa: E402
from sb3_diffusion.zoo.hook import ENV_VAR  # noqa: E402
from sb3_diffusion.zoo.samplers import merge_policy_kwargs, trial_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
register()
ALGORITHMS = {"qvpo": QVPO, "sdac": SDAC}
MUJOCO_TASKS = (
    "Hopper-v5",
    "Walker2d-v5",
    "HalfCheetah-v5",
    "Ant-v5",
    "Humanoid-v5",
    "Swimmer-v5",
    "Reacher-v5",
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
    "Pusher-v5",
)

# -params that make a trial of the search cheap (pinned: the sampler leaves them alone)
CHEAP_PINS = {
    "sdac": ["n_candidates:4", "n_reverse_samples:8"],
    "qvpo": ["n_policy_samples:8", "n_behavior_candidates:2", "n_target_candidates:2", "n_eval_candidates:2"],
}
COMMON_PINS = ["learning_starts:100", "batch_size:32", "policy_kwargs:dict(net_arch=[16, 16], diffusion_steps=3)"]


def zoo(args: list[str], cwd: Path, hook: bool = True, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in ``cwd`` on one thread; fail with its output unless it succeeds (``check``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    if not hook:
        env[ENV_VAR] = "1"
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        pytest.fail(f"`python {' '.join(args)}` exited with {result.returncode}:\n{output}")
    return result


def saved_config(run_folder: Path, env_id: str = "Pendulum-v1") -> dict:
    with open(run_folder / env_id / "config.yml") as file:
        return dict(yaml.load(file, Loader=yaml.UnsafeLoader))  # RL Zoo writes an OrderedDict


def config_entry(algo: str, env_id: str) -> dict:
    with open(config_path(algo)) as file:
        return yaml.safe_load(file)[env_id]


def test_hook_installed_and_imports_nothing(tmp_path):
    code = (
        "import sys; print(any(getattr(f, 'sb3_diffusion_zoo_hook', False) for f in sys.meta_path)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'sb3_diffusion', 'rl_zoo3', 'optuna')))"
    )
    lines = zoo(["-c", code], tmp_path).stdout.split("\n")
    assert lines[0] == "True", "the start-up hook is not installed: install the package (pip install -e .)"
    assert lines[1] == "[]", f"the start-up hook imported {lines[1]}"
    assert zoo(["-c", code], tmp_path, hook=False).stdout.split("\n")[0] == "False"


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_train_with_shipped_config_then_enjoy(algo, tmp_path):
    args = ["-m", "rl_zoo3.train", "--algo", algo, "--env", "Pendulum-v1", "-n", "300", "--seed", "0", "--eval-freq", "-1"]
    result = zoo([*args, "--num-threads", "1", "-params", "learning_starts:100"], tmp_path)
    run = tmp_path / "logs" / algo / "Pendulum-v1_1"
    assert f"Loading hyperparameters from: {config_path(algo)}" in result.stdout
    assert saved_config(run) == {**config_entry(algo, "Pendulum-v1"), "learning_starts": 100}
    model = ALGORITHMS[algo].load(run / "Pendulum-v1.zip", device="cpu")
    assert model.num_timesteps == 300
    assert model.policy.actor.diffusion_steps == config_entry(algo, "Pendulum-v1")["policy_kwargs"]["diffusion_steps"]

    args = ["-m", "rl_zoo3.enjoy", "--algo", algo, "--env", "Pendulum-v1", "-f", "logs", "-n", "210", "--no-render"]
    result = zoo([*args, "--num-threads", "1"], tmp_path)
    assert f"Loading logs/{algo}/Pendulum-v1_1/Pendulum-v1.zip" in result.stdout
    returns = [float(value) for value in re.findall(r"Episode Reward: (\S+)", result.stdout)]
    assert len(returns) == 1 and -3300 < returns[0] <= 0  # one 200-step episode of Pendulum (reward >= -16.3 a step)


def test_record_video_knows_our_algorithms(tmp_path):
    # Recording itself needs moviepy and a renderer; the registration is what this package adds
    usage = zoo(["-m", "rl_zoo3.record_video", "--help"], tmp_path).stdout
    algos = re.search(r"--algo \{([^}]*)\}", usage)
    assert algos is not None and set(ALGORITHMS) <= set(algos.group(1).split(",")), usage


def test_conf_overrides_shipped_config(tmp_path):
    entry = {
        "policy": "MlpPolicy",
        "n_timesteps": 120,
        "learning_starts": 60,
        "batch_size": 16,
        "n_candidates": 2,
        "n_reverse_samples": 4,
        "policy_kwargs": {"net_arch": [8], "diffusion_steps": 2},
    }
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    args = ["-m", "rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "-conf", "mine.yml", "--eval-freq", "-1"]
    result = zoo([*args, "--num-threads", "1"], tmp_path)
    assert "Loading hyperparameters from: mine.yml" in result.stdout
    run = tmp_path / "logs" / "sdac" / "Pendulum-v1_1"
    assert saved_config(run) == entry
    model = ALGORITHMS["sdac"].load(run / "Pendulum-v1.zip", device="cpu")
    assert (model.batch_size, model.n_candidates, model.policy.actor.diffusion_steps) == (16, 2, 2)


def optimize_args(algo: str, n_trials: int) -> list[str]:
    args = ["-m", "rl_zoo3.train", "--algo", algo, "--env", "Pendulum-v1", "-optimize", "--n-trials", str(n_trials)]
    args += ["-n", "200", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots", "--num-threads", "1"]
    return [*args, "-params", *COMMON_PINS, *CHEAP_PINS[algo]]


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_optimize_two_trials_writes_report(algo, tmp_path):
    zoo([*optimize_args(algo, 2), "--sampler", "random", "--pruner", "none", "--seed", "0"], tmp_path)
    reports = list((tmp_path / "logs" / algo).glob("report_Pendulum-v1_2-trials-200-random-none_*.csv"))
    assert len(reports) == 1 and reports[0].with_suffix(".pkl").is_file()
    import pandas as pd

    report = pd.read_csv(reports[0])
    assert list(report["state"]) == ["COMPLETE", "COMPLETE"]
    searched = {column[len("params_") :] for column in report.columns if column.startswith("params_")}
    # The pinned hyperparameters are not searched, the others are
    assert {"learning_rate", "one_minus_gamma", "tau", "actor_learning_rate"} <= searched
    assert not searched & {"batch_size_pow", "net_arch", "diffusion_steps", "n_candidates", "n_policy_samples"}


# The database of the distributed test: .ci/run starts a PostgreSQL server and sets the URL, or the reason
# why it could not (.ci/postgres); any SQLAlchemy URL works
STORAGE_URL_VAR = "SB3_DIFFUSION_TEST_OPTUNA_URL"
STORAGE_SKIP_VAR = "SB3_DIFFUSION_TEST_OPTUNA_SKIP"
OPTUNA_CLI = ["-c", "import sys; from optuna.cli import main; sys.exit(main())"]  # the `optuna` command


def readme_commands(after: str) -> list[list[str]]:
    """The commands of the README's first ```bash block after the text ``after``, one argv each."""
    text = (ROOT / "README.md").read_text()
    block = text.split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def recipe_command(commands: list[list[str]], *words: str) -> list[str]:
    matches = [argv for argv in commands if all(word in argv for word in words)]
    assert len(matches) == 1, f"the README recipe has {len(matches)} commands with {words}: {commands}"
    return matches[0]


def with_values(argv: list[str], **values: str) -> list[str]:
    """``argv`` with the values of its options replaced (``n_trials`` is ``--n-trials``, ``n`` is ``-n``)."""
    argv = list(argv)
    for name, value in values.items():
        flag = "-n" if name == "n" else "--" + name.replace("_", "-")
        assert flag in argv, f"{flag} is not in the README's command {argv}"
        argv[argv.index(flag) + 1] = value
    return argv


def as_subprocess(argv: list[str]) -> list[str]:
    """The arguments of ``python`` that run a README command (``optuna ...`` or ``python ...``)."""
    assert argv[0] in ("optuna", "python"), argv
    return [*OPTUNA_CLI, *argv[1:]] if argv[0] == "optuna" else argv[1:]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_share_one_study(kind, tmp_path):
    """
    The README's distributed-tuning recipe, with a small budget: two workers at the same time on one study
    (a journal file, or the PostgreSQL server that .ci/run starts); no trial is lost or run twice, and the
    best trial is retrained with --trial-id.
    """
    study_name = f"shared-{uuid.uuid4().hex[:8]}"
    small = ["--eval-episodes", "1", "--no-optim-plots"]
    pins = ["-params", *COMMON_PINS, *CHEAP_PINS["sdac"]]
    if kind == "journal":
        storage = str(tmp_path / "study.log")
        study_storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
        worker = readme_commands("On one machine, a journal file")[0]
        worker = [*with_values(worker, storage=storage, study_name=study_name, max_total_trials="4")]
        worker += ["-n", "200", "--n-evaluations", "1", *small, *pins]  # (--num-threads 1 is in the recipe)
        retrain = ["python", "-m", "rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "--storage", storage]
        retrain += ["--study-name", study_name, "--trial-id", "N"]
    else:
        storage = study_storage = os.environ.get(STORAGE_URL_VAR, "")
        if not storage:
            reason = os.environ.get(STORAGE_SKIP_VAR, f"{STORAGE_URL_VAR} is not set (.ci/run starts PostgreSQL and sets it)")
            pytest.skip(f"no PostgreSQL server: {reason}")
        recipe = readme_commands("Across machines, PostgreSQL:")
        names = dict(storage=storage, study_name=study_name)
        create = with_values(recipe_command(recipe, "create-study"), **names)
        assert "--skip-if-exists" in create and create[create.index("--direction") + 1] == "maximize"
        zoo([*as_subprocess(create)], tmp_path)
        worker = recipe_command(recipe, "rl_zoo3.train", "-optimize")
        worker = with_values(worker, env="Pendulum-v1", max_total_trials="4", n="200", n_evaluations="1", **names)
        worker += [*small, "--num-threads", "1", *pins]
        best_trial = with_values(recipe_command(recipe, "best-trial"), **names)
        retrain = with_values(recipe_command(recipe, "--trial-id"), env="Pendulum-v1", **names)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    workers = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        log = open(folder / "output.txt", "w")
        process = subprocess.Popen([sys.executable, *as_subprocess(worker)], cwd=folder, env=env, stdout=log, stderr=log)
        workers.append((process, log, folder))
    finished: list[set[int]] = []
    for process, log, folder in workers:
        process.wait(timeout=600)
        log.close()
        output = (folder / "output.txt").read_text()
        assert process.returncode == 0, output[-4000:]
        finished.append({int(number) for number in re.findall(r"Trial (\d+) finished", output)})
    # The workers shared the study's 4 trials (how many each took depends on its speed, as RL Zoo's
    # --max-total-trials counts the study, not the worker): no trial lost (all 4 complete) or run twice
    study = optuna.load_study(study_name=study_name, storage=study_storage)
    assert sum(map(len, finished)) == 4 and not finished[0] & finished[1], finished
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3] and finished[0] | finished[1] == {0, 1, 2, 3}
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    best = study.best_trial
    if kind == "postgresql":  # the README's way to find it
        shown = zoo(as_subprocess(best_trial), tmp_path).stdout
        assert json.loads(shown)["number"] == best.number, shown
    # Retrain the best trial with the same pins as the search; and trial 0 (RL Zoo's own code ignores --trial-id 0)
    for number in sorted({best.number, 0}):
        folder = tmp_path / f"retrain{number}"
        folder.mkdir()
        command = as_subprocess(with_values(retrain, trial_id=str(number)))
        zoo([*command, "-n", "50", "--eval-freq", "-1", "--num-threads", "1", *pins], folder)
        config = saved_config(folder / "logs" / "sdac" / "Pendulum-v1_1")
        rebuilt = CONVERTERS["sdac"](study.trials[number].params)
        searched = set(rebuilt) - {pin.split(":")[0] for pin in pins[1:]}
        assert searched and {key: config[key] for key in searched} == {key: rebuilt[key] for key in searched}, number


def test_trial_id_rebuilds_the_trial(tmp_path):
    # A study of the real sampler, trial 1 with a chosen network; then `--trial-id 1` trains with it
    storage = tmp_path / "study.log"
    study = optuna.create_study(
        study_name="rebuild", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage)))
    )
    study.enqueue_trial({"net_arch": "small", "diffusion_steps": 5, "one_minus_gamma": 0.05 / 2})
    study.enqueue_trial(
        {"net_arch": "small", "diffusion_steps": 10, "learning_rate": 5e-4, "n_candidates": 8, "precision": "bf16"}
    )
    sampled = []
    study.optimize(lambda trial: sampled.append(SAMPLERS["sdac"](trial, 1, 1, {})) or 0.0, n_trials=2)
    # a config with policy keyword arguments the search does not touch: they must survive the rebuild
    entry = {**config_entry("sdac", "Pendulum-v1"), "policy_kwargs": {"net_arch": [8], "init_noise_scale": 0.7}}
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    args = ["-m", "rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "-conf", "mine.yml", "-n", "50"]
    zoo([*args, "--storage", str(storage), "--study-name", "rebuild", "--trial-id", "1", "--eval-freq", "-1"], tmp_path)
    config = saved_config(tmp_path / "logs" / "sdac" / "Pendulum-v1_1")
    expected = {"net_arch": [64, 64], "diffusion_steps": 10, "precision": "bf16", "init_noise_scale": 0.7}
    assert config["policy_kwargs"] == expected
    assert config["learning_rate"] == 5e-4 and config["n_candidates"] == 8
    assert config["gamma"] == sampled[1]["gamma"] and config["lambda_init"] == sampled[1]["lambda_init"]
    model = ALGORITHMS["sdac"].load(tmp_path / "logs" / "sdac" / "Pendulum-v1_1" / "Pendulum-v1.zip", device="cpu")
    assert (model.policy.actor.diffusion_steps, model.n_candidates, model.gamma) == (10, 8, sampled[1]["gamma"])


def test_kill_switch_and_wrapper(tmp_path):
    args = ["rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "-n", "150", "--eval-freq", "-1", "--num-threads", "1"]
    refused = zoo(["-m", *args], tmp_path, hook=False, check=False)
    assert refused.returncode != 0 and "invalid choice: 'sdac'" in refused.stderr
    result = zoo(["-m", "sb3_diffusion.zoo", "train", *args[1:], "-params", "learning_starts:100"], tmp_path, hook=False)
    assert f"Loading hyperparameters from: {config_path('sdac')}" in result.stdout
    assert (tmp_path / "logs" / "sdac" / "Pendulum-v1_1" / "Pendulum-v1.zip").is_file()


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    # A zoo training with checkpoints (--save-freq, with their replay buffers) is SIGKILLed; the same command
    # with `-i <last checkpoint>` goes on to the total, counters continuing as if it had not been interrupted
    args = ["-m", "rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "-n", "1000", "--seed", "0", "--eval-freq", "-1"]
    args += ["--save-freq", "200", "--save-replay-buffer", "--num-threads", "1", "-params", *COMMON_PINS, *CHEAP_PINS["sdac"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    run = tmp_path / "logs" / "sdac" / "Pendulum-v1_1"
    with open(tmp_path / "killed.txt", "w") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (run / "rl_model_replay_buffer_400_steps.pkl").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint at step 400 after 300 s"
            time.sleep(0.02)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    output = (tmp_path / "killed.txt").read_text()
    files = sorted(path.name for path in run.iterdir())
    assert process.returncode == -signal.SIGKILL, (
        f"the training ended before a checkpoint with its replay buffer ({files}):\n{output[-3000:]}"
    )
    assert not (run / "Pendulum-v1.zip").exists()
    steps = max(int(path.stem.split("_")[-2]) for path in run.glob("rl_model_replay_buffer_*_steps.pkl"))
    assert 400 <= steps < 1000 and (run / f"rl_model_{steps}_steps.zip").is_file()

    result = zoo([*args, "-i", str(run / f"rl_model_{steps}_steps.zip")], tmp_path)
    assert f"Resuming the run of {run / f'rl_model_{steps}_steps.zip'} at step {steps}" in result.stdout
    resumed = tmp_path / "logs" / "sdac" / "Pendulum-v1_2"
    model = ALGORITHMS["sdac"].load(resumed / "Pendulum-v1.zip", device="cpu")
    assert model.num_timesteps == 1000
    assert model._n_updates == 1000 - 100  # as many updates as an uninterrupted run (learning_starts:100)
    model.load_replay_buffer(resumed / "replay_buffer.pkl")
    # the checkpoint's buffer went on: all the steps but the one the checkpoint was written at
    assert model.replay_buffer.size() == 1000 - 1
    assert sorted(path.name for path in resumed.glob("rl_model_*_steps.zip"))[-1] == "rl_model_800_steps.zip"


def test_non_finite_losses_prune_the_trial(tmp_path, capsys):
    pins = {"learning_starts": 50, "batch_size": 16, "n_candidates": 2, "n_reverse_samples": 4}
    pins["policy_kwargs"] = {"net_arch": [8], "diffusion_steps": 2}
    manager = ExperimentManager(
        argparse.Namespace(),
        "sdac",
        "Pendulum-v1",
        str(tmp_path),
        n_timesteps=200,
        hyperparams={**pins, "reward_scale": 1e30},  # the squared TD error overflows float32
        optimize_hyperparameters=True,
        n_evaluations=1,
        n_eval_episodes=1,
        device="cpu",
    )
    assert manager.setup_experiment() is None
    study = optuna.create_study(direction="maximize")
    study.optimize(manager.objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    # The algorithm's own check stops the update before its backward pass (RL Zoo prints the error)
    assert "Non-finite critic loss (inf) in gradient update 1" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_config_entries_name_known_envs(algo):
    with open(config_path(algo)) as file:
        entries = yaml.safe_load(file)
    assert set(MUJOCO_TASKS) | {"Pendulum-v1", "default"} <= set(entries)
    for env_id, entry in entries.items():
        assert env_id == "default" or env_id in gym.registry, env_id
        assert entry["policy"] == "MlpPolicy"
    # The papers' budgets: QVPO 1M steps; SDAC 1M steps with 5 envs after a 30k warm-up that SB3 counts
    expected = {"sdac": dict(n_envs=5, n_timesteps=1_030_000), "qvpo": dict(n_timesteps=1_000_000)}[algo]
    # except the small-budget entries of docs/learning.md (the older task names keep the official ones)
    small_budget = {"InvertedPendulum-v5", "InvertedDoublePendulum-v5"}  # for both algorithms
    for env_id in MUJOCO_TASKS:
        if env_id in small_budget:
            assert entries[env_id]["n_timesteps"] <= 26_000
        else:
            assert {key: entries[env_id][key] for key in expected} == expected


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_the_papers_task_versions_get_the_official_settings(algo, tmp_path):
    # The published numbers: SDAC on -v4 tasks, QVPO on -v3 tasks (Table 1: five of them)
    paper = {"sdac": [task.replace("-v5", "-v4") for task in MUJOCO_TASKS]}
    paper["qvpo"] = [f"{name}-v3" for name in ("Hopper", "Walker2d", "Ant", "HalfCheetah", "Humanoid")]
    older = [task.replace("-v5", f"-v{version}") for task in MUJOCO_TASKS for version in (2, 3, 4)]
    older = [env_id for env_id in older if env_id in gym.registry]
    assert set(paper[algo]) <= set(older)

    def hyperparams(env_id: str) -> dict:
        manager = ExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path))
        return manager.read_hyperparameters()[0]

    official = hyperparams("Hopper-v5")
    assert official["policy_kwargs"] == config_entry(algo, "Hopper-v5")["policy_kwargs"]
    for env_id in older:
        assert hyperparams(env_id) == official, env_id


def config_cases():
    for algo in ALGO_NAMES:
        with open(config_path(algo)) as file:
            entries = yaml.safe_load(file)
        # "default" is built for a task that has no entry of its own
        yield from ((algo, "MountainCarContinuous-v0" if env_id == "default" else env_id) for env_id in entries)


@pytest.mark.parametrize(("algo", "env_id"), list(config_cases()))
def test_config_builds_a_model(algo, env_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    manager = ExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path), eval_freq=-1, verbose=0, device="cpu")
    model, hyperparams = manager.setup_experiment()
    try:
        assert manager.config == str(config_path(algo))
        assert isinstance(model, ALGORITHMS[algo])
        assert model.n_envs == hyperparams.get("n_envs", 1)
        policy_kwargs = hyperparams.get("policy_kwargs", {})
        if isinstance(policy_kwargs, str):  # RL Zoo's string form, evaluated with torch.nn as nn
            policy_kwargs = eval(policy_kwargs, {"nn": th.nn})
            if "critic_activation_fn" in policy_kwargs:
                assert not any(isinstance(m, th.nn.Mish) for m in model.critic.modules())
        if "diffusion_steps" in policy_kwargs:
            assert model.policy.actor.diffusion_steps == policy_kwargs["diffusion_steps"]
    finally:
        model.env.close()


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_sampler_is_its_converter(algo):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        hyperparams = SAMPLERS[algo](trial, 1, 1, {})
        assert hyperparams == CONVERTERS[algo](trial.params)
        assert 0.97 <= hyperparams["gamma"] < 1 and hyperparams["batch_size"] in (64, 128, 256, 512)
        assert set(hyperparams["policy_kwargs"]) == {"net_arch", "diffusion_steps", "precision"}
        own = {"sdac": {"lambda_init", "exploration_scale", "n_candidates"}, "qvpo": {"entropy_weight", "n_policy_samples"}}
        assert own[algo] <= set(hyperparams)
        study.tell(trial, 0.0)
    model = ALGORITHMS[algo]("MlpPolicy", "Pendulum-v1", **hyperparams, device="cpu")  # every draw is valid
    assert model.gamma == hyperparams["gamma"]


def test_sampler_merges_and_pins():
    trial = optuna.create_study().ask()
    pinned = {"batch_size": 64, "actor_lr_final": 1e-5, "policy_kwargs": {"diffusion_steps": 3}}
    with trial_context({"init_noise_scale": 0.7, "diffusion_steps": 3}, pinned):
        hyperparams = SAMPLERS["sdac"](trial, 1, 1, {})
    assert "batch_size_pow" not in trial.params and "diffusion_steps" not in trial.params
    assert "batch_size" not in hyperparams and "actor_lr_final" not in hyperparams
    net_arch = CONVERTERS["sdac"]({"net_arch": trial.params["net_arch"]})["policy_kwargs"]["net_arch"]
    precision = trial.params["precision"]
    assert hyperparams["policy_kwargs"] == {
        "init_noise_scale": 0.7,
        "diffusion_steps": 3,
        "net_arch": net_arch,
        "precision": precision,
    }
    assert merge_policy_kwargs(None, {"a": 1}) == {"a": 1}
    assert eval(merge_policy_kwargs("dict(a=1, b=2)", {"b": 3})) == {"a": 1, "b": 3}


def test_register_is_idempotent(tmp_path):
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
    from rl_zoo3.utils import ALGOS

    init = ExperimentManager.__init__
    assert register() == register() == sorted(ALGORITHMS)
    assert ExperimentManager.__init__ is init and not hasattr(init.__wrapped__, "__wrapped__")
    for name, cls in ALGORITHMS.items():
        assert ALGOS[name] is cls and HYPERPARAMS_SAMPLER[name] is SAMPLERS[name]
        assert HYPERPARAMS_CONVERTER[name] is CONVERTERS[name]
    default = ExperimentManager(argparse.Namespace(), "sdac", "Pendulum-v1", str(tmp_path))
    explicit = ExperimentManager(argparse.Namespace(), "sdac", "Pendulum-v1", str(tmp_path), config="mine.yml")
    other = ExperimentManager(argparse.Namespace(), "sac", "Pendulum-v1", str(tmp_path))
    assert (default.config, explicit.config) == (str(config_path("sdac")), "mine.yml")
    assert other.config.endswith(os.path.join("rl_zoo3", "hyperparams", "sac.yml"))


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_fresh_install_in_a_venv(editable, tmp_path):
    # A clean copy of the project installed into a new virtual environment, then the unchanged RL Zoo
    # command from another folder. The venv sees the packages of this environment, its pip and
    # setuptools included (--without-pip: no older copies bundled with the venv module)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "logs", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", *(["-e"] if editable else []), str(source)]
    installed = subprocess.run(install, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    (tmp_path / "run").mkdir()
    code = "import sb3_diffusion.zoo as z; print(z.config_path('sdac')); print(z.__file__)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV_VAR, None)
    where = subprocess.run([python, "-c", code], cwd=tmp_path / "run", env=env, capture_output=True, text=True, check=True)
    config, module = where.stdout.split()
    home = (source if editable else venv).resolve()
    assert Path(config).resolve().is_relative_to(home) and Path(module).resolve().is_relative_to(home), where.stdout
    args = ["-m", "rl_zoo3.train", "--algo", "sdac", "--env", "Pendulum-v1", "-n", "150", "--eval-freq", "-1"]
    result = subprocess.run([python, *args], cwd=tmp_path / "run", env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Loading hyperparameters from: {config}" in result.stdout
