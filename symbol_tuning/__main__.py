import sys

from symbol_tuning.cli import main

sys.exit(main())
