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
