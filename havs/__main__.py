from havs.cli import main

raise SystemExit(main())
