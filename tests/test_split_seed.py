"""split_seed: runs with different seeds train and score on the same examples when it is set (the spread of their
scores is then the training's alone), and their training still differs; without it the seed samples the splits."""

import pytest

from loraboost.options import RunOptions
from loraboost.run import prepare


def splits_of(tiny_model, reviews_csv, **chosen):
    data = str(reviews_csv)
    options = RunOptions(model=str(tiny_model), data=data, forget_data=data, train_size=40, test_size=20,
                         validation_size=10, **chosen)  # fmt: skip
    *_, splits = prepare(options)
    assert set(splits) == {"train", "validation", "test", "forget"}
    return {name: sorted(split["text"]) for name, split in splits.items()}, options


def test_the_split_seed_fixes_every_split_across_seeds(tiny_model, reviews_csv):
    fixed_0, _ = splits_of(tiny_model, reviews_csv, seed=0, split_seed=7)
    fixed_1, options = splits_of(tiny_model, reviews_csv, seed=1, split_seed=7)
    assert fixed_0 == fixed_1 and options.splits_seed == 7
    own_0, _ = splits_of(tiny_model, reviews_csv, seed=0)
    own_1, options = splits_of(tiny_model, reviews_csv, seed=1)
    assert own_0 != own_1 and options.splits_seed == 1  # unset: each seed samples its own
    assert splits_of(tiny_model, reviews_csv, seed=7)[0] == fixed_0  # split_seed 7 samples as seed 7 does


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_a_bad_split_seed_is_one_sentence(value):
    with pytest.raises(ValueError, match=r"split_seed=.* is not valid; use a whole number >= 0"):
        RunOptions(split_seed=value)
