"""The built-in model families, one folder each (config, model, objective, presets):

* `dlp_v1` — family "dlp": DLP v1 (Daniel & Tamar, ICML 2022), masked and object models.
* `dlpv2` — family "dlpv2": DLPv2 (Daniel & Tamar, TMLR 2024), particles with scale, depth and transparency.
* `ddlp` — family "ddlp": DDLP (TMLR 2024), DLPv2 particles tracked through videos with a transformer dynamics prior.

Importing this package registers them (`dlp.registry`).
"""

from dlp.models import ddlp, dlp_v1, dlpv2  # noqa: F401
