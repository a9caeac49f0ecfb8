"""Queries without SQL: expressions, plans, index-aware planning, a fluent builder.

See docs/queries.md. Layering: this package reads collections (and their
indexes) and objects; the transaction layer offers ``tr.query(...)`` on top.
"""

from .builder import Query
from .expressions import Expression, F, Field, OrderKey
from .grouping import GroupByPlan
from .joins import JoinPlan
from .plans import (
    CollectionPlan,
    DistinctPlan,
    LimitPlan,
    OffsetPlan,
    PlanDescription,
    QueryPlan,
    SelectPlan,
    ValuesPlan,
    WherePlan,
)
from .rows import JoinRow, Row
from .sorting import OrderByPlan

__all__ = [
    "CollectionPlan",
    "DistinctPlan",
    "Expression",
    "F",
    "Field",
    "GroupByPlan",
    "JoinPlan",
    "JoinRow",
    "LimitPlan",
    "OffsetPlan",
    "OrderByPlan",
    "OrderKey",
    "PlanDescription",
    "Query",
    "QueryPlan",
    "Row",
    "SelectPlan",
    "ValuesPlan",
    "WherePlan",
]
