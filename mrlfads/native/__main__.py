"""``python -m mrlfads.native``: build the compiled loop now (``make`` runs this at set-up)."""
from mrlfads.native import main

raise SystemExit(main())
