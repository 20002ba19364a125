from milter.cli import main

raise SystemExit(main())
