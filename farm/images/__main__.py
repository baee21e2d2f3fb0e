"""`python -m farm.images --suite bullseye [--verify]`: the same as `farm image build`."""

import sys

from farm.images import main

sys.exit(main())
