"""Only where setuptools builds: everything else is in pyproject.toml.

pip builds a local directory in place, and setuptools writes its build/ tree and the
milter.egg-info metadata into the source directory (pip install /path/to/checkout left them in
the checkout, and a module removed since could come back into the next wheel from a stale
build/lib). Each build runs in a directory of its own outside the tree, removed when it ends.
"""

import atexit
import shutil
import tempfile

from setuptools import setup

build = tempfile.mkdtemp(prefix="milter-build-")
atexit.register(shutil.rmtree, build, True)
setup(options={"build": {"build_base": build}, "egg_info": {"egg_base": build}})
