"""Build hook: the repository's ``data_samples/`` travels inside the wheel.

Everything else is in ``pyproject.toml``.  ``data_samples/`` stays at the repository root, where
readers and the ``diffhrnet-lab samples`` command find it, and is mapped to the package
``diffhrnet_lab.data_samples`` so that a wheel installed with pip has the samples and the DDPM
bundles beside its code (:func:`diffhrnet_lab.config.samples_dir` looks there).  The files are
taken by pattern (``**/*``), so whatever is added under ``data_samples/`` ships without editing
this file.  The mapping needs ``setup.py`` because ``pyproject.toml`` cannot both find packages
and add one that lives outside the package folder.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diffhrnet_lab", "diffhrnet_lab.*"]) + ["diffhrnet_lab.data_samples"],
    package_dir={"diffhrnet_lab.data_samples": "data_samples"},
    package_data={"diffhrnet_lab.data_samples": ["**/*"]},
    exclude_package_data={"diffhrnet_lab.data_samples": ["**/*.aux.xml"]},  # GDAL side files, git-ignored
)
