from jobs.evaluate.job import main

raise SystemExit(main())
