from jobs.report.job import main

raise SystemExit(main())
