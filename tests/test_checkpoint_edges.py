"""A checkpoint edge the mutation run found untested: model.json whose "tokenizers" is not a list is a
one-line CheckpointError that names the file."""

import pytest
from test_checkpoint_trust import _save_lm, _set_meta

from unitok import checkpoint as ck
from unitok.errors import CheckpointError


def test_tokenizers_that_are_not_a_list_of_names(tmp_path):
    d = _save_lm(tmp_path / "ckpt")
    _set_meta(d, tokenizers="image")
    with pytest.raises(CheckpointError, match=r'model\.json: "tokenizers" is not a list of names') as e:
        ck.load_model(d)
    assert str(d) in str(e.value)
