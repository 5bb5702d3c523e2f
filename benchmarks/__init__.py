"""Benchmarks: retrieval quality and speed of Lookalike, measured on data built offline.

Every module with a ``main`` is a script (``python -m benchmarks.<name> --help``) that prints a
table and writes ``benchmarks/results/<name>.json``. Data sets are *built* from installed
packages (scikit-image, scikit-learn and, where installed, the Debian packages ``opencv-doc``,
``plasma-workspace-wallpapers`` and ``tuxpaint-stamps-default``) into a cache directory, with
fixed seeds, so a figure can be reproduced on another machine; nothing is downloaded. The
figures recorded on the development machine are in ``docs/benchmarks.md``.
"""
