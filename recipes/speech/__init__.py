"""The ASR recipe's parts: audio data (:mod:`.data`), models (:mod:`.model`), error rates (:mod:`.metrics`)."""
