"""Likes and dislikes outlive the photos they point at: a page keeps the ids it was
shown while the watcher renames, moves or deletes their files (a point's id is its
path's). A search with such an id goes on with the rest and names it in `dropped`;
only a query with nothing left is an error, one line, with no bare traceback."""

from __future__ import annotations

from clipsearch.index import point_id


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


def test_likes_no_longer_indexed_are_dropped_and_named(client, served):
    # The id a photo had before it was renamed: no point has it now.
    renamed = point_id(served.photos / "garden" / "renamed-away.png")
    moved = point_id(served.photos / "beach" / "moved-away.jpg")
    base = ids(client.get("/api/search", params={"q": "circle", "k": 6}))
    liked, disliked = base[3], base[0]

    expected = client.post("/api/search", json={"query": "circle", "liked": [liked], "disliked": [disliked], "k": 6})
    answer = client.post("/api/search", json={"query": "circle", "liked": [renamed, liked],
                                              "disliked": [disliked, moved], "k": 6})
    assert ids(answer) == ids(expected) and disliked not in ids(answer)
    assert answer.json()["dropped"] == [renamed, moved]
    assert expected.json()["dropped"] == []

    # Every like gone but the words remain: the plain search, the likes named.
    words = client.post("/api/search", json={"query": "circle", "liked": [renamed], "k": 6})
    assert ids(words) == base and words.json()["dropped"] == [renamed]
    # More like this, refined by a like that is gone: the example image goes on.
    example = base[1]
    similar = ids(client.get(f"/api/images/{example}/similar", params={"k": 5}))
    refined = client.post("/api/search", json={"image_id": example, "liked": [renamed], "k": 5})
    assert ids(refined) == similar and refined.json()["dropped"] == [renamed]


def test_nothing_left_of_the_query_is_one_readable_line(client):
    gone = point_id("/nowhere/deleted.png")
    other = point_id("/nowhere/moved.png")
    alone = client.post("/api/search", json={"liked": [gone], "disliked": [other], "k": 3})
    assert alone.status_code == 404
    error = alone.json()["error"]
    assert error.startswith("nothing left to search for: no image with id") and "renamed" in error
    assert "\n" not in error and "Traceback" not in error
    # More like this of a photo that is gone: a 404 that says why.
    similar = client.get(f"/api/images/{gone}/similar")
    assert similar.status_code == 404 and "deleted, moved or renamed" in similar.json()["error"]
