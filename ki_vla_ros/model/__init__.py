"""The knowledge-insulated VLA in torch + transformers (no ROS).

    config          KIVLAConfig with the "pi05" and "tiny" presets
    attention       the blockwise-causal mask from per-token ar flags
    network         KIVLA: backbone + action expert, losses per recipe, sampling, decoding
    checkpoint      save/load (own format, openpi and LeRobot pi05 layouts), strict
    fast            FAST action tokenizer (DCT + BPE), mapped onto the vocabulary tail
    normalize       quantile normalization statistics
    preprocess      resize-with-pad, [-1, 1] pixels, discretized-state prompt
    text_tokenizer  byte tokenizer (tiny) and PaliGemma SentencePiece
    inference       Predictor: numpy observation in, robot-unit action chunk out
"""
