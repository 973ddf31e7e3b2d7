"""Stage-2 weights, split by concern: reading files (``files``), renaming keys per layout (``keys``), checking
and assembling modules (``assemble``), the LLM (``llm``) and the Video-LLaMA parts (``loaders``)."""
