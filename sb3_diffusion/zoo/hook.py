"""
The start-up hook that makes the unchanged RL Zoo commands know ``sdac`` and ``qvpo``.

Installing the package puts two files in ``site-packages``: ``sb3_diffusion_zoo.pth``, whose one line
runs ``import _sb3_diffusion_zoo_hook; _sb3_diffusion_zoo_hook.install()`` at interpreter start, and
``_sb3_diffusion_zoo_hook.py``, a copy of this file (see ``setup.py``). ``install()`` only appends a
finder to ``sys.meta_path``: nothing else is imported, at a cost of well under a millisecond. When
``rl_zoo3`` is first imported, the finder lets the normal machinery load it, and right after
``rl_zoo3/__init__.py`` has run it calls :func:`sb3_diffusion.zoo.register`.

Switch it off with ``SB3_DIFFUSION_NO_ZOO_HOOK=1``; ``python -m sb3_diffusion.zoo train ...`` still
registers explicitly.

This module must stay importable on its own with the standard library only: it is imported by every
Python process of the environment.
"""

import os
import sys

ENV_VAR = "SB3_DIFFUSION_NO_ZOO_HOOK"
TARGET = "rl_zoo3"


def disabled() -> bool:
    """Whether ``SB3_DIFFUSION_NO_ZOO_HOOK`` switches the hook off (any value but empty, 0, false, no, off)."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


class ZooFinder:
    """
    Meta path finder that waits for ``rl_zoo3``. It never loads anything itself: it asks the other
    finders for ``rl_zoo3``'s spec, wraps that spec's loader so that ``register()`` runs right after
    the package's ``__init__``, and takes itself off ``sys.meta_path``.
    """

    sb3_diffusion_zoo_hook = True  # marker: the finder is recognised by this attribute, not by its class

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != TARGET or self._searching:
            return None
        self._searching = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._searching = False
        uninstall()
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):  # type: ignore[no-untyped-def]
            exec_module(module)
            _register()

        # On the loader instance, not its class: only this module is affected, and ``__loader__`` keeps its type
        loader.exec_module = exec_then_register
        return spec


def _register() -> None:
    try:
        from sb3_diffusion.zoo import register

        register()
    except Exception as error:  # rl_zoo3 must keep working for its own algorithms
        import warnings

        warnings.warn(
            f"sb3_diffusion could not register its algorithms with RL Zoo ({error!r}); "
            f"`python -m sb3_diffusion.zoo train ...` shows the full error. Set {ENV_VAR}=1 to silence this.",
            stacklevel=2,
        )


def installed() -> bool:
    """Whether a hook finder (from any copy of this module) is on ``sys.meta_path``."""
    return any(getattr(finder, "sb3_diffusion_zoo_hook", False) for finder in sys.meta_path)


def install() -> None:
    """Put the finder on ``sys.meta_path`` unless switched off, already there, or ``rl_zoo3`` is already imported."""
    if disabled() or installed():
        return
    if TARGET in sys.modules:
        _register()
        return
    sys.meta_path.insert(0, ZooFinder())


def uninstall() -> None:
    """Take every hook finder off ``sys.meta_path``."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, "sb3_diffusion_zoo_hook", False)]
