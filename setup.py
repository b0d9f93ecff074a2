"""
Everything declarative lives in setup.cfg; this file only adds two build steps that setup.cfg cannot express:

- the RL Zoo start-up hook: ``sb3_diffusion_zoo.pth`` and ``_sb3_diffusion_zoo_hook.py`` (a copy of
  ``sb3_diffusion/zoo/hook.py``) at the top of ``site-packages``, for ``pip install .`` and for
  ``pip install -e .`` alike (see ``sb3_diffusion/zoo/hook.py``);
- the RL Zoo configs: the top-level ``hyperparams/*.yml`` (the one source) are shipped as
  ``sb3_diffusion/hyperparams/*.yml``. An editable install reads them from the source tree instead.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
HOOK_SOURCE = ROOT / "sb3_diffusion" / "zoo" / "hook.py"
HOOK_MODULE = "_sb3_diffusion_zoo_hook"
# site.py runs .pth lines that start with "import"; the hook checks SB3_DIFFUSION_NO_ZOO_HOOK itself.
# The name sorts after setuptools' "__editable__.*.pth", though the hook module does not depend on it.
PTH_NAME = "sb3_diffusion_zoo.pth"
PTH_LINE = f"import {HOOK_MODULE}; {HOOK_MODULE}.install()\n"
CONFIGS = sorted((ROOT / "hyperparams").glob("*.yml"))


class BuildPyWithZooHook(build_py):
    """``build_py`` that also writes the start-up hook and copies the RL Zoo configs into the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            # Editable wheel (PEP 660): the package itself is imported from the source tree, but the
            # hook must sit in site-packages. setuptools points `install_lib` at the unpacked editable
            # wheel, whose content is installed as is.
            target = Path(self.get_finalized_command("install").install_lib)
            if not any(target.glob("*.dist-info")):
                self.warn(f"not an unpacked wheel: {target}; the RL Zoo start-up hook is not installed")
                return
        else:
            target = Path(self.build_lib)
            for config in CONFIGS:
                self.mkpath(str(self._config_output(config).parent))
                self.copy_file(str(config), str(self._config_output(config)), preserve_mode=False)
        self.mkpath(str(target))
        self.copy_file(str(HOOK_SOURCE), str(target / f"{HOOK_MODULE}.py"), preserve_mode=False)
        (target / PTH_NAME).write_text(PTH_LINE)

    def _config_output(self, config: Path) -> Path:
        return Path(self.build_lib, "sb3_diffusion", "hyperparams", config.name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        outputs += [str(self._config_output(config)) for config in CONFIGS]
        return outputs

    def get_output_mapping(self) -> dict[str, str]:
        # Lets a strict editable install (a link tree) link the configs into the package too
        mapping = dict(super().get_output_mapping())
        mapping.update({str(self._config_output(config)): os.fspath(config) for config in CONFIGS})
        return mapping


setup(cmdclass={"build_py": BuildPyWithZooHook})
