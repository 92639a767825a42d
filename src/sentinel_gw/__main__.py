from sentinel_gw.cli import main

raise SystemExit(main())
