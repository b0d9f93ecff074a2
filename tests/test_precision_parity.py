"""``benchmarks/precision_parity.py``: the summary of learning runs in several precisions."""

from benchmarks import precision_parity


def test_parity_summary_pairs_seeds_with_fp32(tmp_path, capsys):
    """``precision_parity.py --summary``: each reduced precision is compared with fp32 on the same seeds only."""
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
