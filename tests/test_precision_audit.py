"""``benchmarks/precision_audit.py``: bf16 against fp32 with the same noise, beside fp32 with fresh noise."""

import csv

import pytest

from benchmarks import precision_audit
from sb3_diffusion.common import hot_path

ALL_QUANTITIES = {
    "chain",
    "scoring",
    "behaviour: choice changed",
    "behaviour: |Q regret|",
    "behaviour: Q regret, signed",
    "td_target (over the TD error)",
    "td_target, signed (over the TD error)",
}
ACTOR_QUANTITIES = {
    "sdac": {"actor: weighted mean noise (RMS)"},
    "qvpo": {"actor: best sample changed", "actor: |w - w_ref| / mean w", "actor: (w - w_ref) / mean w, signed"},
}


@pytest.fixture
def bf16_hardware(monkeypatch):
    """Pretend the CPU has hardware bf16 (torch computes bf16 on any CPU)."""
    monkeypatch.setattr(hot_path, "fast_bf16_available", lambda device: True)
    monkeypatch.setattr(precision_audit, "fast_bf16_available", lambda device: True)


def audit(algo, tmp_path, *extra):
    cls, kwargs = algo
    model = cls("MlpPolicy", "Pendulum-v1", seed=0, **kwargs).learn(100)
    model.save(tmp_path / "model.zip")
    name = cls.__name__.lower()
    out = tmp_path / "audit.csv"
    precision_audit.main(["--algo", name, "--model", str(tmp_path / "model.zip"), "--env", "Pendulum-v1",
                          "--rollout-steps", "64", "--batches", "2", "--batch-size", "32",
                          "--compile-mode", "off", "--out", str(out), *extra])  # fmt: skip
    with open(out) as file:
        return name, {row["quantity"]: row for row in csv.DictReader(file)}


def test_bf16_differences_are_measured_beside_fresh_noise(algo, tmp_path, bf16_hardware):
    name, rows = audit(algo, tmp_path)
    assert set(rows) == ALL_QUANTITIES | ACTOR_QUANTITIES[name]
    chain = rows["chain"]
    # bf16 really ran (more than fp32 rounding), and with the same noise it stays far closer to the
    # reference than a fresh draw of the noise does
    assert 1e-4 < float(chain["bf16"]) < 0.1 * float(chain["fresh"])
    assert float(rows["scoring"]["bf16"]) > 0.0
    for quantity, row in rows.items():
        if "signed" in quantity:  # a mean of signed changes is at most the mean of their sizes
            unsigned = rows[
                quantity.replace(", signed", "").replace("Q regret", "|Q regret|").replace("(w - w_ref)", "|w - w_ref|")
            ]
            assert abs(float(row["bf16"])) <= float(unsigned["bf16"]) + 1e-9
        else:
            assert float(row["bf16"]) >= 0.0


def test_parts_left_in_fp32_make_no_difference(algo, tmp_path, bf16_hardware):
    _, rows = audit(algo, tmp_path, "--bf16-parts", "chains")
    assert float(rows["scoring"]["bf16"]) == 0.0 and float(rows["chain"]["bf16"]) > 0.0
    _, rows = audit(algo, tmp_path, "--bf16-parts", "scoring")
    assert float(rows["chain"]["bf16"]) == 0.0 and float(rows["scoring"]["bf16"]) > 0.0


def test_needs_states_and_hardware_bf16(algo, tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        precision_audit.main(["--algo", "sdac", "--model", str(tmp_path / "m.zip")])  # neither --buffer nor --env
    monkeypatch.setattr(precision_audit, "fast_bf16_available", lambda device: False)
    with pytest.raises(SystemExit, match="no hardware bf16"):
        precision_audit.main(["--algo", "sdac", "--model", str(tmp_path / "m.zip"), "--env", "Pendulum-v1"])


def test_parity_summary_pairs_seeds_with_fp32(tmp_path, capsys):
    """``precision_parity.py --summary``: each reduced precision is compared with fp32 on the same seeds only."""
    from benchmarks import precision_parity

    runs = [("fp32", 0, -150), ("fp32", 1, -170), ("bf16_chains", 0, -160), ("bf16_chains", 1, -140), ("bf16", 1, -175),
            ("bf16", 2, -400)]  # fmt: skip
    path = tmp_path / "parity.jsonl"
    path.write_text("not json\n" + "".join(
        f'{{"algo": "qvpo", "task": "pendulum", "seed": {seed}, "precision": "{precision}", "mean_return": {value},'
        f' "wall_s": 1, "cpu_s": 2}}\n' for precision, seed, value in runs))  # fmt: skip
    precision_parity.summarize(str(path))
    rows = {line.split(" | ")[2]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["fp32", "bf16", "bf16_chains"]
    assert "| -160 +- 10 |  |" in rows["fp32"]
    # bf16 has seeds 1 and 2, only seed 1 has an fp32 twin: -175 - (-170)
    assert "| -5 +- 0; lower in 1 of 1 |" in rows["bf16"]
    # bf16_chains: -10 and +30
    assert "| 10 +- 20; lower in 1 of 2 |" in rows["bf16_chains"]
