from crmsync.daemon.cli import main

raise SystemExit(main())
