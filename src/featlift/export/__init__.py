"""featlift export (being built; see issue 12)."""
