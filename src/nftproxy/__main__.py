import sys

from nftproxy.cli import main

__all__: list[str] = []

sys.exit(main())
