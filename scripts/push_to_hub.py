#!/usr/bin/env python
"""Upload a saved SL-DETR folder to the Hugging Face Hub with code, pipeline code and a model card."""

from sl_detr_hf.hub import main

if __name__ == "__main__":
    raise SystemExit(main())
