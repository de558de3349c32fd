"""`python -m beeflow`: hands over to the CLI."""

from beeflow.cli import main

raise SystemExit(main())
