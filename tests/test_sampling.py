"""--limit and --per-class: seeded samples stratified by class, named as such, on real FER2013."""

import numpy as np
import pytest

from fer_core.data import FolderDataset
from fer_core.errors import InvalidArgument
from fer_core.labels import EMOTIONS, FER2013_FOLDERS
from fer_core.precompute import Shard, select
from fer_core.sampling import SampledDataset, Sampling, sampled_name


@pytest.fixture(scope="module")
def fer2013_test(fer2013_root):
    return FolderDataset(fer2013_root, "test", name="fer2013", pre_cropped=True, label_map=FER2013_FOLDERS)


def class_sizes(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=len(EMOTIONS))


def test_limit_is_a_stratified_sample_in_proportion(fer2013_test):
    # what the first 500 files in folder order are: all Anger (why --limit no longer takes them)
    assert set(fer2013_test.labels[:500]) == {EMOTIONS.index("Anger")}
    sample = select(fer2013_test, 500)
    assert isinstance(sample, SampledDataset) and len(sample) == 500
    assert sample.label == "fer2013:test[stratified 500, seed 0]" and sample.base_label == "fer2013:test"
    sizes = class_sizes(fer2013_test.labels)
    exact = 500 * sizes / sizes.sum()
    drawn = class_sizes(sample.labels)
    assert np.all(np.abs(drawn - exact) < 1)  # within one face of the exact proportional share
    assert (drawn[sizes > 0] >= 1).all() and drawn[EMOTIONS.index("Disgust")] == 8  # 111 of 7,178 faces: 7.7
    assert list(sample.indices) == sorted(sample.indices)  # folder order kept inside the sample


def test_a_sample_is_fixed_by_its_seed(fer2013_test):
    first, again = select(fer2013_test, 500), select(fer2013_test, 500, seed=0)
    other = select(fer2013_test, 500, seed=1)
    assert np.array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, other.indices)
    assert np.array_equal(class_sizes(first.labels), class_sizes(other.labels))  # the same shares, other faces
    assert other.label == "fer2013:test[stratified 500, seed 1]"


def test_per_class_takes_n_of_each_class_or_all_of_a_smaller_one(fer2013_test):
    sample = select(fer2013_test, per_class=200, seed=3)
    sizes = class_sizes(fer2013_test.labels)
    assert np.array_equal(class_sizes(sample.labels), np.minimum(sizes, 200))  # Disgust has 111: all of them
    assert sample.label == "fer2013:test[200 per class, seed 3]"
    assert sample.sampling.id_parts() == ("per_class200", "seed3")
    with pytest.raises(InvalidArgument, match="give one of them"):
        select(fer2013_test, 100, per_class=10)
    with pytest.raises(InvalidArgument, match=r"Sampling\(\) argument 'limit': expected an integer >= 1 or None, got 0"):
        select(fer2013_test, 0)


def test_every_class_gets_a_face_when_the_limit_allows(fer2013_test):
    seven = select(fer2013_test, 7)
    assert sorted(seven.labels) == sorted(EMOTIONS.index(e) for e in fer2013_test.emotions)
    # Disgust's exact share of 20 faces is 0.31: the floor of one face is taken from the most over-served class
    assert class_sizes(select(fer2013_test, 20).labels)[EMOTIONS.index("Disgust")] == 1
    assert len(select(fer2013_test, 3)) == 3
    assert select(fer2013_test, 10**6) is fer2013_test  # a sample that holds every face is the dataset
    assert Sampling(limit=5).counts(np.array([1, 1, 100])).tolist() == [1, 1, 3]


def test_shards_split_a_sample_and_keep_its_name(fer2013_test):
    sample = select(fer2013_test, 500)
    blocks = [select(sample, shard=Shard(k, 3)) for k in range(3)]
    assert all(block.label == sample.label for block in blocks)
    assert np.array_equal(np.concatenate([block.indices for block in blocks]), sample.indices)
    assert np.array_equal(select(fer2013_test, 500, Shard(1, 3)).indices, blocks[1].indices)
    assert sampled_name("fer2013:test", blocks[1]) == "fer2013:test[stratified 500, seed 0]"
    assert sampled_name("fer2013:test", fer2013_test) == "fer2013:test"
