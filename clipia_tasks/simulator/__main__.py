"""``python -m clipia_tasks.simulator``: run the offline Clipia API until Ctrl-C."""

import sys

from ._server import main

if __name__ == "__main__":
    sys.exit(main())
