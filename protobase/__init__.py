"""ProtoBase: a transactional, object-oriented database for Python.

from protobase import ObjectSpace, MemoryStorage

with ObjectSpace(MemoryStorage()) as space:
    db = space.new_database("shop")
    with db.transaction() as tr:
        tr.set_root_object("greeting", "hello")
"""

# First: decides whether the compiled hot path or the Python sources load (native.py).
from .native import select_hot_path

HOT_PATH = select_hot_path()

from .atoms import AtomPointer
from .collections import CountedSet, Dictionary, HashDictionary, List, Set
from .errors import (
    AtomNotFoundError,
    AuthenticationError,
    ClusterUnavailableError,
    ConflictError,
    CorruptionError,
    DatabaseExistsError,
    DatabaseNotFoundError,
    ImmutableObjectError,
    ProtoBaseException,
    QueryError,
    ReadOnlyTransactionError,
    RootConflict,
    StorageError,
    TransactionClosedError,
    UniqueConstraintError,
    ValidationError,
)
from .objects import DBObject, Literal, MutableObject, UnknownObject, register_class
from .query import (
    DistinctPlan,
    Expression,
    F,
    Field,
    GroupByPlan,
    JoinPlan,
    JoinRow,
    LimitPlan,
    OffsetPlan,
    OrderByPlan,
    OrderKey,
    PlanDescription,
    Query,
    QueryPlan,
    Row,
    SelectPlan,
    WherePlan,
)
from .space import Database, ObjectSpace
from .storage import (
    CloudFileStorage,
    CommitBatch,
    CommitInfo,
    MemoryStorage,
    RootRef,
    StandaloneFileStorage,
    Storage,
)
from .transaction import Transaction

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The cluster client needs aiohttp (``protobase[cluster]``): imported on use.
    if name == "ClusterFileStorage":
        from .storage.cluster import ClusterFileStorage

        return ClusterFileStorage
    raise AttributeError(f"module 'protobase' has no attribute {name!r}")


__all__ = [
    "AtomNotFoundError",
    "AtomPointer",
    "AuthenticationError",
    "CloudFileStorage",
    "ClusterFileStorage",
    "ClusterUnavailableError",
    "CommitBatch",
    "CommitInfo",
    "ConflictError",
    "CorruptionError",
    "CountedSet",
    "DBObject",
    "Database",
    "DatabaseExistsError",
    "DatabaseNotFoundError",
    "Dictionary",
    "DistinctPlan",
    "Expression",
    "F",
    "Field",
    "GroupByPlan",
    "HashDictionary",
    "ImmutableObjectError",
    "JoinPlan",
    "JoinRow",
    "LimitPlan",
    "List",
    "Literal",
    "MemoryStorage",
    "MutableObject",
    "ObjectSpace",
    "OffsetPlan",
    "OrderByPlan",
    "OrderKey",
    "PlanDescription",
    "ProtoBaseException",
    "Query",
    "QueryError",
    "QueryPlan",
    "ReadOnlyTransactionError",
    "RootConflict",
    "RootRef",
    "Row",
    "SelectPlan",
    "Set",
    "StandaloneFileStorage",
    "Storage",
    "StorageError",
    "Transaction",
    "TransactionClosedError",
    "UniqueConstraintError",
    "UnknownObject",
    "ValidationError",
    "WherePlan",
    "__version__",
    "register_class",
]
