#!/usr/bin/env python
"""Upload a saved SL-DETR folder to the Hugging Face Hub with code, pipeline code and a model card: the same as
`sl-detr push` (`sl_detr_hf.commands.push`)."""

from sl_detr_hf.commands.push import main

if __name__ == "__main__":
    raise SystemExit(main())
