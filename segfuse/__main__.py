import sys

from segfuse.cli import main

sys.exit(main())
