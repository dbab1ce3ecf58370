"""`python -m watcher` works exactly like the `metastudio-watcher` command."""

from watcher.cli import main

raise SystemExit(main())
