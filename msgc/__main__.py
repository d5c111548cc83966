"""`python -m msgc ...`: the msgc command line."""

from msgc.cli import main

raise SystemExit(main())
