"""Shim of the ``miles`` package (served as ``miles`` by :func:`miles_sdk.compat.install`).

Only the modules Miles hook files commonly import are provided; see docs/miles-compat.md.
"""
