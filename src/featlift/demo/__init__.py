"""featlift demo (being built; see issue 14)."""
