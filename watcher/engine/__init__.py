"""The pure core: snapshot diff, rule matching and message templates (no I/O)."""
