"""Command-line interface: one module per verb (as the old tvmc driver had)."""
