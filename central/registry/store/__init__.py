"""Registry store: Core tables (`tables`), queries (`queries`), the bulk fast path (`bulk`), and the schema
parts Core cannot say portably (`schema`: legacy adoption, full-text indexes). All registry SQL is here."""

from central.registry.store.queries import *  # noqa: F403
from central.registry.store.schema import adopt_legacy, create_extras
from central.registry.store.tables import ENTITY_COLS, TABLES, entities

__all__ = ["ENTITY_COLS", "TABLES", "entities", "adopt_legacy", "create_extras"]
