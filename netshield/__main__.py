"""Allow `python -m netshield`."""

from netshield.cli import main

raise SystemExit(main())
