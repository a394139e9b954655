"""Service levels: the gate history kept in the mesh, attainment and error budgets."""
