"""The ``sl-detr`` commands, one module each (``main(argv) -> int``); :mod:`sl_detr_hf.cli` dispatches to them.

The library functions they call live below them (``predict`` -> :mod:`sl_detr_hf.inference`, ``push`` ->
:mod:`sl_detr_hf.hub`, ``export`` -> :mod:`sl_detr_hf.export_onnx`, ``convert`` -> :mod:`sl_detr_hf.convert`); no
library module imports a command.
"""
