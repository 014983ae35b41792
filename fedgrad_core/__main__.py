from fedgrad_core.cli import main

raise SystemExit(main())
