"""Methods that score with the sweep's open_clip image-text model (``Method.needs_clip``): they run only on an
open_clip backbone (the tiny teacher offline, or any local open_clip weights) and join ``method=all`` there.

    clip_zeroshot.py   CLIP's zero-shot classifier (Radford et al., 2021)
    mkt.py             MKT-style transfer (He et al., AAAI'23): distillation, ranking loss, prompt tuning
    dualcoop.py        DualCoOp (Sun, Hu, Saenko, NeurIPS 2022): positive and negative learned prompts
"""
