"""The ``sl-detr`` commands, one module each (``main(argv) -> int``); :mod:`sl_detr_hf.cli` dispatches to them.

``predict`` lives in :mod:`sl_detr_hf.inference` and ``push`` in :mod:`sl_detr_hf.hub`.
"""
