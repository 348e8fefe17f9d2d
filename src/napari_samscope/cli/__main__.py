"""``python -m napari_samscope.cli``: the ``samscope`` command line."""

import sys

from napari_samscope.cli.main import main

sys.exit(main())
