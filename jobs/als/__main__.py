import sys

from jobs.als.job import main

sys.exit(main())
