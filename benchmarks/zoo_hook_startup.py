"""
What the RL Zoo start-up hook of sb3_diffusion costs a Python process that never uses RL Zoo.

Run it with the Python of an environment where the package is installed::

    python benchmarks/zoo_hook_startup.py [--runs 200]

It reports, for the hook as installed (``sb3_diffusion_zoo.pth`` in site-packages):

- the import of the hook module at start-up, from ``python -X importtime -c pass`` (median of the runs);
- ``install()`` (putting the finder on ``sys.meta_path``) and one pass-through lookup of the finder,
  which every later import pays until ``rl_zoo3`` is imported (timeit);
- wall time of ``python -c pass`` and of ``python -c "import numpy"`` with the hook and with
  ``SB3_DIFFUSION_NO_ZOO_HOOK=1`` (the finder is then not installed), runs interleaved, medians.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import timeit


def run_wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    env_on = {key: value for key, value in os.environ.items() if key != "SB3_DIFFUSION_NO_ZOO_HOOK"}
    env_off = {**env_on, "SB3_DIFFUSION_NO_ZOO_HOOK": "1"}

    import_us = []
    for _ in range(args.runs // 4 or 1):
        trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env_on, capture_output=True, text=True)
        lines = [line for line in trace.stderr.splitlines() if line.rstrip().endswith("_sb3_diffusion_zoo_hook")]
        if not lines:
            sys.exit("The hook is not installed in this environment (no _sb3_diffusion_zoo_hook at start-up)")
        import_us.append(int(lines[0].split("|")[1]))
    print(f"hook module import at start-up (-X importtime, cumulative): median {statistics.median(import_us):.0f} us")

    import _sb3_diffusion_zoo_hook as hook

    finder = hook.ZooFinder()
    number = 20_000
    install = timeit.timeit(lambda: (hook.install(), hook.uninstall()), number=number) / number
    lookup = timeit.timeit(lambda: finder.find_spec("numpy.core.multiarray", None), number=number * 10) / (number * 10)
    print(f"install() + uninstall(): {install * 1e6:.1f} us; pass-through lookup per later import: {lookup * 1e9:.0f} ns")

    for code in ("pass", "import numpy"):
        walls: dict[str, list[float]] = {"hook on": [], "hook off": []}
        for _ in range(args.runs):
            walls["hook on"].append(run_wall([sys.executable, "-c", code], env_on))
            walls["hook off"].append(run_wall([sys.executable, "-c", code], env_off))
        medians = {name: 1e3 * statistics.median(values) for name, values in walls.items()}
        print(
            f"python -c {code!r}: median {medians['hook on']:.2f} ms with the hook, {medians['hook off']:.2f} ms "
            f"with SB3_DIFFUSION_NO_ZOO_HOOK=1 ({args.runs} interleaved runs each)"
        )


if __name__ == "__main__":
    main()
