"""A pre-imported launcher for CLI runs: forks one real process per `once`, reports its end.

Importing watcher, aiohttp and apprise's plugins takes ~0.4 s; the crash test runs hundreds of
cycles, so it forks them from here instead. Each child is a real process running
`watcher.cli.main(argv)` and dies for real on SIGKILL.

Protocol (one line each, on stdin/stdout): the parent writes `STDOUT_FILE STDERR_FILE ARG...`
(tab-separated); this answers `pid N`, then `exit RC` (RC < 0: killed by signal -RC).
"""

from __future__ import annotations

import os
import sys

import apprise

import watcher.cli


def main() -> None:
    # Load apprise's plugin table once, before forking, rather than in every child.
    apprise.Apprise.instantiate("json://127.0.0.1:9/warm-up")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        stdout_file, stderr_file, *argv = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:  # the child: one CLI run, with its own output files
            try:
                for fd, name in ((1, stdout_file), (2, stderr_file)):
                    target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.dup2(target, fd)
                    os.close(target)
                sys.stdin.close()
                code = watcher.cli.main(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:
                code = 99
            os._exit(code)
        out.write(f"pid {pid}\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(f"exit {os.waitstatus_to_exitcode(status)}\n")
        out.flush()


if __name__ == "__main__":
    main()
