"""The tuning databases shipped with tvmc-attend: data only (see README.md here).

Installed as ``tvmc_attend.tuning_logs`` so that ``compile`` finds them wherever the user
stands; they are read-only seeds: ``tune`` writes to ``./tuning_logs`` or ``--log-dir``.
"""

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
