"""Programs a benchmark runs from Debian's packages (the SFU reference, the
production build of a store), installed with apt-get when missing."""

from __future__ import annotations

import shutil
import subprocess

from bench.common import BenchError

_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


def ensure_program(command: str, package: str) -> str:
    """The path of `command`; installs Debian's `package` when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    print(f"installing Debian's {package} (apt-get) …", flush=True)
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                         package]):
        done = subprocess.run(argv, capture_output=True, text=True, env=_ENV)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed: {done.stderr[-300:]}")
    found = shutil.which(command)
    if not found:
        raise BenchError(f"apt-get installed {package} but there is no {command}")
    return found
