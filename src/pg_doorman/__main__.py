from pg_doorman.cli import main

raise SystemExit(main())
