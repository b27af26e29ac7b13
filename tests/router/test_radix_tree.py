"""RadixTree against a brute-force reference (hypothesis), and its eviction bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.router import RadixTree

seqs = st.lists(st.lists(st.integers(0, 3), max_size=12), max_size=12)


def _reference(stored: list[list[int]], query: list[int]) -> int:
    best = 0
    for s in stored:
        n = 0
        while n < min(len(s), len(query)) and s[n] == query[n]:
            n += 1
        best = max(best, n)
    return best


@settings(max_examples=150, deadline=None)
@given(seqs, st.lists(st.integers(0, 3), max_size=12))
def test_insert_and_match_agree_with_brute_force(inserted: list[list[int]], query: list[int]) -> None:
    tree = RadixTree(max_tokens=None)
    stored: list[list[int]] = []
    for s in inserted:
        assert tree.insert(s) == _reference(stored, s)
        stored.append(s)
    assert tree.match_prefix(query) == _reference(stored, query)
    # Every stored token sits on exactly one edge: the total is the number of distinct prefixes.
    assert tree.num_tokens == len({tuple(s[:i]) for s in stored for i in range(1, len(s) + 1)})


@settings(max_examples=100, deadline=None)
@given(seqs, st.integers(1, 20))
def test_eviction_keeps_the_bound_and_never_invents_matches(inserted: list[list[int]], cap: int) -> None:
    tree = RadixTree(max_tokens=cap)
    stored: list[list[int]] = []
    for s in inserted:
        tree.insert(s)
        stored.append(s)
        assert tree.num_tokens <= cap
        for q in stored:
            assert tree.match_prefix(q) <= _reference(stored, q)


def test_hand_computed_case() -> None:
    tree = RadixTree(max_tokens=None)
    assert tree.insert([1, 2, 3, 4]) == 0
    assert tree.insert([1, 2, 5]) == 2  # splits the edge after [1, 2]
    assert tree.insert([1, 2, 3, 4]) == 4
    assert tree.match_prefix([1, 2, 3, 9]) == 3
    assert tree.match_prefix([2]) == 0
    assert tree.num_tokens == 5  # [1,2] + [3,4] + [5]


def test_least_recently_used_leaf_goes_first() -> None:
    tree = RadixTree(max_tokens=6)
    tree.insert([1, 1, 1])
    tree.insert([2, 2, 2])
    tree.insert([1, 1, 1])  # touch: [2,2,2] is now the oldest
    tree.insert([3, 3, 3])
    assert tree.match_prefix([1, 1, 1]) == 3
    assert tree.match_prefix([3, 3, 3]) == 3
    assert tree.match_prefix([2, 2, 2]) == 0
