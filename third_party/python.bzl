"""Debian's python3-dev (CPython 3.11 headers) and pybind11-dev (headers in /usr/include)."""

PY_COPTS = [
    "-isystem",
    "/usr/include/python3.11",
    "-fvisibility=hidden",
    "-Wno-missing-field-initializers",
]
