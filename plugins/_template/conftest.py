"""Lets ``pytest`` import ``mljob_myframework`` from this folder before the package is installed.

pytest puts the folder of a ``conftest.py`` that is not inside a package on ``sys.path``.
"""
