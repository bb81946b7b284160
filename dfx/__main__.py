import sys

from dfx.cli import main

sys.exit(main())
