"""Recipes: command-line fine-tune-and-prune runs built on hf_adaprune, in the shape of transformers' examples.

Each recipe (``text_classification``, ``translation``, ``asr``, ``language_modeling``) is one task definition
over the shared run skeleton in :mod:`recipes.skeleton` (``sentence_embeddings`` prunes a
sentence-transformers model with its own trainer); run one as a script or a module::

    python recipes/text_classification.py recipes/configs/quickstart_rotten_tomatoes.yaml
    python -m recipes.text_classification recipes/configs/quickstart_rotten_tomatoes.yaml

Modules: :mod:`~recipes.arguments` (argument classes, config files, checks),
:mod:`~recipes.skeleton` (the run: data -> model -> train and prune -> evaluate -> results),
:mod:`~recipes.loading` (configs, models and tokenizers from a Hub id, a dense folder or a pruned folder, the
last without remote code),
:mod:`~recipes.deploy` (the ``--prune_vocabulary`` / ``--quantize`` / ``--export_*`` copies written after
training), :mod:`~recipes.results` (``results.json`` and the printed table), :mod:`~recipes.tables`
(reading csv / tsv / json data files with one-line errors), :mod:`~recipes.speech`
(audio data and models of the ASR recipe), :mod:`~recipes.ctranslate2_whisper` (data
preparation: an offline Whisper from a CTranslate2 folder) and :mod:`~recipes.example_utils`
(what the real-run scripts in ``examples/`` share).
"""
