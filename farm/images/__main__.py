"""`python -m farm.images --suite bullseye [--verify] [--arch arm64]`: the same as `farm image build`."""

import sys

from farm.images import main

sys.exit(main())
