"""``python -m genrnn`` is the ``genrnn`` command."""

from .cli import main

raise SystemExit(main())
