import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import

from competition.cli import main  # noqa: E402

sys.exit(main())
