"""Flags no arguments class of a recipe takes: the text-classification recipe's --post_training options are named
with where they work; other unknown flags keep HfArgumentParser's message."""
import re

import pytest

from recipes import asr, language_modeling, translation
from recipes.arguments import RecipeError

RECIPES = [(translation, "translation", ["--model_name_or_path", "m"]),
           (asr, "speech", ["--model_name_or_path", "m"]),
           (language_modeling, "language-modeling", ["--model_name_or_path", "m"])]


@pytest.mark.parametrize("module, name, base", RECIPES, ids=["translation", "asr", "language_modeling"])
@pytest.mark.parametrize("flags, named", [(["--post_training", "true"], "--post_training"),
                                          (["--post_training_refit=false", "--post-training-ridge", "0.1"],
                                           "--post_training_refit, --post_training_ridge")])
def test_post_training_flags_name_the_recipe_that_takes_them(tmp_path, module, name, base, flags, named):
    with pytest.raises(RecipeError) as info:
        module.parse_args(base + ["--output_dir", str(tmp_path / "out")] + flags)
    message = str(info.value)
    assert message.startswith(f"{named}: pruning without training serves encoder classifiers of the BERT family and "
                              "DistilBERT (recipes/text_classification.py --post_training true")
    assert f"the {name} recipe prunes while it fine-tunes: leave them out" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module, name, base", RECIPES, ids=["translation", "asr", "language_modeling"])
def test_other_unknown_flags_keep_the_parsers_message(tmp_path, module, name, base):
    with pytest.raises(RecipeError, match=re.escape("Some specified arguments are not used by the HfArgumentParser: "
                                                    "['--no_such_flag', '1']")):
        module.parse_args(base + ["--output_dir", str(tmp_path / "out"), "--no_such_flag", "1"])
