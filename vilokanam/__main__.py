from vilokanam.cli import main

raise SystemExit(main())
