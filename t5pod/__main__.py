import sys

from t5pod.cli import main

sys.exit(main())
