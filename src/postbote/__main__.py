from postbote.cli import main

raise SystemExit(main())
