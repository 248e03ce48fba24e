import sys

from jobs.spectrograms.job import main

sys.exit(main())
