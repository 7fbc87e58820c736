"""Requests whose cost must not grow with everyone's data: the database's plan for each of their queries
reads an index range, never a whole table, and sorts nothing (an index gives the order).

PostgreSQL is asked to avoid whole-table reads and sorts wherever it can (`enable_seqscan`, `enable_sort`
off): on a test's few rows it would choose them anyway, which hides whether an index could serve. One left in
the plan then means no index serves the query, and on a year's data it reads every row. SQLite plans by its
rules, without statistics: its plan is the one it runs.
"""

from __future__ import annotations

from typing import Any

import httpx
from tortoise import connections
from tortoise.transactions import in_transaction

from app.web.pages import admin


async def plan(query: Any) -> str:
    """The database's plan for a Tortoise query (a QuerySet, or its count), one step a line."""
    sql = query.sql(params_inline=True)
    connection = connections.get("default")
    if connection.capabilities.dialect == "sqlite":
        _, rows = await connection.execute_query(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(row["detail"] for row in rows)
    async with in_transaction() as transaction:
        await transaction.execute_script("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
        _, rows = await transaction.execute_query(f"EXPLAIN {sql}")
    return "\n".join(row["QUERY PLAN"] for row in rows)


def reads_a_range(steps: str, table: str, column: str) -> bool:
    """Whether the plan reads `table` by an index on `column` (SQLite's SEARCH, PostgreSQL's index scan)."""
    if "Seq Scan" in steps or "Sort" in steps:
        return False
    if "QUERY PLAN" in steps or "Index" in steps:  # PostgreSQL
        return f"({column} " in steps or f"({column} =" in steps
    return any(line.startswith(f"SEARCH {table} ") and f"({column}" in line for line in steps.splitlines())


async def test_the_status_panel_counts_the_last_minute_by_an_index(client: httpx.AsyncClient) -> None:
    """The admin's status panel refreshes itself every two seconds; its throughput counted the predictions
    finished in the last minute by reading every finished prediction (the status index matches nearly all)."""
    steps = await plan(admin.recently_finished().count())
    assert reads_a_range(steps, "predictions", "finished_at"), steps
