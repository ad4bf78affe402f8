"""`python -m edgepack ...` is the `edgepack` command."""
from edgepack.cli import main

raise SystemExit(main())
