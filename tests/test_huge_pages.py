"""Huge pages for the heap: the `jaxarch` command starts itself again under glibc's huge-page tunable, once, and
only where it changes something; the PyTorch peer that runs on glibc's defaults does not inherit it (tests/test_bench.py)."""

import os
import subprocess
import sys
import types

import pytest

from jaxarch import cli, host_allocator
from jaxarch.host_allocator import (HUGE_PAGES_TUNABLE, huge_pages_in_use, huge_pages_tunable_set, with_huge_pages,
                                    without_huge_pages)

SUPPORTED = huge_pages_in_use({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE})  # glibc 2.35+ on a kernel that has them
NEW_GLIBC = (2, 36)


def test_with_huge_pages_adds_the_tunable_and_keeps_the_rest():
    assert with_huge_pages({"A": "1"}, NEW_GLIBC, True) == {"A": "1", "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}
    added = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, NEW_GLIBC, True)
    assert added == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"}


@pytest.mark.parametrize("environ, version, thp", [
    ({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}, NEW_GLIBC, True),  # already started with it
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NEW_GLIBC, True),  # the user's own value stands
    ({}, (2, 34), True),  # a glibc without the tunable
    ({}, None, True),  # not glibc
    ({}, NEW_GLIBC, False),  # a kernel without transparent huge pages
])
def test_with_huge_pages_changes_nothing_where_it_would_not_help(environ, version, thp):
    assert with_huge_pages(environ, version, thp) is None


@pytest.mark.parametrize("text, version", [(b"2.36", (2, 36)), (b"2.35.9000", (2, 35)), (b"2.36-devel", (2, 36)),
                                           (b"unknown", None)])
def test_glibc_version_reads_the_leading_numbers(text, version):
    libc = types.SimpleNamespace(gnu_get_libc_version=lambda: text)  # a function takes `restype` as ctypes' does
    assert host_allocator.glibc_version(libc) == version


def test_without_huge_pages_removes_only_the_tunable():
    assert without_huge_pages({"A": "1", "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}) == {"A": "1"}
    assert without_huge_pages({"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert not huge_pages_tunable_set(without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}))


def test_huge_pages_in_use_follows_the_tunable_glibc_and_the_kernel(monkeypatch):
    monkeypatch.setattr(host_allocator, "glibc_version", lambda libc: NEW_GLIBC)
    monkeypatch.setattr(host_allocator, "transparent_huge_pages", lambda: True)
    assert huge_pages_in_use({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE})
    assert not huge_pages_in_use({}) and not huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    monkeypatch.setattr(host_allocator, "transparent_huge_pages", lambda: False)
    assert not huge_pages_in_use({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE})
    assert huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"})  # the kernel's reserved pages
    monkeypatch.setattr(host_allocator, "glibc_version", lambda libc: (2, 34))
    assert not huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"})


def _execs(monkeypatch, environ: dict) -> list:
    monkeypatch.setattr(host_allocator, "glibc_version", lambda libc: NEW_GLIBC)
    monkeypatch.setattr(host_allocator, "transparent_huge_pages", lambda: True)
    calls = []
    cli.start_again_with_huge_pages(environ, execve=lambda *args: calls.append(args))
    return calls


def test_the_command_line_starts_again_with_the_tunable(monkeypatch):
    [(executable, argv, environ)] = _execs(monkeypatch, {"PATH": "/bin"})
    assert (executable, argv) == (sys.executable, sys.orig_argv)
    assert environ == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}


@pytest.mark.parametrize("environ", [{"JAXARCH_HOST_ALLOCATOR": "0"}, {"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}])
def test_the_command_line_does_not_start_again_when_switched_off_or_started_already(monkeypatch, environ):
    assert _execs(monkeypatch, environ) == []


def test_main_with_arguments_from_python_never_starts_again(monkeypatch):
    monkeypatch.setattr(cli, "start_again_with_huge_pages", lambda: pytest.fail("main(argv) started again"))
    assert cli.main(["list"]) == 0


@pytest.mark.skipif(not SUPPORTED, reason="needs glibc 2.35+ and a kernel with transparent huge pages")
def test_the_command_line_runs_once_more_under_the_tunable_and_only_once():
    # The process prints its GLIBC_TUNABLES, then runs the command line's main: the first start prints none and
    # replaces itself; the second prints the tunable and runs `list`.
    code = ("import os, sys; from jaxarch import cli; print('T=' + os.environ.get('GLIBC_TUNABLES', ''), "
            "flush=True); sys.exit(cli.main())")
    environ = {key: value for key, value in os.environ.items()
               if key not in ("GLIBC_TUNABLES", "JAXARCH_HOST_ALLOCATOR")}
    result = subprocess.run([sys.executable, "-c", code, "list"], env=environ, capture_output=True, text=True,
                            check=True, timeout=120)
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("T=")] == ["T=", f"T={HUGE_PAGES_TUNABLE}"]
    assert any(line.startswith("mnist1d-cnn ") for line in lines)

