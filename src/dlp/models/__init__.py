"""The built-in model families, one folder each (config, model, objective, presets):

* `dlp_v1` — family "dlp": DLP v1 (Daniel & Tamar, ICML 2022), masked and object models.

Importing this package registers them (`dlp.registry`).
"""

from dlp.models import dlp_v1  # noqa: F401
