"""Requests whose cost must not grow with everyone's data: the database's plan for each of their queries
reads an index range, never a whole table, and sorts nothing (an index gives the order).

PostgreSQL is asked to avoid whole-table reads and sorts wherever it can (`enable_seqscan`, `enable_sort`
off): on a test's few rows it would choose them anyway, which hides whether an index could serve. One left in
the plan then means no index serves the query, and on a year's data it reads every row. SQLite plans by its
rules, without statistics: its plan is the one it runs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from tortoise import Model, connections
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from app import collections, feedback, usage
from app.feedback import FeedbackFilter
from app.feeder import Source, waiting_of
from app.models import Collection, CollectionStatus, Feedback, Prediction, Status, User, placeholders
from app.web import deps
from app.web.pages import admin, history
from tests.helpers import unique_email

SOMEONE = User(id=1)  # plans need no rows: only the id is read


async def plan(query: Any) -> str:
    """The database's plan for a Tortoise query (a QuerySet, or its count), one step a line."""
    return await plan_of(query.sql(params_inline=True))


async def plan_of(sql: str, run: bool = False, values: list[Any] | None = None) -> str:
    """The database's plan for a statement (with its `values`, if it has parameters), one step a line. `run`: on
    PostgreSQL, run it to show the rows each step read, and the plans of subqueries in its results (a plain EXPLAIN
    leaves them out)."""
    connection = connections.get("default")
    if connection.capabilities.dialect == "sqlite":
        _, rows = await connection.execute_query(f"EXPLAIN QUERY PLAN {sql}", values)
        return "\n".join(row["detail"] for row in rows)
    explain = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)" if run else "EXPLAIN"
    async with in_transaction() as transaction:
        await transaction.execute_script("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
        _, rows = await transaction.execute_query(f"{explain} {sql}", values)
    return "\n".join(row["QUERY PLAN"] for row in rows)


async def reads_a_range(steps: str, table: str, column: str) -> bool:
    """Whether the plan reads `table` by an index that starts with `column`: SQLite's SEARCH on it, or
    PostgreSQL's index scans all by such an index (a condition on an index's later column reads all of it)."""
    if "Seq Scan" in steps or "Sort" in steps:
        return False
    if connections.get("default").capabilities.dialect == "sqlite":
        return any(line.startswith(f"SEARCH {table} ") and f"({column}" in line for line in steps.splitlines())
    used = re.findall(r"(?: using|Bitmap Index Scan on) (\S+)", steps)
    _, rows = await connections.get("default").execute_query(
        "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND indexname = ANY($2)", [table, used]
    )
    return bool(rows) and all(row["indexdef"].split("(", 1)[1].startswith(f"{column}") for row in rows)


async def statistics_taken(table: str) -> None:
    """PostgreSQL's statistics of `table` brought up to date, as its autovacuum does as rows come."""
    connection = connections.get("default")
    if connection.capabilities.dialect != "sqlite":
        await connection.execute_script(f"ANALYZE {table}")


def in_index_order(steps: str, table: str) -> bool:
    """Whether the plan reads `table` in an index's order, sorting nothing: a page of it stops at its limit."""
    if "Sort" in steps or "TEMP B-TREE FOR ORDER BY" in steps or f"Seq Scan on {table}" in steps:
        return False
    return f"SCAN {table}\n" not in f"{steps}\n"


async def test_the_status_panel_counts_the_last_minute_by_an_index(client: httpx.AsyncClient) -> None:
    """The admin's status panel refreshes itself every two seconds; its throughput counted the predictions
    finished in the last minute by reading every finished prediction (the status index matches nearly all)."""
    steps = await plan(admin.recently_finished().count())
    assert await reads_a_range(steps, "predictions", "finished_at"), steps


async def test_feedback_pages_read_by_an_index_in_its_order(client: httpx.AsyncClient) -> None:
    """A person's feedback (GET /api/feedback) read everyone's, and an admin's (the API, the admin page's list)
    sorted all of it, for each page."""
    mine = feedback.newest_first(SOMEONE, FeedbackFilter())
    for query in (mine.limit(50), mine.count(), feedback.newest_first(SOMEONE, FeedbackFilter(wrong_only=True))):
        steps = await plan(query)
        assert await reads_a_range(steps, "feedback", "user_id") and in_index_order(steps, "feedback"), steps
    everyone = feedback.newest_first(None, FeedbackFilter()).select_related("prediction", "user").limit(25)
    steps = await plan(everyone)
    assert in_index_order(steps, "feedback"), steps


@asynccontextmanager
async def only_rows_made_here(*models: type[Model]) -> AsyncIterator[None]:
    """The tables of `models` holding only the rows made in the block, until it ends: in a transaction rolled
    back at the end, which first deletes the rows other tests left. PostgreSQL then plans by statistics of the
    test's rows alone, whatever ran before (others' rows of another shape swayed its choice), counts count these
    rows alone, and the tables are as they were after (with the rows made here left dead in their indexes)."""
    async with in_transaction() as transaction:
        for model in models:
            await model.all().delete()
        yield
        await transaction.rollback()


@asynccontextmanager
async def only_the_feedback_of(people: int, each: int) -> AsyncIterator[list[User]]:
    """The feedback table holding `people` new people's feedback alone, each on the same `each` predictions, 1
    in 100 of "hen" (the others of 7 other labels) and 1 in 100 wrong, with statistics taken, until the block
    ends (on others' few rows, mostly wrong, PostgreSQL rightly read the newest with a filter)."""
    async with only_rows_made_here(Feedback):
        made = [await User.create(email=unique_email(), password_hash="x") for _ in range(people)]
        row = {"image_path": "", "model_name": "resnet50", "model_weights": "random", "status": Status.DONE}
        names = ["hen" if i % 100 == 0 else f"label {i % 7}" for i in range(each)]
        predictions = [Prediction(user=made[0], image_sha256=f"{i:064x}", label=names[i], **row) for i in range(each)]
        await Prediction.bulk_create(predictions)
        given = [  # the label copied by the database, as for the app's feedback
            Feedback(prediction_id=p.id, user_id=person.id, is_correct=i % 100 != 1)
            for person in made
            for i, p in enumerate(predictions)
        ]
        await Feedback.bulk_create(given, batch_size=1000)
        await statistics_taken("feedback")
        yield made


async def test_filtered_feedback_pages_read_only_the_rows_they_show(client: httpx.AsyncClient) -> None:
    """Found auditing the read paths: a person's feedback by predicted label, or wrong only (GET /api/feedback,
    the feedback pages), read every row of the person in order and joined each to its prediction to filter it,
    about 140 ms a request on PostgreSQL for 20,000 (3 queries); the admin's list of everyone's, every row. By the
    label copied onto the feedback (migration 0020), an index search on the filter gives the page in order, and
    each row read is shown (PostgreSQL's plan run: no row removed by a filter). Planned for 16 people with 250
    pieces each, 1 in 100 of a label, 1 in 100 wrong, and no one else's (PostgreSQL chooses by statistics)."""
    async with only_the_feedback_of(16, 250) as people:
        assert await Feedback.filter(predicted_label="hen").count() == 16 * 3  # copied as each row was inserted
        for label, wrong_only, column in (("hen", False, "predicted_label"), ("", True, "is_correct")):
            filters = FeedbackFilter(wrong_only=wrong_only, label=label)
            mine = feedback.newest_first(people[0], filters)
            for query in (mine.limit(50), mine.count()):
                steps = await plan_of(query.sql(params_inline=True), run=True)
                assert await reads_a_range(steps, "feedback", "user_id") and in_index_order(steps, "feedback"), steps
                assert searches_on(steps, column) and "predictions" not in steps, steps
                assert "Rows Removed by Filter" not in steps, steps
            everyone = feedback.newest_first(None, filters)
            for query in (everyone.select_related("prediction", "user").limit(25), everyone.count()):
                steps = await plan_of(query.sql(params_inline=True), run=True)
                assert await reads_a_range(steps, "feedback", column) and in_index_order(steps, "feedback"), steps
                assert searches_on(steps, column) and "Rows Removed by Filter" not in steps, steps


async def test_a_persons_collections_are_read_by_an_index_in_its_order(client: httpx.AsyncClient) -> None:
    """Every history page (and GET /api/collections) read every person's collections to find and count the
    newest of one person's."""
    newest = Collection.of_person(SOMEONE)
    for query in (newest.limit(4), newest.count()):
        steps = await plan(query)
        assert await reads_a_range(steps, "collections", "user_id") and in_index_order(steps, "collections"), steps


def searches_on(steps: str, column: str) -> bool:
    """Whether an index search's condition names `column` (not a filter applied to each row it reads)."""
    if "QUERY PLAN" in steps or "Cond:" in steps:  # PostgreSQL
        return any("Index Cond:" in line and column in line for line in steps.splitlines())
    return any(line.startswith("SEARCH ") and f"{column}=" in line for line in steps.splitlines())


async def test_the_history_reads_single_images_only(client: httpx.AsyncClient) -> None:
    """The history lists a person's images sent alone: by the index on (user_id, created_at), each page and its
    count read past every image of the person's collections (10,000 a collection) to find them. By the index on
    (user_id, collection_id, ...), each row read is shown (PostgreSQL's plan run: no row removed by a filter).
    Planned for someone with a collection of 2,000 newer than their 12 single images, beside someone else's
    2,000 single images and 6,000 in a collection, and no one else's predictions. PostgreSQL chooses by
    statistics, which take the person's share of the rows (a fifth) apart from the single images' (a fifth): the
    index on both reads a twenty-fifth, either one's alone a fifth. Among others' rows, with half the rows the
    person's and half single, it read every person's single images by the collection index (few single images
    in all), or the person's images by the first index with a filter (4,000 more single images)."""
    async with only_rows_made_here(Prediction):
        person, other = [await User.create(email=unique_email(), password_hash="x") for _ in range(2)]
        collection = await Collection.create(user=person, total=2000, status=CollectionStatus.DONE)
        row = {"image_path": "", "model_name": "resnet50", "model_weights": "random", "status": Status.DONE}
        singles = [Prediction(image_sha256=f"{i:064x}", user=person, **row) for i in range(12)]
        items = [
            Prediction(image_sha256=f"{i:064x}", user=person, collection=collection, entry=i, **row)
            for i in range(2000)
        ]
        theirs = await Collection.create(user=other, total=6000, status=CollectionStatus.DONE)
        others = [Prediction(image_sha256=f"{i:064x}", user=other, **row) for i in range(2000)]
        others += [
            Prediction(image_sha256=f"{i:064x}", user=other, collection=theirs, entry=i, **row) for i in range(6000)
        ]
        await Prediction.bulk_create([*singles, *items, *others], batch_size=1000)
        await statistics_taken("predictions")
        query = history.single_images(person)
        for asked in (query.limit(12), query.count()):
            steps = await plan_of(asked.sql(params_inline=True), run=True)
            assert await reads_a_range(steps, "predictions", "user_id"), steps
            assert in_index_order(steps, "predictions") and searches_on(steps, "collection_id"), steps
            assert "Rows Removed by Filter" not in steps, steps


async def test_a_page_after_an_item_is_read_by_an_index_in_its_order(client: httpx.AsyncClient) -> None:
    """`before=<id>` (deps.after_item): the items after one are found by a condition on the list's order that an
    index's range serves, in that index's order (ties by the id), not by an OFFSET over all those before. One
    row of each: the plan is what is asked, whatever the rows."""
    person = await User.create(email=unique_email(), password_hash="x")
    row: dict[str, Any] = {"image_path": "", "model_name": "resnet50", "model_weights": "random", "status": Status.DONE}
    single = await Prediction.create(image_sha256="0" * 64, user=person, **row)
    collection = await Collection.create(user=person, total=0, status=CollectionStatus.DONE)
    given = await Feedback.create(prediction=single, user=person, is_correct=False)
    lists: list[tuple[QuerySet[Any], str, Any, str]] = [
        (Prediction.of_person(person), "created_at", single.id, "predictions"),
        (history.single_images(person), "created_at", single.id, "predictions"),
        (Collection.of_person(person), "created_at", collection.id, "collections"),
        (feedback.newest_first(person, FeedbackFilter(wrong_only=True)), "updated_at", given.id, "feedback"),
    ]
    for query, by, before, table in lists:
        after = await deps.after_item(query, by, before)
        for asked in (after.limit(21), after.count()):
            steps = await plan(asked)
            assert await reads_a_range(steps, table, "user_id") and in_index_order(steps, table), steps
            assert re.search(rf"^(SEARCH |.*Index Cond:).*\b{by} ?<", steps, re.MULTILINE), steps  # an index range


async def test_a_collections_csv_reads_each_page_by_an_index_in_its_order(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found auditing the read paths: each page of a collection's CSV (the 500 items after the last one sent)
    read and sorted all of the collection's items, 12 ms a page of a 20,000-image collection on PostgreSQL and 40
    pages to a CSV (by the index of migration 0019: 0.26 ms). Planned for the statements a download sends."""
    person = await User.create(email=unique_email(), password_hash="x")
    collection = await Collection.create(user=person, total=6, status=CollectionStatus.DONE)
    row = {"user": person, "image_path": "", "model_name": "resnet50", "model_weights": "random"}
    made = [
        Prediction(image_sha256=f"{i:064x}", collection=collection, entry=i, file_name=f"{i // 2}.jpg", **row)
        for i in range(6)
    ]
    await Prediction.bulk_create(made)
    await statistics_taken("predictions")
    monkeypatch.setattr(collections, "CSV_PAGE", 2)
    connection, sent = connections.get("default"), []
    send = connection.execute_query

    async def recorded(sql: str, values: list[Any] | None = None) -> Any:
        sent.append((sql, values))
        return await send(sql, values)

    monkeypatch.setattr(connection, "execute_query", recorded)
    assert len([rows async for rows in collections.result_pages(collection)]) == 3
    monkeypatch.undo()
    pages_after = [(sql, values) for sql, values in sent if re.search(r'"file_name" ?>', sql)]
    assert len(pages_after) == 3, sent  # after each page, the last one found empty
    for sql, values in pages_after:
        steps = await plan_of(sql, values=values)
        assert await reads_a_range(steps, "predictions", "collection_id"), steps
        assert in_index_order(steps, "predictions"), steps
        assert re.search(r"^(SEARCH |.*Index Cond:).*\bfile_name\b[)\w:]* ?>", steps, re.MULTILINE), steps  # a range


async def test_the_feeder_reads_only_the_images_waiting(client: httpx.AsyncClient) -> None:
    """Each feeding round takes a person's (or a collection's) oldest images waiting in the database. SQLite read
    them by the person's index: every image they ever sent, finished ones too, each round. Planned for someone
    with 2,000 images done and 5 waiting, alone and in a collection (PostgreSQL chooses by statistics)."""
    person = await User.create(email=unique_email(), password_hash="x")
    collection = await Collection.create(user=person, total=2005, status=CollectionStatus.CLASSIFYING)
    row = {"user": person, "image_path": "", "model_name": "resnet50", "model_weights": "random"}
    await Prediction.bulk_create(
        [
            Prediction(image_sha256=f"{i:064x}", status=Status.DONE if i >= 5 else Status.QUEUED, **row, **extra)
            for extra in ({}, {"collection": collection})
            for i in range(2005)
        ],
        batch_size=1000,
    )
    await statistics_taken("predictions")
    try:
        for source in (Source(person.id, None), Source(person.id, collection.id)):
            steps = await plan(waiting_of(source).limit(50))
            assert await reads_a_range(steps, "predictions", "status"), steps
            assert in_index_order(steps, "predictions"), steps
            assert searches_on(steps, "user_id") and searches_on(steps, "collection_id"), steps
    finally:  # not left for the app's feeder
        await Prediction.filter(user=person, status=Status.QUEUED).update(status=Status.FAILED)
        await Collection.filter(id=collection.id).update(status=CollectionStatus.DONE)


async def test_the_admins_list_of_accounts_is_read_in_an_indexs_order(client: httpx.AsyncClient) -> None:
    """The admin's users list sorted every account for each page of 20."""
    steps = await plan(admin.accounts().limit(20))
    assert in_index_order(steps, "users"), steps


def tables_read(steps: str) -> set[str]:
    """The tables a plan reads: SQLite's SCAN and SEARCH steps, PostgreSQL's scans `on` a table."""
    found = re.findall(r"^(?:SCAN|SEARCH) (\w+)|\bon (\w+)", steps, re.MULTILINE)
    return {sqlite or postgres for sqlite, postgres in found}


async def test_the_admins_agreement_and_label_filter_read_only_the_counts_per_label(
    client: httpx.AsyncClient,
) -> None:
    """The agreement table and the feedback filter's labels joined every feedback row to its prediction on each
    admin view (254 ms on PostgreSQL, 504 ms on SQLite, with 200,000 feedback rows); they read the counts per
    label, a row a label, kept as feedback changes."""
    agreement = await plan(admin.agreement_rows())
    assert tables_read(agreement) == {"feedback_by_label"}, agreement
    labels = await plan(admin.labels_with_feedback())
    assert tables_read(labels) == {"feedback_by_label"} and in_index_order(labels, "feedback_by_label"), labels


async def indexes_of(table: str) -> dict[str, bool]:
    """`table`'s indexes by name: whether each holds only some of its rows (a partial index, CREATE INDEX ...
    WHERE)."""
    connection = connections.get("default")
    if connection.capabilities.dialect == "sqlite":
        query = "SELECT name, sql AS definition FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
    else:
        query = "SELECT indexname AS name, indexdef AS definition FROM pg_indexes WHERE tablename = $1"
    _, rows = await connection.execute_query(query, [table])
    return {row["name"]: " WHERE " in (row["definition"] or "") for row in rows}


def steps_reading(steps: str, table: str, indexes: dict[str, bool]) -> list[tuple[str, str | None]]:
    """The steps that read `table`, each with the index it goes by (None: the table itself)."""
    found: list[tuple[str, str | None]] = []
    for line in steps.splitlines():
        sqlite = re.match(rf"(?:SCAN|SEARCH) {table}\b(?:.* INDEX (\S+))?", line)
        by_index = re.search(rf"Index (?:Only )?Scan using (\S+) on {table}\b|Bitmap Index Scan on (\S+)", line)
        if sqlite:
            found.append((line, sqlite.group(1)))
        elif by_index and (by_index.group(1) or by_index.group(2) in indexes):
            found.append((line, by_index.group(1) or by_index.group(2)))
        elif f"Seq Scan on {table} " in f"{line} ":
            found.append((line, None))
    return found


async def test_who_stores_is_counted_a_person_at_a_time(client: httpx.AsyncClient) -> None:
    """The count of the people storing originals (each web process's, once a minute while the image store is
    crowded) read every kept original's row: 0.2 to 0.35 s a million, on SQLite and PostgreSQL. It searches a
    partial index of the rows storing something for the next person, a row a search. Planned with people
    keeping a few originals each, and statistics taken (PostgreSQL chooses by them)."""
    for _ in range(3):
        person = await User.create(email=unique_email(), password_hash="x")
        row = {"user": person, "model_name": "resnet50", "model_weights": "random", "status": Status.DONE}
        await Prediction.bulk_create(
            [Prediction(image_sha256=f"{i:064x}", image_path="aa/p.png", **row) for i in range(3)]
        )
    await statistics_taken("predictions")
    steps = await plan_of(usage.storers_sql(), run=True)
    for table in ("predictions", "collections"):
        indexes = await indexes_of(table)
        reading = steps_reading(steps, table, indexes)
        assert reading and all(index and indexes[index] for _, index in reading), steps
        if table == "predictions":  # a row a search, not a scan of every row kept: SQLite's SEARCH (of a MIN,
            # one row by its rules), and the rows each step of PostgreSQL's plan, run, read
            assert all(line.startswith("SEARCH") or re.search(r"actual rows=[01] ", line) for line, _ in reading), steps


async def test_an_upload_charged_0_looks_for_the_charged_one_by_its_index(client: httpx.AsyncClient) -> None:
    """An upload charged 0 (its person keeps the original) then looks whether one of theirs is still charged it
    (usage.charged_if_none), as a retention run may have let that one go: by the index predictions_charged_once,
    which holds only the charged rows, not by the image's rows or the person's. Planned for someone keeping 2,000
    originals, charged 0 but one (PostgreSQL chooses by statistics: on a near-empty table, any index will do)."""
    person = await User.create(email=unique_email(), password_hash="x")
    row = {"model_name": "resnet50", "model_weights": "random", "status": Status.DONE, "user": person}
    kept = [Prediction(image_sha256=f"{i:064x}", image_path=f"{i:064x}.png", image_bytes=0, **row) for i in range(2000)]
    kept[0].image_bytes = 1000
    await Prediction.bulk_create(kept, batch_size=1000)
    await statistics_taken("predictions")
    dialect = connections.get("default").capabilities.dialect
    sql = usage.charged_sql(dialect)
    for mark, value in zip(placeholders(dialect, 2), (str(person.id), f"'{7:064x}'"), strict=True):
        sql = sql.replace(mark, value, 1)
    steps = await plan_of(sql)
    assert "predictions_charged_once" in steps and "Seq Scan" not in steps, steps
