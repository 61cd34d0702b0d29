import sys

from hv1.cli import main

sys.exit(main())
