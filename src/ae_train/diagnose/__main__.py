"""`python -m ae_train.diagnose LOGS_DIR ...`: the same as `ae-train diagnose`."""
import sys

from ae_train.diagnose import main

sys.exit(main())
