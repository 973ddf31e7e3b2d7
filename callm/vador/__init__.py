"""VAD-LLaMA's anomaly detector (VADor): a learned clip scorer over encoder features with Long-Term Context.

``features`` turns videos into clip features (stage 1's or stage 2's encoder), ``labels`` reads weak and frame
labels, ``model`` holds the anomaly predictor and the context lists, ``train`` the MIL phases 1 and 2,
``weights`` the files, ``evaluate`` AUC_O / AUC_A, ``ablation`` the paper's Table 3, ``online`` the streaming
scorer with its events and time-stamped answer.
"""
