"""The interactive particle demo: `DemoState` (editing logic), `DemoController` (events), `dlp.demo.window` (drawing).

>>> from dlp.demo import DemoState
>>> state = DemoState(model, image)          # encodes once
>>> state.move(3, 40.0, 22.0); rec = state.reconstruction()   # decodes the edited particles
"""

from dlp.demo.state import DemoController, DemoState, Edit, EditError, parse_edit

__all__ = ["DemoController", "DemoState", "Edit", "EditError", "parse_edit"]
