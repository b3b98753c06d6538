"""exact=true without services: its SQL, the value comparison, the verdict, its argument."""

import pytest

from civicband import jobs
from civicband.args import ArgumentError, parse_arguments
from civicband.digest import Difference
from civicband.exact import Exact, compare_answer
from civicband.verify import decide, with_exact

VOTES = '{"tally": {"ayes": 7, "nays": 0}, "motion_by": "Park"}'


def row(row_id: str, image="p.png", entities="[]", votes=VOTES) -> dict:
    return {"id": row_id, "page_image": image, "entities_json": entities, "votes_json": votes}


def test_a_value_changed_at_the_same_length_is_stale_and_the_rest_counted():
    pages = {
        "aaaaaaaaaaaa": ("p.png", "[]", VOTES),
        "bbbbbbbbbbbb": ("p.png", "[]", VOTES),
    }
    corrected = VOTES.replace("7", "6").replace("0}", "1}")
    rows = [
        row("aaaaaaaaaaaa"),
        row("bbbbbbbbbbbb", votes=corrected),
        row("cccccccccccc"),  # rejected here: present, not missing
        row("dddddddddddd"),  # nowhere here
    ]
    found = compare_answer(rows, pages, {"cccccccccccc"})
    assert found == Exact(["bbbbbbbbbbbb"], missing=1, extra=0, listed=4, matched=2)


def test_values_are_compared_as_the_mirror_stores_them():
    pages = {"aaaaaaaaaaaa": ("p.png", None, "{}")}
    # NULs are removed when stored; a missing column is NULL on both sides.
    found = compare_answer(
        [{"id": "aaaaaaaaaaaa", "page_image": "p.p\x00ng", "votes_json": "{}"}], pages, set()
    )
    assert found.stale == []
    flipped = compare_answer([row("aaaaaaaaaaaa", entities="", votes="{}")], pages, set())
    assert flipped.stale == ["aaaaaaaaaaaa"]  # empty is not NULL


def test_totals_add_up():
    total = Exact()
    total.add(Exact(["a"], 1, 0, 3, 2))
    total.add(Exact(["b"], 0, 2, 1, 1))
    assert total == Exact(["a", "b"], 1, 2, 4, 3)


def test_equal_digests_with_stale_values_do_not_pass():
    equal, difference, note = with_exact(True, None, Exact(["ab0000000001", "ab0000000002"]))
    assert (equal, note) == (False, "")
    assert difference == Difference([], [], ["ab0000000001", "ab0000000002"], [])
    verdict = decide(
        10, 10, 0, equal=equal, difference=difference, max_rows=100, max_ratio=0.5, method="exact"
    )
    assert (verdict.status, verdict.stale, verdict.method) == ("warned", 2, "exact")
    assert "2 pages out of date" in verdict.message
    failed = decide(
        10, 10, 0, equal=equal, difference=difference, max_rows=1, max_ratio=0.5, method="exact"
    )
    assert failed.status == "failed"
    assert failed.message.startswith("2 pages out of date!")


def test_stale_values_join_what_the_digests_listed():
    listed = Difference(["aa0000000009"], [], ["ab0000000001"], [])
    equal, difference, _ = with_exact(False, listed, Exact(["ab0000000001", "cd0000000001"]))
    assert not equal
    assert difference == Difference(["aa0000000009"], [], ["ab0000000001", "cd0000000001"], [])


def test_nothing_stale_leaves_the_digests_verdict():
    assert with_exact(True, None, Exact()) == (True, None, "")
    verdict = decide(3, 3, 0, equal=True, difference=None, max_rows=1, max_ratio=0.1)
    assert (verdict.status, verdict.method) == ("passed", "digest")


def test_an_exact_listing_that_disagrees_with_equal_digests_never_passes():
    equal, difference, note = with_exact(True, None, Exact(missing=1))
    assert (equal, difference) == (False, None)
    assert "changed meanwhile" in note


@pytest.mark.parametrize("mode", [{"verify_only": "yes"}, {"repair": "1"}, {}])
def test_exact_goes_with_the_default_mode_repair_and_verify_only(mode):
    arguments = parse_arguments({"subdomain": "a.ca", "exact": "TRUE", **mode})
    assert arguments.exact is True
    assert parse_arguments({"subdomain": "a.ca", **mode}).exact is False


def test_exact_with_full_is_refused_in_one_line():
    with pytest.raises(ArgumentError) as raised:
        parse_arguments({"subdomain": "a.ca", "exact": "true", "full": "true"})
    message = str(raised.value)
    assert message.startswith("exact:") and "full=true" in message and "\n" not in message
    with pytest.raises(ArgumentError, match="^exact: expected true/false"):
        parse_arguments({"subdomain": "a.ca", "exact": "always"})


def test_exact_makes_another_run_and_leaves_other_runs_keys_alone():
    plain = jobs.RunArguments(("a.ca",), ("agenda",), "repair", False)
    checked = jobs.RunArguments(("a.ca",), ("agenda",), "repair", False, exact=True)
    assert plain.key() != checked.key()
    assert "exact" not in plain.as_json()
    assert checked.as_json()["exact"] is True
