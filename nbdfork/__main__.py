"""`python -m nbdfork`: the same command line as the `nbdfork` script."""

from nbdfork.cli import main

raise SystemExit(main())
