"""
``python -m sb3_diffusion.zoo <script> [arguments]``: register SDAC and QVPO with RL Zoo, then run
``python -m rl_zoo3.<script> [arguments]`` unchanged. Works with the start-up hook switched off
(``SB3_DIFFUSION_NO_ZOO_HOOK=1``). Example::

    python -m sb3_diffusion.zoo train --algo sdac --env Pendulum-v1
    python -m sb3_diffusion.zoo enjoy --algo sdac --env Pendulum-v1 -f logs/
"""

import runpy
import sys

# The RL Zoo scripts that take ``--algo``
SCRIPTS = ("train", "enjoy", "record_video", "record_training", "push_to_hub", "load_from_hub")

USAGE = f"usage: python -m sb3_diffusion.zoo {{{','.join(SCRIPTS)}}} [arguments of python -m rl_zoo3.<script>]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    script, arguments = argv[0], argv[1:]
    if script not in SCRIPTS:
        print(f"Unknown RL Zoo script {script!r}\n{USAGE}", file=sys.stderr)
        return 2

    from sb3_diffusion.zoo import register

    register()
    sys.argv = [f"rl_zoo3.{script}", *arguments]
    runpy.run_module(f"rl_zoo3.{script}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
