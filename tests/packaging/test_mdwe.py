"""The unit sets MemoryDenyWriteExecute=yes: check the runtime copes with it.

systemd enforces MDWE with a seccomp filter refusing writable+executable
mappings. Linux >= 6.3 offers the same policy per process through
prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), which survives execve(). The
child interpreter below runs under it and exercises what the daemon uses:
imports of every runtime dependency, an aiohttp session, SQLite, ssl, and a
ctypes callback (the usual W+X casualty: libffi closures). The project's own
modules are pure Python and are deliberately not imported here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

LAUNCHER = textwrap.dedent(
    f"""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        print("MDWE-UNSUPPORTED", os.strerror(ctypes.get_errno()))
        sys.exit(0)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
    """
)

WORKLOAD = textwrap.dedent(
    """
    import asyncio, ctypes, mmap, sqlite3, ssl

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        raise SystemExit("W+X mapping allowed: MDWE is not in force")

    import aiohttp, apprise, jinja2, structlog, yaml

    assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7
    ssl.create_default_context()
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    db.execute("insert into t values (1)")

    async def main():
        async with aiohttp.ClientSession() as session:
            assert not session.closed
        yaml.safe_load("a: 1")
        jinja2.Template("{{ x }}").render(x=1)

    asyncio.run(main())
    print("MDWE-OK")
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_runtime_under_memory_deny_write_execute() -> None:
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-c", LAUNCHER, WORKLOAD],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.stdout.startswith("MDWE-UNSUPPORTED"):
        pytest.skip(f"kernel lacks PR_SET_MDWE (Linux >= 6.3): {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("MDWE-OK"), proc.stdout + proc.stderr
