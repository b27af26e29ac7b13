"""Hook files written the way Miles users write them (imports from ``miles.*``, untyped), loaded by
the tests through ``--*-path`` settings. They are not type-checked."""
