"""A pool initializer that fails as a broken install would: importable by the spawned
workers of tests/faults/test_pool_initializer_fails.py."""


def fail() -> None:
    raise ImportError("libheif.so.1: cannot open shared object file: No such file or directory")


def double(n: int) -> int:
    return 2 * n
