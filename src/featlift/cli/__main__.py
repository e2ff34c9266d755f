"""``python -m featlift.cli``: the ``featlift`` command."""

from featlift.cli import main

raise SystemExit(main())
