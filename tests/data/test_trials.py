"""kdjax.data.trials: the one trial-list parser, its id checks and the index table metrics score."""
import numpy as np
import pytest

from kdjax.data import trials
from kdjax.errors import DatasetError


def test_parse_ids_and_index_table(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 id1/v/1.wav id1/v/2.wav\n\n0 id1/v/1.wav id2/v/1.wav\n")
    parsed = trials.parse(path)
    assert parsed == [(1, "id1/v/1.wav", "id1/v/2.wav"), (0, "id1/v/1.wav", "id2/v/1.wav")]
    assert trials.parse(["1 a b", "0 b a"]) == [(1, "a", "b"), (0, "b", "a")]
    assert trials.speakers(parsed) == {"id1", "id2"}
    index = {"id1/v/1.wav": 2, "id1/v/2.wav": 0, "id2/v/1.wav": 1}
    assert trials.to_indices(parsed, index).tolist() == [[1, 2, 0], [0, 2, 1]]
    assert trials.check_index_table(np.array([[1.0, 0, 1]]), 2).dtype == np.int64


def test_errors_name_file_line_and_utterance(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("1 a b\n2 a b\n")
    with pytest.raises(DatasetError, match=r"t.txt:2: expected"):
        trials.parse(bad)
    with pytest.raises(DatasetError, match="trial list:3: expected"):
        trials.parse(["1 a b", "", "yes a b"])
    with pytest.raises(DatasetError, match="empty"):
        trials.parse([""])
    with pytest.raises(DatasetError, match="cannot read"):
        trials.parse(tmp_path / "missing.txt")
    with pytest.raises(DatasetError, match=r"t.txt:2: utterance id 'zz'"):
        trials.check_ids([(1, "a", "b"), (0, "a", "zz")], {"a", "b"}, "t.txt")
    with pytest.raises(DatasetError, match=r"\[N, 3\]"):
        trials.check_index_table(np.array([1, 0, 1]), 4)
    with pytest.raises(DatasetError, match="row 0: is_target"):
        trials.check_index_table(np.array([[2, 0, 1]]), 4)
    with pytest.raises(DatasetError, match="row 0: non-integer"):
        trials.check_index_table(np.array([[1, 0.5, 1]]), 4)
