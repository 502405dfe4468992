"""The compiler: import (``frontend``), graph preparation (``prepare``), tuning (``tuning/``),
build, verification and bundle (``pipeline`` drives them: ``compile_bundle``)."""
