"""Stage 2: a Video-LLaMA explainer built from transformers parts, run only on windows stage 1 gates.

Nothing is imported here on purpose: ``import callm.vlm`` must stay as cheap as stage 1. The entry point for
the cascade is ``callm.vlm.explain.Explainer``. Adapting the model to a site, CALLM's recipe, is ``caption``
(BLIP-2 captions), ``instruct`` (pseudo-instructions), ``finetune`` (``llama_proj``) and ``evaluate``
(video-level yes/no accuracy).
"""
